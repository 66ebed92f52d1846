"""BEiT block-wise masking on the cube grid (paper eq. 5 and Fig. 4b).

One spatial mask on the h x w grid (8 x 8 for 64x64 crops) is drawn per clip and used on every
temporal slice of the t x h x w cube grid (the paper uses the same mask on every frame, so the
encoder cannot read a masked patch from a neighbouring frame). Exactly round(ratio * h * w)
cubes per slice are masked: blocks are drawn as in BEiT (random area and aspect ratio, only
accepted while they do not overshoot the target), then, if the blocks stall short of the
target, the remaining cubes are taken from the unmasked neighbours of the masked region (random
unmasked cubes if it has none). The complement of a 50 % mask is the second mask of the pair.

Masks are bool tensors, True = masked (hidden from the mask encoder). ``visible_indices`` turns
a batch of masks into the sorted cube indices p = (ti * h + hi) * w + wi that
``mgnet.ops.masked_cube_embed`` takes.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Tuple

import torch


def block_mask(grid: Tuple[int, int] = (8, 8), ratio: float = 0.5,
               generator: Optional[torch.Generator] = None, min_block: int = 4,
               max_aspect: float = 3.0, max_attempts: int = 10) -> torch.Tensor:
    """One (h, w) bool mask with exactly round(ratio * h * w) True cells (BEiT block-wise)."""
    h, w = grid
    if h < 1 or w < 1:
        raise ValueError(f"grid must be two positive sizes (h, w), got {grid}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    target = int(round(ratio * h * w))
    # one draw from the torch generator seeds a Python RNG: reproducible under torch seeding,
    # and the dozens of scalar draws below cost nanoseconds instead of a tensor op each
    rng = random.Random(int(torch.randint(0, 2 ** 62, (), generator=generator)))
    rand = rng.random
    mask = [[False] * w for _ in range(h)]
    log_lo, log_hi = math.log(1.0 / max_aspect), math.log(max_aspect)
    count = 0
    while count < target:
        added = 0
        for _ in range(max_attempts):
            left = target - count
            lo = min(min_block, left)
            area = lo + rand() * (left - lo)
            aspect = math.exp(log_lo + rand() * (log_hi - log_lo))
            bh = int(round(math.sqrt(area * aspect)))
            bw = int(round(math.sqrt(area / aspect)))
            if not (1 <= bh <= h and 1 <= bw <= w):
                continue
            top = int(rand() * (h - bh + 1))
            lft = int(rand() * (w - bw + 1))
            cells = [(i, j) for i in range(top, top + bh) for j in range(lft, lft + bw) if not mask[i][j]]
            if 0 < len(cells) <= left:
                for i, j in cells:
                    mask[i][j] = True
                added = len(cells)
                break
        if added == 0:  # blocks stall: finish from the region's border, one cube at a time
            _top_up(mask, target - count, rng)
            break
        count += added
    return torch.tensor(mask, dtype=torch.bool)


def _top_up(mask, n: int, rng: random.Random) -> None:
    h, w = len(mask), len(mask[0])
    for _ in range(n):
        free = [(i, j) for i in range(h) for j in range(w) if not mask[i][j]]
        border = [(i, j) for i, j in free
                  if any(0 <= a < h and 0 <= b < w and mask[a][b]
                         for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)))]
        i, j = rng.choice(border or free)
        mask[i][j] = True


@torch.compiler.disable
def complementary_masks(batch: int, grid: Tuple[int, int] = (8, 8), ratio: float = 0.5,
                        generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mask, ~mask), each (batch, h, w) bool: one block-wise mask per clip and its complement."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    m = torch.stack([block_mask(grid, ratio, generator) for _ in range(batch)])
    return m, ~m


def visible_indices(mask: torch.Tensor, t: int) -> torch.Tensor:
    """Sorted indices (B, t * n_visible) of the unmasked cubes of a (B, h, w) mask repeated on
    every one of the t temporal slices. Every clip of the batch must show the same count."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 3 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape (B, h, w), got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    B, h, w = mask.shape
    vis = ~mask.flatten(1)                                     # (B, h*w)
    n = vis.sum(1)
    if bool((n != n[0]).any()):
        raise ValueError(f"every clip's mask must leave the same number of cubes visible, got {n.tolist()}")
    n = int(n[0])
    spatial = vis.nonzero()[:, 1].view(B, n)                   # sorted per row
    offs = torch.arange(t, device=mask.device).view(1, t, 1) * (h * w)
    return (offs + spatial.unsqueeze(1)).reshape(B, t * n)


__all__ = ["block_mask", "complementary_masks", "visible_indices"]
