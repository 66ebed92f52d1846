"""LSTA: large spatial-temporal attention (paper eqs. 2-3, Fig. 3).

Given e (B, t, c, h, w): f = mean over c; f_o = 3DLKA(f) (depthwise k0^3 conv -> depthwise
dilated k1^3 conv -> 1x1x1 conv on the 1-channel (t, h, w) volume); e_o = e + e * sigmoid(f_o).
The whole gate is one fused op, ``mgnet.ops.lsta``; this module only owns its weights.
LKA3D is the bare attention map (``mgnet.ops.lka3d``) on a C-channel volume. Weights are cast
to the input's dtype (autocast hands the head half-precision tokens).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .. import ops


def _conv_init(w, b):
    bound = 1.0 / math.sqrt(w[0].numel())     # nn.Conv3d's default init (fan_in = in/groups * k^3)
    nn.init.uniform_(w, -bound, bound)
    nn.init.uniform_(b, -bound, bound)


class LKA3D(nn.Module):
    """3D large-kernel attention map of x (B, C, D, H, W): depthwise k0^3 conv -> depthwise
    dilated k1^3 conv -> pointwise conv (eq. 2), through ``mgnet.ops.lka3d``."""

    def __init__(self, channels: int, k0: int = 5, k1: int = 7, dilation: int = 3, order: str = "dense_first"):
        super().__init__()
        C = channels
        self.dilation, self.order = dilation, order
        self.w0, self.b0 = nn.Parameter(torch.empty(C, 1, k0, k0, k0)), nn.Parameter(torch.empty(C))
        self.w1, self.b1 = nn.Parameter(torch.empty(C, 1, k1, k1, k1)), nn.Parameter(torch.empty(C))
        self.wp, self.bp = nn.Parameter(torch.empty(C, C, 1, 1, 1)), nn.Parameter(torch.empty(C))
        for w, b in ((self.w0, self.b0), (self.w1, self.b1), (self.wp, self.bp)):
            _conv_init(w, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ws = [p.to(x.dtype) for p in (self.w0, self.b0, self.w1, self.b1, self.wp, self.bp)]
        return ops.lka3d(x, *ws, dilation=self.dilation, order=self.order)


class LSTA(nn.Module):
    def __init__(self, k0: int = 5, k1: int = 7, dilation: int = 3, order: str = "dense_first"):
        super().__init__()
        self.dilation, self.order = dilation, order      # order: ops/lka3d.py (model.lsta_order)
        self.w0 = nn.Parameter(torch.empty(1, 1, k0, k0, k0))
        self.b0 = nn.Parameter(torch.empty(1))
        self.w1 = nn.Parameter(torch.empty(1, 1, k1, k1, k1))
        self.b1 = nn.Parameter(torch.empty(1))
        self.wp = nn.Parameter(torch.empty(1, 1, 1, 1, 1))
        self.bp = nn.Parameter(torch.empty(1))
        for w, b in ((self.w0, self.b0), (self.w1, self.b1), (self.wp, self.bp)):
            _conv_init(w, b)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """e (B, t, c, h, w) -> e + e * sigmoid(3DLKA(mean_c e))   # eqs. (2)-(3)"""
        ws = [p.to(e.dtype) for p in (self.w0, self.b0, self.w1, self.b1, self.wp, self.bp)]
        return ops.lsta(e, *ws, dilation=self.dilation, order=self.order)

    def extra_repr(self) -> str:
        return f"k0={self.w0.shape[-1]}, k1={self.w1.shape[-1]}, dilation={self.dilation}, order={self.order}"


__all__ = ["LSTA", "LKA3D"]
