"""3D large-kernel attention (LKA) and the LSTA gate (paper eqs. 2-3).

lka3d(x, w0, b0, w1, b1, wp, bp, dilation) with x (B, C, D, H, W):
    a = depthwise Conv3d(x, w0 (C,1,k0,k0,k0), b0, padding k0//2)
    a = depthwise Conv3d(a, w1 (C,1,k1,k1,k1), b1, padding d*(k1-1)//2, dilation d)
    attn = pointwise Conv3d(a, wp (C,C,1,1,1), bp)
This is VAN's order (dense (2d-1)^3 first, then the dilated k/d one). Eq. (2)'s where-clause
names the dilated one DWC, applied first; ``order="dilated_first"`` swaps the two depthwise
convolutions (same weights, same receptive field k0 + d (k1 - 1); on an unbounded volume the two
orders are the same linear map up to the biases, at the zero-padded borders they differ). Only the
reference (eager) implements it; the fused backends raise naming the option.

lsta(e, w0, b0, w1, b1, wp, bp, dilation) with e (B, t, c, h, w) (eqs. 2-3):
    f = mean_c(e) -> (B, 1, t, h, w);  f_o = lka3d(f) with C = 1
    out = e + e * sigmoid(f_o)   (broadcast over c)

The reference functions below are the definition; backends register kernels with the same
signatures (forward -> output, backward(grad, *inputs) -> grads of every tensor input), in the
table of mgnet/ops/backends.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _dispatch
from ._checks import FLOAT_DTYPES, check_same_dtype, check_tensor
from ._eager import autograd_backward


# ------------------------------------------------------------------ reference (the spec)
ORDERS = ("dense_first", "dilated_first")   # the two convolutions of eq. (2); see lka3d()


def lka3d_reference(x, w0, b0, w1, b1, wp, bp, dilation: int = 3, order: str = "dense_first"):
    C = x.shape[1]
    k0, k1 = w0.shape[-1], w1.shape[-1]
    dense = lambda a: F.conv3d(a, w0, b0, padding=k0 // 2, groups=C)                         # noqa: E731
    dilated = lambda a: F.conv3d(a, w1, b1, padding=dilation * (k1 - 1) // 2, dilation=dilation, groups=C)  # noqa: E731
    a = dilated(dense(x)) if order == "dense_first" else dense(dilated(x))
    return F.conv3d(a, wp, bp)


def lsta_reference(e, w0, b0, w1, b1, wp, bp, dilation: int = 3, order: str = "dense_first"):
    f = e.mean(dim=2).unsqueeze(1)                     # (B, 1, t, h, w)
    fo = lka3d_reference(f, w0, b0, w1, b1, wp, bp, dilation, order)
    gate = torch.sigmoid(fo[:, 0]).unsqueeze(2)        # (B, t, 1, h, w)
    return e + e * gate


# ------------------------------------------------------------------ custom ops (one factory for both)
_WEIGHTS = "Tensor w0, Tensor b0, Tensor w1, Tensor b1, Tensor wp, Tensor bp, SymInt dilation, str backend"


def _lka_custom_op(name: str, first: str, reference):
    """Register ``mgnet::<name>`` (forward) and ``mgnet::<name>_backward`` for an op of the lka3d
    signature ``(<first>, w0, b0, w1, b1, wp, bp, dilation, backend)``: the eager kernel (the
    reference and autograd through it), fake (meta) functions and the autograd formula. Returns
    the forward custom op; the kernel that runs is the registered one of ``backend``."""
    def eager_backward(grad, x, w0, b0, w1, b1, wp, bp, dilation):
        return autograd_backward(reference, (x, w0, b0, w1, b1, wp, bp), (grad,), (True,) * 7, dilation=dilation)

    _dispatch.register_kernel(name, "eager", reference, eager_backward)

    def forward(x, w0, b0, w1, b1, wp, bp, dilation, backend):
        return _dispatch.get_kernel(name, backend).forward(x, w0, b0, w1, b1, wp, bp, dilation)

    def backward(grad, x, w0, b0, w1, b1, wp, bp, dilation, backend):
        gs = _dispatch.get_kernel(name, backend).backward(grad.contiguous(), x, w0, b0, w1, b1, wp, bp, dilation)
        return [g.contiguous() for g in gs]

    op = torch.library.custom_op(f"mgnet::{name}", forward, mutates_args=(),
                                 schema=f"(Tensor {first}, {_WEIGHTS}) -> Tensor")
    bwd_op = torch.library.custom_op(f"mgnet::{name}_backward", backward, mutates_args=(),
                                     schema=f"(Tensor grad, Tensor {first}, {_WEIGHTS}) -> Tensor[]")

    @op.register_fake
    def _(x, w0, b0, w1, b1, wp, bp, dilation, backend):
        return torch.empty_like(x)

    @bwd_op.register_fake
    def _(grad, x, w0, b0, w1, b1, wp, bp, dilation, backend):
        return [torch.empty_like(t) for t in (x, w0, b0, w1, b1, wp, bp)]

    def setup_context(ctx, inputs, output):
        *tensors, dilation, backend = inputs
        ctx.save_for_backward(*tensors)
        ctx.dilation, ctx.backend = dilation, backend

    def autograd(ctx, grad):
        gs = bwd_op(grad, *ctx.saved_tensors, ctx.dilation, ctx.backend)
        return (*gs, None, None)

    op.register_autograd(autograd, setup_context=setup_context)
    return op


_lka3d_op = _lka_custom_op("lka3d", "x", lka3d_reference)
_lsta_op = _lka_custom_op("lsta", "e", lsta_reference)


# ------------------------------------------------------------------ public functions
def _check_lka_weights(C, x, w0, b0, w1, b1, wp, bp, dilation):
    dev = x.device
    check_tensor("w0", w0, ndim=5, dtypes=FLOAT_DTYPES, device=dev, shape_doc="(C, 1, k0, k0, k0)")
    k0 = w0.shape[-1]
    check_tensor("w0", w0, shape=(C, 1, k0, k0, k0), shape_doc="(C, 1, k0, k0, k0), k0 odd")
    check_tensor("w1", w1, ndim=5, dtypes=FLOAT_DTYPES, device=dev, shape_doc="(C, 1, k1, k1, k1)")
    k1 = w1.shape[-1]
    check_tensor("w1", w1, shape=(C, 1, k1, k1, k1), shape_doc="(C, 1, k1, k1, k1), k1 odd")
    if k0 % 2 == 0 or k1 % 2 == 0:
        raise ValueError(f"w0/w1 kernel sizes must be odd (same-size padding), got k0={k0}, k1={k1}")
    check_tensor("wp", wp, shape=(C, C, 1, 1, 1), dtypes=FLOAT_DTYPES, device=dev, shape_doc="(C, C, 1, 1, 1)")
    for n, b in (("b0", b0), ("b1", b1), ("bp", bp)):
        check_tensor(n, b, shape=(C,), dtypes=FLOAT_DTYPES, device=dev, shape_doc="(C,)")
    check_same_dtype("x", x, w0=w0, b0=b0, w1=w1, b1=b1, wp=wp, bp=bp)
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be a positive int, got {dilation!r}")


def _other_order(op: str, order: str, run):
    """order="dilated_first" runs the reference (plain PyTorch, autograd); the fused backends
    implement the dense-first order only, so asking one of them for the other order is an error."""
    if order not in ORDERS:
        raise ValueError(f"order={order!r} (model.lsta_order): expected one of {ORDERS}")
    name = _dispatch.requested()
    if name not in ("auto", "eager"):
        raise ValueError(f"mgnet.ops.{op}: order={order!r} (model.lsta_order) runs on the eager backend only; "
                         f"the {name!r} kernels implement dense_first (VAN's order). Use model.ops_backend=eager "
                         f"or auto (MGNET_BACKEND), or model.lsta_order=dense_first")
    return run()


def lka3d(x, w0, b0, w1, b1, wp, bp, *, dilation: int = 3, order: str = "dense_first"):
    """Depthwise k0^3 conv -> depthwise dilated k1^3 conv -> pointwise conv (module docstring);
    ``order="dilated_first"`` swaps the two depthwise convolutions (eager backend only)."""
    check_tensor("x", x, ndim=5, dtypes=FLOAT_DTYPES, shape_doc="(B, C, D, H, W)")
    _check_lka_weights(x.shape[1], x, w0, b0, w1, b1, wp, bp, dilation)
    if order != "dense_first":
        return _other_order("lka3d", order, lambda: lka3d_reference(x, w0, b0, w1, b1, wp, bp, int(dilation), order))
    be = _dispatch.resolve("lka3d", x.device)
    args = [t.contiguous() for t in (x, w0, b0, w1, b1, wp, bp)]
    return _lka3d_op(*args, int(dilation), be)


def lsta(e, w0, b0, w1, b1, wp, bp, *, dilation: int = 3, order: str = "dense_first"):
    """LSTA gate e + e * sigmoid(lka3d(mean_c e)) for e (B, t, c, h, w) (module docstring)."""
    check_tensor("e", e, ndim=5, dtypes=FLOAT_DTYPES, shape_doc="(B, t, c, h, w)")
    _check_lka_weights(1, e, w0, b0, w1, b1, wp, bp, dilation)
    if order != "dense_first":
        return _other_order("lsta", order, lambda: lsta_reference(e, w0, b0, w1, b1, wp, bp, int(dilation), order))
    be = _dispatch.resolve("lsta", e.device)
    args = [t.contiguous() for t in (e, w0, b0, w1, b1, wp, bp)]
    return _lsta_op(*args, int(dilation), be)
