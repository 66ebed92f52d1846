// masked_cube_embed CUDA launchers (raw pointers, CUDA headers only; torch glue in cube_embed_cuda.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mgnet_cube {

// element types of the frames (U8 or the weight's type) and of weight/bias/pos/grad/out
enum class DType : int { U8 = 0, F16 = 1, BF16 = 2, F32 = 3, F64 = 4 };

struct Geom {
  int64_t B, T, H, W;  // frames (B, 3, T, H, W), contiguous
  int64_t h, w;        // cube grid (t = T/2, h = H/8, w = W/8)
  int64_t P, Pv, N;    // P = t*h*w cubes; visible (B, Pv); N = B*Pv output rows
  int64_t D;           // embedding width
};

// tokens (N, D) in the weight's type = patch(frames)[visible] @ W^T + bias + pos[visible].
// weight (D, 384) row-major; pos (P, D) or nullptr; scale/shift (3): x_norm = x * scale[c] + shift[c],
// in double for F64 weights, float otherwise. fp16/bf16 use tensor cores (WMMA, fp32 accumulation).
cudaError_t forward_launch(const void* frames, DType frames_dtype, const int64_t* visible,
                           const void* weight, const void* bias, const void* pos, DType dtype,
                           const void* scale, const void* shift, void* out, const Geom& g,
                           cudaStream_t stream);

// Accumulates (atomicAdd; buffers must be zeroed by the caller, in double for F64 weights, float
// otherwise): gw_acc (D, 384) += G^T @ patches; gb_acc (D) += column sums of G; gp_acc (P, D) (or
// nullptr) += scatter of G's rows by cube index. grad (N, D) in the weight's type.
cudaError_t backward_launch(const void* grad, const void* frames, DType frames_dtype,
                            const int64_t* visible, DType dtype, const void* scale, const void* shift,
                            void* gw_acc, void* gb_acc, void* gp_acc, const Geom& g,
                            cudaStream_t stream);

}  // namespace mgnet_cube
