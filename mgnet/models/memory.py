"""Memories: behavior / scene Memory (eq. 7 read, eq. 11 separateness) and the
Behavior-Scene Matching Memory (eqs. 8-10, 15).

All addressing goes through ``mgnet.ops.memory_address`` (cosine similarity, softmax over slots,
read = weights @ slots, and the two nearest slots).

Separateness (eq. 11), MNAD style: on L2-normalised query q and slots, with m1 / m2 the
nearest and second-nearest slots, [ ||q - m1|| - ||q - m2|| + margin ]_+, averaged over the
queries (the paper sums over P; the mean keeps beta independent of the token count).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops


def separateness_loss(q: torch.Tensor, slots: torch.Tensor, top2: torch.Tensor,
                      margin: float = 1.0) -> torch.Tensor:
    """eq. (11): mean over queries of [||q - m_1st|| - ||q - m_2nd|| + margin]_+ (unit vectors)."""
    qn, mn = F.normalize(q, dim=1), F.normalize(slots, dim=1)
    d = lambda a, b: (a - b).pow(2).sum(1).clamp_min(1e-12).sqrt()  # noqa: E731  (finite grad at 0)
    return F.relu(d(qn, mn[top2[:, 0]]) - d(qn, mn[top2[:, 1]]) + margin).mean()


class Memory(nn.Module):
    """Learnable slots (S, C) read by cosine addressing. forward(q (N, C)) -> (weights (N, S),
    read (N, C), top2 (N, 2)); ``separateness(q, top2)`` is eq. (11)."""

    def __init__(self, slots: int, dim: int, margin: float = 1.0, temperature: float = 1.0):
        super().__init__()
        self.margin = margin
        self.temperature = float(temperature)
        self.slots = nn.Parameter(F.normalize(torch.randn(slots, dim), dim=1))

    def forward(self, q: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        slots = self.slots.to(q.dtype)
        w, read, top2 = ops.memory_address(q, slots)                      # eq. (7)
        if self.temperature != 1.0:
            # softmax(cos / tau) = softmax(log(softmax(cos)) / tau): with tau = 1 (the paper) a
            # cosine in [-1, 1] gives nearly uniform weights over the slots, so every read is close
            # to the mean slot and W_b / f_b carry almost nothing of the query
            w = torch.softmax(torch.log(w.clamp_min(1e-30)) / self.temperature, dim=1)
            read = w @ slots
        return w, read, top2

    def separateness(self, q: torch.Tensor, top2: torch.Tensor) -> torch.Tensor:
        return separateness_loss(q, self.slots.to(q.dtype), top2, self.margin)   # eq. (11)


class BehaviorSceneMatching(nn.Module):
    """BSMM: N_r slots of width L_b + L_s = P*N_b + N_s, holding behavior-scene patterns of the
    addressing weights (a buffer: written, never trained).

    write (stage 4, eq. 9): the first N_r queries ever written seed the slots (L2-normalised), so
    every slot starts on a real normal pattern; after that each slot i moves by the sum over the
    queries whose nearest slot is i of w[v, i] * W_r[v] (w = eq.-7 matching probability) and is
    L2-normalised. read (eq. 10): C_b = softmax over slots of cos(W_b, slots[:, :L_b]), C_s the
    same with W_s and slots[:, L_b:]. S_mm = ||C_b - C_s|| (eq. 15).
    """

    def __init__(self, slots: int, len_b: int, len_s: int):
        super().__init__()
        self.len_b, self.len_s = len_b, len_s
        self.register_buffer("slots", torch.zeros(slots, len_b + len_s))
        self.register_buffer("filled", torch.tensor(0, dtype=torch.long))
        self._filled = 0            # host mirror of `filled`: reads need no device sync

    @property
    def num_filled(self) -> int:
        return self._filled

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._filled = int(self.filled)

    def queries(self, w_b: torch.Tensor, w_s: torch.Tensor) -> torch.Tensor:
        """W_r = [flatten(W_b), W_s]   # eq. (8);  w_b (B, P, N_b), w_s (B, N_s) -> (B, L_b + L_s)"""
        w_b = w_b.flatten(1)
        if w_b.shape[1] != self.len_b or w_s.dim() != 2 or w_s.shape[1] != self.len_s:
            raise ValueError(f"BSMM expects W_b with {self.len_b} entries per clip and W_s (B, {self.len_s}), "
                             f"got {tuple(w_b.shape)} and {tuple(w_s.shape)}")
        return torch.cat([w_b, w_s], 1)

    @torch.no_grad()
    def write(self, w_r: torch.Tensor) -> Optional[float]:
        """One update with queries W_r (B, L_b + L_s), eq. (9). Returns the separateness (eq. 11,
        L_sep^r) of the queries that updated slots, or None if they only seeded slots."""
        w_r = w_r.to(self.slots.dtype)
        n = self.slots.shape[0]
        take = min(n - self.num_filled, w_r.shape[0])
        if take > 0:
            f = self.num_filled
            self.slots[f:f + take] = F.normalize(w_r[:take], dim=1)
            self.filled += take
            self._filled += take
            w_r = w_r[take:]
        if w_r.shape[0] == 0:
            return None
        weights, _, top2 = ops.memory_address(w_r, self.slots)
        nearest = top2[:, 0]
        upd = torch.zeros_like(self.slots).index_add_(0, nearest, weights.gather(1, nearest[:, None]) * w_r)
        sep = float(separateness_loss(w_r, self.slots, top2))
        self.slots.copy_(F.normalize(self.slots + upd, dim=1))        # eq. (9)
        return sep

    def read(self, w_b: torch.Tensor, w_s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(C_b, C_s), each (B, filled slots)   # eq. (10). Raises if nothing was written yet."""
        if self.num_filled == 0:
            raise RuntimeError("the Behavior-Scene Matching Memory is empty: write it (stage 4, "
                               "MGNet.bsmm_write) before reading")
        w_r = self.queries(w_b, w_s).to(self.slots.dtype)
        # slice a copy: a view of a buffer taken under inference_mode breaks an inductor compile
        m = self.slots.clone()[:self.num_filled]
        c_b = ops.memory_address(w_r[:, :self.len_b].contiguous(), m[:, :self.len_b].contiguous())[0]
        c_s = ops.memory_address(w_r[:, self.len_b:].contiguous(), m[:, self.len_b:].contiguous())[0]
        return c_b, c_s

    @staticmethod
    def score(c_b: torch.Tensor, c_s: torch.Tensor) -> torch.Tensor:
        """S_mm = ||C_b - C_s||   # eq. (15)"""
        return (c_b - c_s).norm(dim=1)


__all__ = ["Memory", "BehaviorSceneMatching", "separateness_loss"]
