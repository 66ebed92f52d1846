"""STG-NF: the spatio-temporal normalizing flow on poses (Hirschorn & Avidan, ICCV 2023), eq. (1).

A Glow-style flow on x_sk (B, 2, T, V=18): K steps of
    ActNorm -> channel permutation (reverse, or an invertible 1x1 conv) -> affine coupling
where the coupling's shift and scale come from a small ST-GCN on the OpenPose-18 joint graph
(graph conv over joints + temporal conv), scale = sigmoid(s + 2) + 1e-6 as in STG-NF.
The prior is N(R*1, I) (STG-NF's trick: normal poses are pulled to mean R); the NLL is reported
in bits per dimension. ``f_sk`` (B, T, 2V) is the flow output z (B, 2, T, V) reshaped.

Every layer maps (z, logdet) -> (z, logdet) and has an exact inverse; the tests check
inverse(forward(x)) == x and logdet == log|det dz/dx| by autograd.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# OpenPose-18 bones (STG-NF / ST-GCN layout), joint 1 (neck) is the centre
OPENPOSE_EDGES = [(4, 3), (3, 2), (7, 6), (6, 5), (13, 12), (12, 11), (10, 9), (9, 8), (11, 5),
                  (8, 2), (5, 1), (2, 1), (0, 1), (15, 0), (14, 0), (17, 15), (16, 14)]


def openpose_adjacency(max_hop: int = 8, num_joints: int = 18) -> torch.Tensor:
    """Uniform-strategy adjacency (V, V): 1 between joints at most `max_hop` bones apart
    (self included), each column divided by its sum (ST-GCN's normalize_digraph)."""
    V = num_joints
    if V != 18:
        raise ValueError(f"the OpenPose graph has 18 joints, got joints={V}")
    inf = V + 1
    hop = torch.full((V, V), inf, dtype=torch.long)
    hop.fill_diagonal_(0)
    for i, j in OPENPOSE_EDGES:
        hop[i, j] = hop[j, i] = 1
    for k in range(V):  # Floyd-Warshall on the bone graph
        hop = torch.minimum(hop, hop[:, k:k + 1] + hop[k:k + 1, :])
    A = (hop <= max_hop).double()
    return (A / A.sum(0, keepdim=True)).float()


class ActNorm(nn.Module):
    """Per-channel affine z = (x + b) * exp(logs), initialised from the first training batch
    (zero mean, unit variance per channel, Glow). The init flag is a buffer, so a loaded
    checkpoint is not re-initialised."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False   # host mirror: no device sync per step

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    @torch.no_grad()
    def _init(self, x):
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt()
        self.bias.copy_(-mean)
        self.logs.copy_(torch.log(1.0 / (std + 1e-6)))
        self.initialized.fill_(True)
        self._initialized = True

    def forward(self, x, logdet):
        if self.training and torch.is_grad_enabled() and not self._initialized:
            self._init(x)
        z = (x + self.bias) * torch.exp(self.logs)
        return z, logdet + self.logs.sum() * (x.shape[2] * x.shape[3])

    def inverse(self, z):
        return z * torch.exp(-self.logs) - self.bias


class ReversePermutation(nn.Module):
    """Reverse the channel order (volume preserving)."""

    def forward(self, x, logdet):
        return x.flip(1), logdet

    def inverse(self, z):
        return z.flip(1)


class InvConv1x1(nn.Module):
    """Invertible 1x1 conv over channels, W initialised to a random rotation (Glow, plain form)."""

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]
        self.weight = nn.Parameter(w)

    def forward(self, x, logdet):
        z = torch.einsum("ij,bjtv->bitv", self.weight, x)
        return z, logdet + torch.linalg.slogdet(self.weight)[1] * (x.shape[2] * x.shape[3])

    def inverse(self, z):
        return torch.einsum("ij,bjtv->bitv", torch.linalg.inv(self.weight), z)


class GraphConv(nn.Module):
    """Spatial graph conv: 1x1 conv over channels, then aggregation over joints with A (V, V)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x, A):
        return torch.einsum("bctv,vw->bctw", self.conv(x), A)


class STGCN(nn.Module):
    """Two ST-GCN units (graph conv -> temporal conv): cin -> hidden -> cout. The last temporal
    conv starts at zero, so every coupling starts as a fixed scale and the flow near identity."""

    def __init__(self, cin: int, hidden: int, cout: int, kt: int):
        super().__init__()
        pad = (kt // 2, 0)
        self.g1, self.t1 = GraphConv(cin, hidden), nn.Conv2d(hidden, hidden, (kt, 1), padding=pad)
        self.g2, self.t2 = GraphConv(hidden, hidden), nn.Conv2d(hidden, cout, (kt, 1), padding=pad)
        nn.init.zeros_(self.t2.weight)
        nn.init.zeros_(self.t2.bias)

    def forward(self, x, A):
        h = F.relu(self.t1(F.relu(self.g1(x, A))))
        return self.t2(F.relu(self.g2(h, A)))


class AffineCoupling(nn.Module):
    """z2 <- (z2 + shift(z1)) * scale(z1), scale = sigmoid(s + 2) + 1e-6 (STG-NF)."""

    def __init__(self, channels: int, hidden: int, kt: int):
        super().__init__()
        self.c1 = channels // 2
        self.net = STGCN(self.c1, hidden, 2 * (channels - self.c1), kt)

    def _shift_scale(self, z1, A):
        h = self.net(z1, A)
        return h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0) + 1e-6

    def forward(self, x, logdet, A):
        z1, z2 = x[:, :self.c1], x[:, self.c1:]
        shift, scale = self._shift_scale(z1, A)
        z2 = (z2 + shift) * scale
        return torch.cat([z1, z2], 1), logdet + torch.log(scale).flatten(1).sum(1)

    def inverse(self, z, A):
        z1, z2 = z[:, :self.c1], z[:, self.c1:]
        shift, scale = self._shift_scale(z1, A)
        return torch.cat([z1, z2 / scale - shift], 1)


class FlowStep(nn.Module):
    def __init__(self, channels: int, hidden: int, kt: int, permutation: str):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.perm = InvConv1x1(channels) if permutation == "invconv" else ReversePermutation()
        self.coupling = AffineCoupling(channels, hidden, kt)

    def forward(self, x, logdet, A):
        x, logdet = self.actnorm(x, logdet)
        x, logdet = self.perm(x, logdet)
        return self.coupling(x, logdet, A)

    def inverse(self, z, A):
        return self.actnorm.inverse(self.perm.inverse(self.coupling.inverse(z, A)))


class STGNF(nn.Module):
    """Normalizing flow x_sk (B, 2, T, V) -> z of the same shape, eq. (1).

    forward(x) -> (z, logdet (B,));  inverse(z) -> x;  nll(x) -> (z, bits per dim (B,));
    features(z) -> f_sk (B, T, 2V).
    """

    def __init__(self, seg_len: int = 16, joints: int = 18, steps: int = 8, hidden: int = 32,
                 prior_mean: float = 3.0, permutation: str = "permute", temporal_kernel=None,
                 max_hop: int = 8, channels: int = 2):
        super().__init__()
        kt = temporal_kernel or seg_len // 2 + 1
        kt = kt if kt % 2 else kt + 1  # odd, so 'same' padding keeps T
        self.seg_len, self.joints, self.channels = seg_len, joints, channels
        self.prior_mean = float(prior_mean)
        self.register_buffer("A", openpose_adjacency(max_hop, joints), persistent=False)
        self.steps = nn.ModuleList(FlowStep(channels, hidden, kt, permutation) for _ in range(steps))

    @classmethod
    def from_config(cls, cfg) -> "STGNF":
        return cls(cfg.seg_len, cfg.joints, cfg.flow_steps, cfg.flow_hidden, cfg.prior_mean,
                   cfg.flow_permutation, cfg.flow_temporal_kernel, cfg.graph_max_hop)

    def _check(self, name, x):
        want = (self.channels, self.seg_len, self.joints)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != want:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape (B, {want[0]}, T={want[1]}, V={want[2]}), got {got}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")

    def forward(self, x) -> Tuple[torch.Tensor, torch.Tensor]:
        self._check("pose", x)
        with torch.autocast(x.device.type, enabled=False):   # a flow's log-det wants full precision
            A = self.A.to(x.dtype)
            logdet = x.new_zeros(x.shape[0])
            for step in self.steps:
                x, logdet = step(x, logdet, A)
        return x, logdet

    def inverse(self, z) -> torch.Tensor:
        self._check("z", z)
        with torch.autocast(z.device.type, enabled=False):
            A = self.A.to(z.dtype)
            for step in reversed(self.steps):
                z = step.inverse(z, A)
        return z

    def log_prior(self, z) -> torch.Tensor:
        """log N(z; R*1, I) summed per sample."""
        return (-0.5 * (math.log(2 * math.pi) + (z - self.prior_mean) ** 2)).flatten(1).sum(1)

    def nll(self, x) -> Tuple[torch.Tensor, torch.Tensor]:
        """(z, NLL in bits per dimension (B,)) = -(log p(z) + log|det J|) / (D ln 2)."""
        z, logdet = self(x)
        dims = z[0].numel()
        return z, -(self.log_prior(z) + logdet) / (dims * math.log(2.0))

    @staticmethod
    def features(z) -> torch.Tensor:
        """f_sk (B, T, C*V): the flow output (B, C, T, V) with channels and joints per time step."""
        B, C, T, V = z.shape
        return z.permute(0, 2, 1, 3).reshape(B, T, C * V)


__all__: List[str] = ["STGNF", "openpose_adjacency", "ActNorm", "InvConv1x1", "AffineCoupling"]
