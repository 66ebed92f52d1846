// lka3d / lsta CUDA launchers (raw pointers, CUDA headers only; torch glue in lka3d_cuda.cpp).
//
// Element types: the activations (x, grad, e, gx, out) have `dt`; weights, biases, workspaces and
// weight-gradient partials are in the accumulation type: double for F64, float otherwise. All
// tensors are contiguous. N = D*H*W.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/dtype.h"

namespace mgnet_lka3d_cuda {

using DType = ::mgnet::DType;  // csrc/common/dtype.h

struct Geom {
  int64_t B, C, D, H, W;  // x (B, C, D, H, W)
  int k0, k1, dil;        // w0 (C, k0^3), w1 (C, k1^3), dilation of the second conv
};

// out (dt) = wp @ dw1(dw0(x)) + bp. a2_ws (B*C*N) receives the depthwise output. When a channel
// volume fits in shared memory (x and a1: 2*N acc elements) both depthwise convs run in one kernel
// with the volume and a1 in shared memory, and a1 reaches a1_ws (B*C*N) only if keep_a1; otherwise
// a1 goes through a1_ws (L2). a1_ws must always be valid.
cudaError_t lka3d_forward_launch(const void* x, DType dt, const void* w0, const void* b0, const void* w1,
                                 const void* b1, const void* wp, const void* bp, void* a1_ws, bool keep_a1,
                                 void* a2_ws, void* out, const Geom& g, cudaStream_t stream);

// Gradients except the ones the glue reduces with ATen (g_wp, the bias sums): recomputes a1_ws and
// a2_ws, then g2_ws = wp^T grad, g1_ws = transposed dilated conv of g2_ws, gx (dt) = transposed conv
// of g1_ws, pw1 (B*C*k1^3) / pw0 (B*C*k0^3) = per-(batch, channel) weight-gradient partials.
cudaError_t lka3d_backward_launch(const void* grad, const void* x, DType dt, const void* w0, const void* b0,
                                  const void* w1, const void* b1, const void* wp, void* a1_ws, void* a2_ws,
                                  void* g2_ws, void* g1_ws, void* gx, void* pw0, void* pw1, const Geom& g,
                                  cudaStream_t stream);

// lsta, e (BT = B*t, c, P = h*w) in dt: f (BT*P, acc) = mean_c e; with grad != nullptr also
// ge (BT*P, acc) = sum_c grad*e, in the same single read of e.
cudaError_t lsta_mean_launch(const void* e, const void* grad, DType dt, void* f, void* ge, int64_t BT, int64_t c,
                             int64_t P, cudaStream_t stream);

// out (dt) = src * (1 + sigmoid(fo)) (+ gf / c when gf != nullptr), fo/gf (BT*P, acc) broadcast over c:
// one read of src and one write of out.
cudaError_t lsta_gate_launch(const void* src, DType dt, const void* fo, const void* gf, void* out, int64_t BT,
                             int64_t c, int64_t P, cudaStream_t stream);

}  // namespace mgnet_lka3d_cuda
