// memory_address CUDA launchers (raw pointers, CUDA headers only; torch glue in memory_cuda.cpp).
//
// q (N, C), mem (S, C), weights (N, S), read / grad_read / grad_q (N, C), all contiguous in one element
// type `dtype`. Arithmetic is in float (double for F64). `inv_mn` (S) = 1 / max(||mem_s||, eps) in that
// accumulation type, computed by the glue.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/dtype.h"

namespace mgnet_memory {

using DType = ::mgnet::DType;  // csrc/common/dtype.h

// One warp per query (grid-strided), mem staged in shared memory when S*C fits `smem_bytes`:
// scores (into `scratch`, N x S in the accumulation type), softmax, top2 (int64, ties to the lower
// index; [0, 0] when S == 1), weights, then read = weights @ mem.
cudaError_t forward_launch(const void* q, const void* mem, const void* inv_mn, DType dtype, void* weights,
                           void* scratch, int64_t* top2, void* read, int64_t N, int S, int C, double eps,
                           cudaStream_t stream);

// One warp per query: q . mem and grad_read . mem for every slot, the softmax gradient gs, and
//   b[n, s]   = gs / (|q_n| |m_s|)               (accumulation type, N x S, also read by gmem_launch)
//   gsc[n, s] = gs * score                        (accumulation type, N x S; the glue sums it over n)
//   grad_q[n] = b[n] @ mem + beta_n q_n,  beta_n = [||q_n|| >= eps] -sum_s gsc[n, s] / |q_n|^2
cudaError_t backward_rows_launch(const void* grad_weights, const void* grad_read, const void* q, const void* mem,
                                 const void* weights, const void* inv_mn, DType dtype, void* b, void* gsc,
                                 void* grad_q, int64_t N, int S, int C, double eps, cudaStream_t stream);

// part[k, s, c] = sum over the queries of split k of weights[n, s] grad_read[n, c] + b[n, s] q[n, c]
// (accumulation type, splits x S x C); the glue sums the splits and subtracts gamma_s mem[s].
cudaError_t gmem_launch(const void* weights, const void* b, const void* grad_read, const void* q, DType dtype,
                        void* part, int64_t N, int S, int C, int splits, cudaStream_t stream);

// How many query splits gmem_launch uses for this problem on the current device.
int gmem_splits(int64_t N, int S, int C);

}  // namespace mgnet_memory
