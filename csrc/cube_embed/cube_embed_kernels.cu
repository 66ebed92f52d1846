// masked_cube_embed CUDA kernels: the gather of each visible 2x8x8 cube (and the uint8 -> float
// normalisation) is fused into the load of the GEMM's A operand, so no patch matrix and no float
// copy of the clip exist in global memory.
//   forward  fp32/fp64: 64x64 output tile per block, 256 threads x (4x4) register tile, SIMT FMA;
//            fp16/bf16: 64x64 tile per block, 4 warps x (32x32) WMMA 16x16x16 tensor-core fragments
//            with fp32 accumulation; bias + pos[visible] in the epilogue.
//   backward grad_weight: (64 x 64) tile of grad_weight per block over a split of the rows,
//            re-gathering the patches, atomicAdd of the partial tile; grad_bias / grad_pos: one pass
//            over grad (column sums per block + atomicAdd, scatter by cube index with atomicAdd).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "../common/cuda_convert.cuh"
#include "../common/static_switch.h"
#include "cube_embed_cuda.h"

namespace mgnet_cube {
namespace {

constexpr int KDIM = static_cast<int>(K);  // 3 channels x 2 frames x 8 x 8 (cube_embed_geom.h)

using mgnet::from_acc;
using mgnet::to_acc;

// offset of cube (row r) in the frames, or -1 past the last row
__device__ __forceinline__ int64_t cube_base(const int64_t* visible, int64_t r, const Geom& g,
                                             int64_t* p_out) {
  if (r >= g.N) {
    *p_out = 0;
    return -1;
  }
  const int64_t b = r / g.Pv;
  const int64_t p = visible[r];
  const int64_t wi = p % g.w, hi = (p / g.w) % g.h, ti = p / (g.w * g.h);
  *p_out = p;
  return b * 3 * g.T * g.H * g.W + 2 * ti * g.H * g.W + 8 * hi * g.W + 8 * wi;
}

// normalised patch value k of the cube at `base`
template <typename acc_t, typename in_t>
__device__ __forceinline__ acc_t patch_value(const in_t* frames, int64_t base, int k, const Geom& g,
                                             const acc_t* sc, const acc_t* sh) {
  if (base < 0) return acc_t(0);
  const int c = k >> 7, dt = (k >> 6) & 1, dy = (k >> 3) & 7, dx = k & 7;
  const int64_t HW = g.H * g.W;
  const in_t v = frames[base + c * g.T * HW + dt * HW + dy * g.W + dx];
  return to_acc<acc_t>(v) * sc[c] + sh[c];
}

// ---------------------------------------------------------------- forward, SIMT (fp32 / fp64)
template <typename in_t, typename w_t, typename acc_t>
__global__ void __launch_bounds__(256)
    fwd_simt_kernel(const in_t* __restrict__ frames, const int64_t* __restrict__ visible,
                    const w_t* __restrict__ weight, const w_t* __restrict__ bias,
                    const w_t* __restrict__ pos, const acc_t* __restrict__ scale,
                    const acc_t* __restrict__ shift, w_t* __restrict__ out, Geom g) {
  constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;
  __shared__ acc_t As[BK][BM + 1];
  __shared__ acc_t Ws[BK][BN + 1];
  __shared__ int64_t base[BM], prow[BM];
  __shared__ acc_t sc[3], sh[3];
  const int tid = threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int n0 = blockIdx.y * BN;
  if (tid < BM) base[tid] = cube_base(visible, r0 + tid, g, &prow[tid]);
  if (tid < 3) {
    sc[tid] = scale[tid];
    sh[tid] = shift[tid];
  }
  __syncthreads();
  const int tx = tid % 16, ty = tid / 16;
  acc_t acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = acc_t(0);

  for (int k0 = 0; k0 < KDIM; k0 += BK) {
    for (int i = tid; i < BM * BK; i += 256) {  // consecutive threads read consecutive pixels
      const int m = i / BK, kk = i % BK;
      As[kk][m] = patch_value<acc_t>(frames, base[m], k0 + kk, g, sc, sh);
    }
    for (int i = tid; i < BN * BK; i += 256) {
      const int n = i / BK, kk = i % BK;
      Ws[kk][n] = (n0 + n < g.D) ? to_acc<acc_t>(weight[static_cast<int64_t>(n0 + n) * KDIM + k0 + kk])
                                 : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      acc_t a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[kk][ty * TM + i];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Ws[kk][tx * TN + j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = ty * TM + i;
    const int64_t r = r0 + m;
    if (r >= g.N) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + tx * TN + j;
      if (n >= g.D) continue;
      acc_t v = acc[i][j] + to_acc<acc_t>(bias[n]);
      if (pos != nullptr) v += to_acc<acc_t>(pos[prow[m] * g.D + n]);
      out[r * g.D + n] = from_acc<w_t>(v);
    }
  }
}

// ---------------------------------------------------------------- forward, tensor cores (fp16 / bf16)
template <typename in_t, typename w_t>
__global__ void __launch_bounds__(128)
    fwd_wmma_kernel(const in_t* __restrict__ frames, const int64_t* __restrict__ visible,
                    const w_t* __restrict__ weight, const w_t* __restrict__ bias,
                    const w_t* __restrict__ pos, const float* __restrict__ scale,
                    const float* __restrict__ shift, w_t* __restrict__ out, Geom g) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  constexpr int BM = 64, BN = 64, BK = 32, LDS = BK + 8, LDC = BN + 4;
  __shared__ __align__(32) w_t As[BM][LDS];  // A (m, k) row-major
  __shared__ __align__(32) w_t Bs[BN][LDS];  // B (k, n) column-major: element (k, n) at Bs[n][k]
  __shared__ __align__(32) float Cs[BM][LDC];
  __shared__ int64_t base[BM], prow[BM];
  __shared__ float sc[3], sh[3];
  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;  // each warp owns a 32 x 32 quarter of the tile
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int n0 = blockIdx.y * BN;
  if (tid < BM) base[tid] = cube_base(visible, r0 + tid, g, &prow[tid]);
  if (tid < 3) {
    sc[tid] = scale[tid];
    sh[tid] = shift[tid];
  }
  __syncthreads();
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> cf[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(cf[i][j], 0.0f);

  for (int k0 = 0; k0 < KDIM; k0 += BK) {
    for (int i = tid; i < BM * BK; i += 128) {
      const int m = i / BK, kk = i % BK;
      As[m][kk] = from_acc<w_t>(patch_value<float>(frames, base[m], k0 + kk, g, sc, sh));
    }
    for (int i = tid; i < BN * BK; i += 128) {
      const int n = i / BK, kk = i % BK;
      Bs[n][kk] = (n0 + n < g.D) ? weight[static_cast<int64_t>(n0 + n) * KDIM + k0 + kk]
                                 : from_acc<w_t>(0.0f);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, w_t, wmma::row_major> af[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, w_t, wmma::col_major> bf[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(af[i], &As[wm * 32 + i * 16][kk], LDS);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(bf[j], &Bs[wn * 32 + j * 16][kk], LDS);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(cf[i][j], af[i], bf[j], cf[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&Cs[wm * 32 + i * 16][wn * 32 + j * 16], cf[i][j], LDC, wmma::mem_row_major);
  __syncthreads();
  for (int i = tid; i < BM * BN; i += 128) {
    const int m = i / BN, nn = i % BN, n = n0 + nn;
    const int64_t r = r0 + m;
    if (r >= g.N || n >= g.D) continue;
    float v = Cs[m][nn] + to_acc<float>(bias[n]);
    if (pos != nullptr) v += to_acc<float>(pos[prow[m] * g.D + n]);
    out[r * g.D + n] = from_acc<w_t>(v);
  }
#else
  __trap();  // tensor-core path needs sm_80+ (bf16 WMMA); the build targets sm_90
#endif
}

// ---------------------------------------------------------------- backward
constexpr int GW_ROWS_PER_SPLIT = 512;

// gw_acc[n, k] += sum_{r in split} grad[r, n] * A[r, k] for a 64 (n) x 64 (k) tile
template <typename in_t, typename w_t, typename acc_t>
__global__ void __launch_bounds__(256)
    grad_weight_kernel(const w_t* __restrict__ grad, const in_t* __restrict__ frames,
                       const int64_t* __restrict__ visible, const acc_t* __restrict__ scale,
                       const acc_t* __restrict__ shift, acc_t* __restrict__ gw_acc, Geom g) {
  constexpr int BN = 64, BKK = 64, BR = 16, TN = 4, TK = 4;
  __shared__ acc_t Gs[BR][BN + 1];
  __shared__ acc_t As[BR][BKK + 1];
  __shared__ int64_t base[BR];
  __shared__ acc_t sc[3], sh[3];
  const int tid = threadIdx.x;
  const int n0 = blockIdx.x * BN, k0 = blockIdx.y * BKK;
  const int64_t rs = static_cast<int64_t>(blockIdx.z) * GW_ROWS_PER_SPLIT;
  const int64_t re = rs + GW_ROWS_PER_SPLIT < g.N ? rs + GW_ROWS_PER_SPLIT : g.N;
  if (tid < 3) {
    sc[tid] = scale[tid];
    sh[tid] = shift[tid];
  }
  const int tx = tid % 16, ty = tid / 16;  // ty: n block of TN, tx: k block of TK
  acc_t acc[TN][TK];
#pragma unroll
  for (int i = 0; i < TN; ++i)
#pragma unroll
    for (int j = 0; j < TK; ++j) acc[i][j] = acc_t(0);
  for (int64_t r0 = rs; r0 < re; r0 += BR) {
    __syncthreads();  // previous chunk fully consumed (and sc/sh written on the first pass)
    if (tid < BR) {
      int64_t p;
      base[tid] = (r0 + tid < re) ? cube_base(visible, r0 + tid, g, &p) : int64_t(-1);
    }
    __syncthreads();
    for (int i = tid; i < BR * BKK; i += 256) {
      const int rr = i / BKK, kk = i % BKK;
      As[rr][kk] = patch_value<acc_t>(frames, base[rr], k0 + kk, g, sc, sh);
    }
    for (int i = tid; i < BR * BN; i += 256) {
      const int rr = i / BN, nn = i % BN;
      const int64_t r = r0 + rr;
      Gs[rr][nn] = (r < re && n0 + nn < g.D) ? to_acc<acc_t>(grad[r * g.D + n0 + nn]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < BR; ++rr) {
      acc_t a[TN], b[TK];
#pragma unroll
      for (int i = 0; i < TN; ++i) a[i] = Gs[rr][ty * TN + i];
#pragma unroll
      for (int j = 0; j < TK; ++j) b[j] = As[rr][tx * TK + j];
#pragma unroll
      for (int i = 0; i < TN; ++i)
#pragma unroll
        for (int j = 0; j < TK; ++j) acc[i][j] += a[i] * b[j];
    }
  }
#pragma unroll
  for (int i = 0; i < TN; ++i) {
    const int n = n0 + ty * TN + i;
    if (n >= g.D) continue;
#pragma unroll
    for (int j = 0; j < TK; ++j) atomicAdd(&gw_acc[static_cast<int64_t>(n) * KDIM + k0 + tx * TK + j], acc[i][j]);
  }
}

// gb_acc[n] += sum of grad[r, n] over the block's rows; gp_acc[p(r), n] += grad[r, n]
template <typename w_t, typename acc_t>
__global__ void __launch_bounds__(256)
    grad_bias_pos_kernel(const w_t* __restrict__ grad, const int64_t* __restrict__ visible,
                         acc_t* __restrict__ gb_acc, acc_t* __restrict__ gp_acc, Geom g) {
  constexpr int ROWS = 64;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * ROWS;
  const int64_t r1 = r0 + ROWS < g.N ? r0 + ROWS : g.N;
  for (int64_t n = threadIdx.x; n < g.D; n += blockDim.x) {
    acc_t s = acc_t(0);
    for (int64_t r = r0; r < r1; ++r) {
      const acc_t v = to_acc<acc_t>(grad[r * g.D + n]);
      s += v;
      if (gp_acc != nullptr) atomicAdd(&gp_acc[visible[r] * g.D + n], v);
    }
    atomicAdd(&gb_acc[n], s);
  }
}

template <typename in_t, typename w_t, typename acc_t>
cudaError_t forward_simt(const void* frames, const int64_t* visible, const void* weight,
                         const void* bias, const void* pos, const void* scale, const void* shift,
                         void* out, const Geom& g, cudaStream_t stream) {
  dim3 grid(static_cast<unsigned>((g.N + 63) / 64), static_cast<unsigned>((g.D + 63) / 64));
  fwd_simt_kernel<in_t, w_t, acc_t><<<grid, 256, 0, stream>>>(
      static_cast<const in_t*>(frames), visible, static_cast<const w_t*>(weight),
      static_cast<const w_t*>(bias), static_cast<const w_t*>(pos), static_cast<const acc_t*>(scale),
      static_cast<const acc_t*>(shift), static_cast<w_t*>(out), g);
  return cudaGetLastError();
}

template <typename in_t, typename w_t>
cudaError_t forward_wmma(const void* frames, const int64_t* visible, const void* weight,
                         const void* bias, const void* pos, const void* scale, const void* shift,
                         void* out, const Geom& g, cudaStream_t stream) {
  dim3 grid(static_cast<unsigned>((g.N + 63) / 64), static_cast<unsigned>((g.D + 63) / 64));
  fwd_wmma_kernel<in_t, w_t><<<grid, 128, 0, stream>>>(
      static_cast<const in_t*>(frames), visible, static_cast<const w_t*>(weight),
      static_cast<const w_t*>(bias), static_cast<const w_t*>(pos), static_cast<const float*>(scale),
      static_cast<const float*>(shift), static_cast<w_t*>(out), g);
  return cudaGetLastError();
}

template <typename in_t, typename w_t, typename acc_t>
cudaError_t backward_typed(const void* grad, const void* frames, const int64_t* visible,
                           const void* scale, const void* shift, void* gw_acc, void* gb_acc,
                           void* gp_acc, const Geom& g, cudaStream_t stream) {
  const unsigned splits = static_cast<unsigned>((g.N + GW_ROWS_PER_SPLIT - 1) / GW_ROWS_PER_SPLIT);
  dim3 grid(static_cast<unsigned>((g.D + 63) / 64), KDIM / 64, splits);
  grad_weight_kernel<in_t, w_t, acc_t><<<grid, 256, 0, stream>>>(
      static_cast<const w_t*>(grad), static_cast<const in_t*>(frames), visible,
      static_cast<const acc_t*>(scale), static_cast<const acc_t*>(shift), static_cast<acc_t*>(gw_acc), g);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  grad_bias_pos_kernel<w_t, acc_t><<<static_cast<unsigned>((g.N + 63) / 64), 256, 0, stream>>>(
      static_cast<const w_t*>(grad), visible, static_cast<acc_t*>(gb_acc), static_cast<acc_t*>(gp_acc), g);
  return cudaGetLastError();
}

}  // namespace

cudaError_t forward_launch(const void* frames, DType frames_dtype, const int64_t* visible,
                           const void* weight, const void* bias, const void* pos, DType dtype,
                           const void* scale, const void* shift, void* out, const Geom& g,
                           cudaStream_t stream) {
  if (g.N == 0 || g.D == 0) return cudaSuccess;
  return MGNET_FLOAT_SWITCH(dtype, w_t, [&] {
    return MGNET_BOOL_SWITCH(frames_dtype == DType::U8, U8, [&] {
      using in_t = std::conditional_t<U8, uint8_t, w_t>;
      if constexpr (std::is_same<w_t, float>::value || std::is_same<w_t, double>::value) {
        return forward_simt<in_t, w_t, w_t>(frames, visible, weight, bias, pos, scale, shift, out, g, stream);
      } else {  // fp16 / bf16: tensor cores
        return forward_wmma<in_t, w_t>(frames, visible, weight, bias, pos, scale, shift, out, g, stream);
      }
    });
  });
}

cudaError_t backward_launch(const void* grad, const void* frames, DType frames_dtype,
                            const int64_t* visible, DType dtype, const void* scale, const void* shift,
                            void* gw_acc, void* gb_acc, void* gp_acc, const Geom& g,
                            cudaStream_t stream) {
  if (g.N == 0 || g.D == 0) return cudaSuccess;
  return MGNET_FLOAT_SWITCH(dtype, w_t, [&] {
    return MGNET_BOOL_SWITCH(frames_dtype == DType::U8, U8, [&] {
      using in_t = std::conditional_t<U8, uint8_t, w_t>;
      return backward_typed<in_t, w_t, mgnet::acc_t<w_t>>(grad, frames, visible, scale, shift, gw_acc, gb_acc,
                                                           gp_acc, g, stream);
    });
  });
}

}  // namespace mgnet_cube
