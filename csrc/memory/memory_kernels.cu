// memory_address CUDA kernels (CUDA headers only; the torch glue is memory_cuda.cpp).
//
// Forward and the backward's per-query part run one warp per query, grid-strided over the queries,
// with the memory (S x C) staged in shared memory once per block when it fits (the behavior memory:
// 10 x 192 floats), read through L2 otherwise (the BSMM: 50 x 5130). Per query: lanes stride over the
// width; slots are processed in register groups of SG, each dot product reduced with warp shuffles.
// Scores live in an N x S scratch row (the weights buffer itself for float / double), so any S works.
// grad_mem is a reduction over the queries: gmem_kernel gives every thread one column and SG slots,
// the queries split into `splits` ranges whose partials the glue sums.
// Element types: float, double, half, bfloat16; arithmetic in float (double for double).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "../common/cuda_convert.cuh"
#include "../common/static_switch.h"
#include "memory_cuda.h"

namespace mgnet_memory {
namespace {

constexpr int kWarps = 8;                 // warps (queries in flight) per block
constexpr int SG = 8;                     // slots per register group
constexpr int GS = 8;                     // slots per thread in gmem_kernel
constexpr int kGmemThreads = 128;         // columns per gmem block
constexpr size_t kSmemLimit = 48 * 1024;  // dynamic shared memory without opt-in

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dsqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float dmax(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double dmax(double a, double b) { return fmax(a, b); }
template <typename A> __device__ __forceinline__ A neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double neg_inf<double>() { return -__longlong_as_double(0x7ff0000000000000LL); }

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The two best (score, slot) pairs: higher score first, equal scores to the lower slot index.
template <typename A>
struct Top2 {
  A v1, v2;
  int i1, i2;
  __device__ static bool better(A va, int ia, A vb, int ib) { return va > vb || (va == vb && ia < ib); }
  __device__ void insert(A v, int i) {
    if (better(v, i, v1, i1)) {
      v2 = v1; i2 = i1; v1 = v; i1 = i;
    } else if (better(v, i, v2, i2)) {
      v2 = v; i2 = i;
    }
  }
  __device__ void warp_merge() {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const A ov1 = __shfl_xor_sync(0xffffffffu, v1, o), ov2 = __shfl_xor_sync(0xffffffffu, v2, o);
      const int oi1 = __shfl_xor_sync(0xffffffffu, i1, o), oi2 = __shfl_xor_sync(0xffffffffu, i2, o);
      insert(ov1, oi1);
      insert(ov2, oi2);
    }
  }
};

extern __shared__ __align__(16) unsigned char smem_raw[];

// mem element (s, c) from shared memory when staged, else from global memory (L2)
template <typename T, typename A>
__device__ __forceinline__ A mem_at(const A* ms, const T* mem, int s, int c, int C) {
  return ms != nullptr ? ms[s * C + c] : mgnet::to_acc(mem[static_cast<int64_t>(s) * C + c]);
}

template <typename T, typename A>
__device__ const A* stage_mem(const T* mem, int S, int C, bool use_smem) {
  if (!use_smem) return nullptr;
  A* ms = reinterpret_cast<A*>(smem_raw);
  for (int k = threadIdx.x; k < S * C; k += blockDim.x) ms[k] = mgnet::to_acc(mem[k]);
  __syncthreads();
  return ms;
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
fwd_kernel(const T* __restrict__ q, const T* __restrict__ mem, const mgnet::acc_t<T>* __restrict__ inv_mn,
           T* W, mgnet::acc_t<T>* scratch, int64_t* __restrict__ top2, T* __restrict__ read, int64_t N,
           int S, int C, mgnet::acc_t<T> eps, bool use_smem) {
  using A = mgnet::acc_t<T>;
  const A* ms = stage_mem<T, A>(mem, S, C, use_smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + warp; n < N; n += static_cast<int64_t>(gridDim.x) * kWarps) {
    const T* qr = q + n * C;
    A* sc = scratch + n * S;
    A qsq = 0;
    for (int s0 = 0; s0 < S; s0 += SG) {
      A acc[SG];
#pragma unroll
      for (int j = 0; j < SG; ++j) acc[j] = 0;
      for (int c = lane; c < C; c += 32) {
        const A qv = mgnet::to_acc(qr[c]);
        if (s0 == 0) qsq += qv * qv;
#pragma unroll
        for (int j = 0; j < SG; ++j)
          if (s0 + j < S) acc[j] += qv * mem_at<T, A>(ms, mem, s0 + j, c, C);
      }
#pragma unroll
      for (int j = 0; j < SG; ++j) {
        const A v = warp_sum(acc[j]);
        if (lane == j && s0 + j < S) sc[s0 + j] = v;
      }
    }
    qsq = warp_sum(qsq);
    const A inv_qn = A(1) / dmax(dsqrt(qsq), eps);
    __syncwarp();
    Top2<A> t{neg_inf<A>(), neg_inf<A>(), INT_MAX, INT_MAX};
    for (int s = lane; s < S; s += 32) {
      const A v = sc[s] * inv_qn * inv_mn[s];
      sc[s] = v;
      t.insert(v, s);
    }
    t.warp_merge();
    A sum = 0;
    for (int s = lane; s < S; s += 32) {
      const A e = dexp(sc[s] - t.v1);
      sc[s] = e;
      sum += e;
    }
    const A inv = A(1) / warp_sum(sum);
    for (int s = lane; s < S; s += 32) {
      const T w = mgnet::from_acc<T>(sc[s] * inv);
      W[n * S + s] = w;
      sc[s] = mgnet::to_acc(w);  // the read uses the weights as returned (rounded to T)
    }
    if (lane == 0) {
      top2[2 * n] = t.i1;
      top2[2 * n + 1] = S == 1 ? 0 : t.i2;
    }
    __syncwarp();
    for (int c = lane; c < C; c += 32) {
      A acc = 0;
      for (int s = 0; s < S; ++s) acc += sc[s] * mem_at<T, A>(ms, mem, s, c, C);
      read[n * C + c] = mgnet::from_acc<T>(acc);
    }
    __syncwarp();
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
bwd_rows_kernel(const T* __restrict__ gW, const T* __restrict__ gR, const T* __restrict__ q, const T* __restrict__ mem,
                const T* __restrict__ W, const mgnet::acc_t<T>* __restrict__ inv_mn,
                mgnet::acc_t<T>* __restrict__ b, mgnet::acc_t<T>* __restrict__ gsc, T* __restrict__ gq,
                int64_t N, int S, int C, mgnet::acc_t<T> eps, bool use_smem) {
  using A = mgnet::acc_t<T>;
  const A* ms = stage_mem<T, A>(mem, S, C, use_smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + warp; n < N; n += static_cast<int64_t>(gridDim.x) * kWarps) {
    const T* qr = q + n * C;
    const T* gr = gR + n * C;
    A* br = b + n * S;    // first grad_read . mem_s, then b
    A* xr = gsc + n * S;  // first q . mem_s, then gs * score
    A qsq = 0;
    for (int s0 = 0; s0 < S; s0 += SG) {
      A aq[SG], ag[SG];
#pragma unroll
      for (int j = 0; j < SG; ++j) aq[j] = ag[j] = 0;
      for (int c = lane; c < C; c += 32) {
        const A qv = mgnet::to_acc(qr[c]), gv = mgnet::to_acc(gr[c]);
        if (s0 == 0) qsq += qv * qv;
#pragma unroll
        for (int j = 0; j < SG; ++j)
          if (s0 + j < S) {
            const A m = mem_at<T, A>(ms, mem, s0 + j, c, C);
            aq[j] += qv * m;
            ag[j] += gv * m;
          }
      }
#pragma unroll
      for (int j = 0; j < SG; ++j) {
        const A vq = warp_sum(aq[j]), vg = warp_sum(ag[j]);
        if (lane == j && s0 + j < S) {
          xr[s0 + j] = vq;
          br[s0 + j] = vg;
        }
      }
    }
    const A qraw = dsqrt(warp_sum(qsq));
    const A inv_qn = A(1) / dmax(qraw, eps);
    __syncwarp();
    A wg = 0;  // sum_s W (grad_weights + grad_read . mem)
    for (int s = lane; s < S; s += 32) {
      const A g = br[s] + mgnet::to_acc(gW[n * S + s]);
      br[s] = g;
      wg += mgnet::to_acc(W[n * S + s]) * g;
    }
    wg = warp_sum(wg);
    A ss = 0;
    for (int s = lane; s < S; s += 32) {
      const A gs = mgnet::to_acc(W[n * S + s]) * (br[s] - wg);
      const A scale = inv_qn * inv_mn[s];
      const A x = gs * (xr[s] * scale);
      xr[s] = x;
      ss += x;
      br[s] = gs * scale;
    }
    ss = warp_sum(ss);
    const A beta = qraw >= eps ? -ss * inv_qn * inv_qn : A(0);
    __syncwarp();
    for (int c = lane; c < C; c += 32) {
      A acc = beta * mgnet::to_acc(qr[c]);
      for (int s = 0; s < S; ++s) acc += br[s] * mem_at<T, A>(ms, mem, s, c, C);
      gq[n * C + c] = mgnet::from_acc<T>(acc);
    }
    __syncwarp();
  }
}

template <typename T>
__global__ void __launch_bounds__(kGmemThreads)
gmem_kernel(const T* __restrict__ W, const mgnet::acc_t<T>* __restrict__ b, const T* __restrict__ gR,
            const T* __restrict__ q, mgnet::acc_t<T>* __restrict__ part, int64_t N, int S, int C,
            int64_t n_per_split) {
  using A = mgnet::acc_t<T>;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int s0 = blockIdx.z * GS;
  const int64_t n_lo = static_cast<int64_t>(blockIdx.y) * n_per_split;
  const int64_t n_hi = n_lo + n_per_split < N ? n_lo + n_per_split : N;
  if (c >= C) return;
  A acc[GS];
#pragma unroll
  for (int j = 0; j < GS; ++j) acc[j] = 0;
  for (int64_t n = n_lo; n < n_hi; ++n) {
    const A gv = mgnet::to_acc(gR[n * C + c]), qv = mgnet::to_acc(q[n * C + c]);
#pragma unroll
    for (int j = 0; j < GS; ++j)
      if (s0 + j < S) acc[j] += mgnet::to_acc(W[n * S + s0 + j]) * gv + b[n * S + s0 + j] * qv;
  }
#pragma unroll
  for (int j = 0; j < GS; ++j)
    if (s0 + j < S) part[(static_cast<int64_t>(blockIdx.y) * S + s0 + j) * C + c] = acc[j];
}

int num_sms() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 80;
  return sms > 0 ? sms : 80;
}

unsigned row_blocks(int64_t N) {
  const int64_t want = (N + kWarps - 1) / kWarps, cap = static_cast<int64_t>(num_sms()) * 16;
  return static_cast<unsigned>(want < cap ? want : cap);
}

template <typename T>
cudaError_t forward_typed(const void* q, const void* mem, const void* inv_mn, void* W, void* scratch, int64_t* top2,
                          void* read, int64_t N, int S, int C, double eps, cudaStream_t stream) {
  using A = mgnet::acc_t<T>;
  if (N == 0) return cudaSuccess;
  const size_t bytes = static_cast<size_t>(S) * C * sizeof(A);
  const bool use_smem = bytes <= kSmemLimit;
  fwd_kernel<T><<<row_blocks(N), kWarps * 32, use_smem ? bytes : 0, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(mem), static_cast<const A*>(inv_mn), static_cast<T*>(W),
      static_cast<A*>(scratch), top2, static_cast<T*>(read), N, S, C, static_cast<A>(eps), use_smem);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_rows_typed(const void* gW, const void* gR, const void* q, const void* mem, const void* W,
                                const void* inv_mn, void* b, void* gsc, void* gq, int64_t N, int S, int C, double eps,
                                cudaStream_t stream) {
  using A = mgnet::acc_t<T>;
  if (N == 0) return cudaSuccess;
  const size_t bytes = static_cast<size_t>(S) * C * sizeof(A);
  const bool use_smem = bytes <= kSmemLimit;
  bwd_rows_kernel<T><<<row_blocks(N), kWarps * 32, use_smem ? bytes : 0, stream>>>(
      static_cast<const T*>(gW), static_cast<const T*>(gR), static_cast<const T*>(q), static_cast<const T*>(mem),
      static_cast<const T*>(W), static_cast<const A*>(inv_mn), static_cast<A*>(b), static_cast<A*>(gsc),
      static_cast<T*>(gq), N, S, C, static_cast<A>(eps), use_smem);
  return cudaGetLastError();
}

template <typename T>
cudaError_t gmem_typed(const void* W, const void* b, const void* gR, const void* q, void* part, int64_t N, int S,
                       int C, int splits, cudaStream_t stream) {
  using A = mgnet::acc_t<T>;
  if (C == 0 || splits <= 0) return cudaSuccess;
  const int64_t n_per_split = (N + splits - 1) / splits;
  const dim3 grid((C + kGmemThreads - 1) / kGmemThreads, splits, (S + GS - 1) / GS);
  gmem_kernel<T><<<grid, kGmemThreads, 0, stream>>>(static_cast<const T*>(W), static_cast<const A*>(b),
                                                    static_cast<const T*>(gR), static_cast<const T*>(q),
                                                    static_cast<A*>(part), N, S, C, n_per_split);
  return cudaGetLastError();
}

}  // namespace

cudaError_t forward_launch(const void* q, const void* mem, const void* inv_mn, DType dtype, void* weights,
                           void* scratch, int64_t* top2, void* read, int64_t N, int S, int C, double eps,
                           cudaStream_t stream) {
  return MGNET_FLOAT_SWITCH(dtype, T, [&] {
    return forward_typed<T>(q, mem, inv_mn, weights, scratch, top2, read, N, S, C, eps, stream);
  });
}

cudaError_t backward_rows_launch(const void* grad_weights, const void* grad_read, const void* q, const void* mem,
                                 const void* weights, const void* inv_mn, DType dtype, void* b, void* gsc,
                                 void* grad_q, int64_t N, int S, int C, double eps, cudaStream_t stream) {
  return MGNET_FLOAT_SWITCH(dtype, T, [&] {
    return backward_rows_typed<T>(grad_weights, grad_read, q, mem, weights, inv_mn, b, gsc, grad_q, N, S, C, eps,
                                  stream);
  });
}

cudaError_t gmem_launch(const void* weights, const void* b, const void* grad_read, const void* q, DType dtype,
                        void* part, int64_t N, int S, int C, int splits, cudaStream_t stream) {
  return MGNET_FLOAT_SWITCH(dtype, T, [&] {
    return gmem_typed<T>(weights, b, grad_read, q, part, N, S, C, splits, stream);
  });
}

int gmem_splits(int64_t N, int S, int C) {
  // enough blocks for ~4 waves of the device, at least 64 queries per split
  const int64_t cols = (C + kGmemThreads - 1) / kGmemThreads, groups = (S + GS - 1) / GS;
  const int64_t want = (static_cast<int64_t>(num_sms()) * 4 + cols * groups - 1) / (cols * groups);
  const int64_t cap = (N + 63) / 64;
  int64_t s = want < cap ? want : cap;
  if (s < 1) s = 1;
  if (s > 65535) s = 65535;
  return static_cast<int>(s);
}

}  // namespace mgnet_memory
