// masked_cube_embed CUDA launchers (raw pointers, CUDA headers only; torch glue in cube_embed_cuda.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/dtype.h"
#include "cube_embed_geom.h"

namespace mgnet_cube {

using DType = ::mgnet::DType;  // csrc/common/dtype.h: frames U8 or the weight's type

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
