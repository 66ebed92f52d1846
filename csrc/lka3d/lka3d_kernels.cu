// lka3d / lsta CUDA kernels (CUDA headers only; the torch glue is lka3d_cuda.cpp).
//
// The algorithm mirrors the C++ CPU kernel:
//   dw_pair_smem_kernel  one block per (batch, channel) volume: x is staged in shared memory, the
//                        k0^3 depthwise conv writes a1 to shared memory, then the dilated k1^3 conv
//                        reads it (a1 never touches global memory unless the backward asks for it).
//                        Volumes too large for shared memory take dwconv_kernel twice, a1 via L2.
//   pointwise_kernel     out = wp @ a2 + bp: a 64x64 shared-memory-tiled SIMT GEMM (4x4 outputs per
//                        thread, fp32 accumulation), bias and the cast to the output type in the
//                        epilogue. With transposed strides it gives G2 = wp^T grad in the backward.
//   dwconv_kernel        depthwise conv from global memory; with flip = the transposed conv of the
//                        backward (the flipped kernel with the same padding).
//   corr_kernel          weight-gradient partials: one warp per (volume, tap), shuffle reduction.
//   lsta_mean_kernel / lsta_gate_kernel   one read of e for the channel mean (and sum_c g*e), one
//                        read + one write for the gate.
// Arithmetic is in the accumulation type (float, or double for double tensors).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/cuda_convert.cuh"
#include "../common/static_switch.h"
#include "lka3d_cuda.h"

namespace mgnet_lka3d_cuda {
namespace {

using mgnet::to_acc;

// *p = v rounded to p's element type
template <typename T, typename A>
__device__ __forceinline__ void store(T* p, A v) {
  *p = mgnet::from_acc<T>(v);
}

constexpr int kThreads = 256;

// One output point of a depthwise conv (zeros outside the volume); src may be global or shared.
template <typename S, typename A>
__device__ __forceinline__ A dw_point(const S* src, const A* w, A bias, int z, int y, int x, int D, int H, int W,
                                      int K, int dil, bool flip) {
  const int p = dil * (K - 1) / 2;
  const int KK = K * K * K;
  A acc = bias;
  for (int kz = 0; kz < K; ++kz) {
    const int iz = z + kz * dil - p;
    if (iz < 0 || iz >= D) continue;
    for (int ky = 0; ky < K; ++ky) {
      const int iy = y + ky * dil - p;
      if (iy < 0 || iy >= H) continue;
      const S* row = src + ((int64_t)iz * H + iy) * W;
      const int t0 = (kz * K + ky) * K;
      for (int kx = 0; kx < K; ++kx) {
        const int ix = x + kx * dil - p;
        if (ix < 0 || ix >= W) continue;
        const int t = t0 + kx;
        acc += w[flip ? KK - 1 - t : t] * static_cast<A>(to_acc(row[ix]));
      }
    }
  }
  return acc;
}

template <typename T, typename A>
__global__ void dw_pair_smem_kernel(const T* __restrict__ x, const A* __restrict__ w0, const A* __restrict__ b0,
                                    const A* __restrict__ w1, const A* __restrict__ b1, A* __restrict__ a1g,
                                    A* __restrict__ a2, int C, int D, int H, int W, int k0, int k1, int dil) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t N = (int64_t)D * H * W;
  A* sx = reinterpret_cast<A*>(smem_raw);
  A* sa = sx + N;
  const int64_t vol = blockIdx.x;
  const int c = (int)(vol % C);
  const int64_t base = vol * N;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) sx[i] = static_cast<A>(to_acc(x[base + i]));
  __syncthreads();
  const A* w0c = w0 + (int64_t)c * k0 * k0 * k0;
  const A* w1c = w1 + (int64_t)c * k1 * k1 * k1;
  const int HW = H * W;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    const int z = (int)(i / HW), r = (int)(i % HW), y = r / W, xx = r % W;
    const A v = dw_point<A, A>(sx, w0c, b0[c], z, y, xx, D, H, W, k0, 1, false);
    sa[i] = v;
    if (a1g) a1g[base + i] = v;
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    const int z = (int)(i / HW), r = (int)(i % HW), y = r / W, xx = r % W;
    a2[base + i] = dw_point<A, A>(sa, w1c, b1[c], z, y, xx, D, H, W, k1, dil, false);
  }
}

// grid (B*C, ceil(N / kThreads))
template <typename S, typename O, typename A>
__global__ void dwconv_kernel(const S* __restrict__ src, const A* __restrict__ w, const A* __restrict__ bias,
                              O* __restrict__ out, int C, int D, int H, int W, int K, int dil, bool flip) {
  const int64_t N = (int64_t)D * H * W;
  const int64_t vol = blockIdx.x;
  const int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const int c = (int)(vol % C);
  const int HW = H * W;
  const int z = (int)(i / HW), r = (int)(i % HW), y = r / W, xx = r % W;
  const A b = bias ? bias[c] : A(0);
  const A v = dw_point<S, A>(src + vol * N, w + (int64_t)c * K * K * K, b, z, y, xx, D, H, W, K, dil, flip);
  store(out + vol * N + i, v);
}

// out[b, co, n] = sum_ci w[co*sw_o + ci*sw_i] * a[b, ci, n] (+ bias[co]); grid (ceil(N/64), ceil(C/64), B)
constexpr int TM = 64, TN = 64, TK = 16;

template <typename TI, typename TO, typename A>
__global__ void __launch_bounds__(256) pointwise_kernel(const TI* __restrict__ a, const A* __restrict__ w,
                                                        int64_t sw_o, int64_t sw_i, const A* __restrict__ bias,
                                                        TO* __restrict__ out, int C, int64_t N) {
  __shared__ A sw[TK][TM + 1];
  __shared__ A sa[TK][TN];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t n0 = (int64_t)blockIdx.x * TN;
  const int co0 = blockIdx.y * TM;
  const int64_t b = blockIdx.z;
  const TI* ab = a + b * C * N;
  A acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = A(0);
  for (int k0 = 0; k0 < C; k0 += TK) {
#pragma unroll
    for (int r = 0; r < (TK * TM) / 256; ++r) {
      const int idx = threadIdx.x + r * 256;
      const int kk = idx / TM, m = idx % TM;
      const int co = co0 + m, ci = k0 + kk;
      sw[kk][m] = (co < C && ci < C) ? w[co * sw_o + ci * sw_i] : A(0);
      const int64_t n = n0 + m;
      sa[kk][m] = (ci < C && n < N) ? static_cast<A>(to_acc(ab[(int64_t)ci * N + n])) : A(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TK; ++kk) {
      A wv[4], av[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) wv[i] = sw[kk][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) av[j] = sa[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += wv[i] * av[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int co = co0 + ty * 4 + i;
    if (co >= C) continue;
    const A bv = bias ? bias[co] : A(0);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < N) store(out + (b * C + co) * N + n, acc[i][j] + bv);
    }
  }
}

// out[vol, tap] = sum_pos g[vol, pos] * in[vol, pos + offset(tap)]; one warp per tap;
// grid (B*C, ceil(K^3 / 8)), 256 threads
template <typename SI, typename A>
__global__ void corr_kernel(const A* __restrict__ g, const SI* __restrict__ in, A* __restrict__ out, int D, int H,
                            int W, int K, int dil) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int KK = K * K * K;
  const int tap = blockIdx.y * (kThreads / 32) + warp;
  if (tap >= KK) return;
  const int64_t N = (int64_t)D * H * W;
  const int64_t vol = blockIdx.x;
  const int p = dil * (K - 1) / 2;
  const int oz = (tap / (K * K)) * dil - p, oy = ((tap / K) % K) * dil - p, ox = (tap % K) * dil - p;
  const A* gv = g + vol * N;
  const SI* iv = in + vol * N;
  const int HW = H * W;
  A acc = A(0);
  for (int64_t i = lane; i < N; i += 32) {
    const int z = (int)(i / HW), r = (int)(i % HW), y = r / W, xx = r % W;
    const int iz = z + oz, iy = y + oy, ix = xx + ox;
    if (iz < 0 || iz >= D || iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
    acc += gv[i] * static_cast<A>(to_acc(iv[((int64_t)iz * H + iy) * W + ix]));
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if (lane == 0) out[vol * KK + tap] = acc;
}

// f[bz, i] = mean_c e[bz, c, i]; ge[bz, i] = sum_c g*e (if g); one thread per (bz, i)
template <typename T, typename A>
__global__ void lsta_mean_kernel(const T* __restrict__ e, const T* __restrict__ g, A* __restrict__ f,
                                 A* __restrict__ ge, int64_t BT, int64_t c, int64_t P) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= BT * P) return;
  const int64_t bz = idx / P, i = idx % P;
  const T* eb = e + bz * c * P + i;
  A s = A(0), s2 = A(0);
  if (g) {
    const T* gb = g + bz * c * P + i;
    for (int64_t ci = 0; ci < c; ++ci) {
      const A ev = static_cast<A>(to_acc(eb[ci * P]));
      s += ev;
      s2 += static_cast<A>(to_acc(gb[ci * P])) * ev;
    }
    ge[idx] = s2;
  } else {
    for (int64_t ci = 0; ci < c; ++ci) s += static_cast<A>(to_acc(eb[ci * P]));
  }
  f[idx] = s / static_cast<A>(c);
}

// out = src * (1 + sigmoid(fo)) (+ gf / c); one thread per element of src
template <typename T, typename A>
__global__ void lsta_gate_kernel(const T* __restrict__ src, const A* __restrict__ fo, const A* __restrict__ gf,
                                 T* __restrict__ out, int64_t BT, int64_t c, int64_t P) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= BT * c * P) return;
  const int64_t bz = idx / (c * P), i = idx % P;
  const A f = fo[bz * P + i];
  const A s1 = A(1) + A(1) / (A(1) + exp(-f));
  A v = static_cast<A>(to_acc(src[idx])) * s1;
  if (gf) v += gf[bz * P + i] / static_cast<A>(c);
  store(out + idx, v);
}

inline unsigned int blocks_for(int64_t n) { return (unsigned int)((n + kThreads - 1) / kThreads); }

inline int smem_optin_limit() {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 48 * 1024;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return 48 * 1024;
  return v;
}

template <typename T>
cudaError_t depthwise_pair(const T* x, const void* w0_, const void* b0_, const void* w1_, const void* b1_,
                           void* a1_, bool keep_a1, void* a2_, const Geom& g, cudaStream_t stream) {
  using A = mgnet::acc_t<T>;
  const A *w0 = static_cast<const A*>(w0_), *b0 = static_cast<const A*>(b0_);
  const A *w1 = static_cast<const A*>(w1_), *b1 = static_cast<const A*>(b1_);
  A* a1 = static_cast<A*>(a1_);
  A* a2 = static_cast<A*>(a2_);
  const int64_t N = g.D * g.H * g.W, vols = g.B * g.C;
  const size_t smem = 2 * (size_t)N * sizeof(A);
  if (smem <= (size_t)smem_optin_limit()) {
    if (smem > 48 * 1024) {
      cudaError_t e = cudaFuncSetAttribute(dw_pair_smem_kernel<T, A>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)smem);
      if (e != cudaSuccess) return e;
    }
    dw_pair_smem_kernel<T, A><<<(unsigned int)vols, kThreads, smem, stream>>>(
        x, w0, b0, w1, b1, keep_a1 ? a1 : nullptr, a2, (int)g.C, (int)g.D, (int)g.H, (int)g.W, g.k0, g.k1, g.dil);
  } else {
    const dim3 grid((unsigned int)vols, blocks_for(N));
    dwconv_kernel<T, A, A><<<grid, kThreads, 0, stream>>>(x, w0, b0, a1, (int)g.C, (int)g.D, (int)g.H, (int)g.W,
                                                          g.k0, 1, false);
    dwconv_kernel<A, A, A><<<grid, kThreads, 0, stream>>>(a1, w1, b1, a2, (int)g.C, (int)g.D, (int)g.H, (int)g.W,
                                                          g.k1, g.dil, false);
  }
  return cudaGetLastError();
}

template <typename TI, typename TO>
void pointwise(const TI* a, const void* w, bool transpose, const void* bias, TO* out, const Geom& g,
               cudaStream_t stream) {
  using A = mgnet::acc_t<TO>;
  const int64_t N = g.D * g.H * g.W;
  const dim3 grid((unsigned int)((N + TN - 1) / TN), (unsigned int)((g.C + TM - 1) / TM), (unsigned int)g.B);
  const int64_t so = transpose ? 1 : g.C, si = transpose ? g.C : 1;
  pointwise_kernel<TI, TO, A><<<grid, 256, 0, stream>>>(a, static_cast<const A*>(w), so, si,
                                                        static_cast<const A*>(bias), out, (int)g.C, N);
}

template <typename T>
cudaError_t forward_t(const void* x, const void* w0, const void* b0, const void* w1, const void* b1, const void* wp,
                      const void* bp, void* a1_ws, bool keep_a1, void* a2_ws, void* out, const Geom& g,
                      cudaStream_t stream) {
  using A = mgnet::acc_t<T>;
  cudaError_t e = depthwise_pair<T>(static_cast<const T*>(x), w0, b0, w1, b1, a1_ws, keep_a1, a2_ws, g, stream);
  if (e != cudaSuccess) return e;
  pointwise<A, T>(static_cast<const A*>(a2_ws), wp, false, bp, static_cast<T*>(out), g, stream);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_t(const void* grad, const void* x, const void* w0, const void* b0, const void* w1,
                       const void* b1, const void* wp, void* a1_ws, void* a2_ws, void* g2_ws, void* g1_ws, void* gx,
                       void* pw0, void* pw1, const Geom& g, cudaStream_t stream) {
  using A = mgnet::acc_t<T>;
  const T* xt = static_cast<const T*>(x);
  cudaError_t e = depthwise_pair<T>(xt, w0, b0, w1, b1, a1_ws, true, a2_ws, g, stream);
  if (e != cudaSuccess) return e;
  A* g2 = static_cast<A*>(g2_ws);
  A* g1 = static_cast<A*>(g1_ws);
  // G2 = wp^T grad (A), no bias
  using AccT = A;
  const int64_t N = g.D * g.H * g.W;
  {
    const dim3 grid((unsigned int)((N + TN - 1) / TN), (unsigned int)((g.C + TM - 1) / TM), (unsigned int)g.B);
    pointwise_kernel<T, AccT, A><<<grid, 256, 0, stream>>>(static_cast<const T*>(grad), static_cast<const A*>(wp), 1,
                                                           g.C, nullptr, g2, (int)g.C, N);
  }
  const dim3 grid((unsigned int)(g.B * g.C), blocks_for(N));
  dwconv_kernel<A, A, A><<<grid, kThreads, 0, stream>>>(g2, static_cast<const A*>(w1), nullptr, g1, (int)g.C,
                                                        (int)g.D, (int)g.H, (int)g.W, g.k1, g.dil, true);
  dwconv_kernel<A, T, A><<<grid, kThreads, 0, stream>>>(g1, static_cast<const A*>(w0), nullptr, static_cast<T*>(gx),
                                                        (int)g.C, (int)g.D, (int)g.H, (int)g.W, g.k0, 1, true);
  const int warps = kThreads / 32;
  const dim3 g1grid((unsigned int)(g.B * g.C), (unsigned int)((g.k1 * g.k1 * g.k1 + warps - 1) / warps));
  corr_kernel<A, A><<<g1grid, kThreads, 0, stream>>>(g2, static_cast<const A*>(a1_ws), static_cast<A*>(pw1),
                                                     (int)g.D, (int)g.H, (int)g.W, g.k1, g.dil);
  const dim3 g0grid((unsigned int)(g.B * g.C), (unsigned int)((g.k0 * g.k0 * g.k0 + warps - 1) / warps));
  corr_kernel<T, A><<<g0grid, kThreads, 0, stream>>>(g1, xt, static_cast<A*>(pw0), (int)g.D, (int)g.H, (int)g.W,
                                                     g.k0, 1);
  return cudaGetLastError();
}

template <typename T>
cudaError_t mean_t(const void* e, const void* grad, void* f, void* ge, int64_t BT, int64_t c, int64_t P,
                   cudaStream_t stream) {
  using A = mgnet::acc_t<T>;
  lsta_mean_kernel<T, A><<<blocks_for(BT * P), kThreads, 0, stream>>>(
      static_cast<const T*>(e), static_cast<const T*>(grad), static_cast<A*>(f), static_cast<A*>(ge), BT, c, P);
  return cudaGetLastError();
}

template <typename T>
cudaError_t gate_t(const void* src, const void* fo, const void* gf, void* out, int64_t BT, int64_t c, int64_t P,
                   cudaStream_t stream) {
  using A = mgnet::acc_t<T>;
  lsta_gate_kernel<T, A><<<blocks_for(BT * c * P), kThreads, 0, stream>>>(
      static_cast<const T*>(src), static_cast<const A*>(fo), static_cast<const A*>(gf), static_cast<T*>(out), BT, c,
      P);
  return cudaGetLastError();
}

}  // namespace

cudaError_t lka3d_forward_launch(const void* x, DType dt, const void* w0, const void* b0, const void* w1,
                                 const void* b1, const void* wp, const void* bp, void* a1_ws, bool keep_a1,
                                 void* a2_ws, void* out, const Geom& g, cudaStream_t stream) {
  if (g.B * g.C * g.D * g.H * g.W == 0) return cudaSuccess;
  return MGNET_FLOAT_SWITCH(dt, T, [&] {
    return forward_t<T>(x, w0, b0, w1, b1, wp, bp, a1_ws, keep_a1, a2_ws, out, g, stream);
  });
}

cudaError_t lka3d_backward_launch(const void* grad, const void* x, DType dt, const void* w0, const void* b0,
                                  const void* w1, const void* b1, const void* wp, void* a1_ws, void* a2_ws,
                                  void* g2_ws, void* g1_ws, void* gx, void* pw0, void* pw1, const Geom& g,
                                  cudaStream_t stream) {
  if (g.B * g.C * g.D * g.H * g.W == 0) return cudaSuccess;
  return MGNET_FLOAT_SWITCH(dt, T, [&] {
    return backward_t<T>(grad, x, w0, b0, w1, b1, wp, a1_ws, a2_ws, g2_ws, g1_ws, gx, pw0, pw1, g, stream);
  });
}

cudaError_t lsta_mean_launch(const void* e, const void* grad, DType dt, void* f, void* ge, int64_t BT, int64_t c,
                             int64_t P, cudaStream_t stream) {
  if (BT * P == 0) return cudaSuccess;
  return MGNET_FLOAT_SWITCH(dt, T, [&] { return mean_t<T>(e, grad, f, ge, BT, c, P, stream); });
}

cudaError_t lsta_gate_launch(const void* src, DType dt, const void* fo, const void* gf, void* out, int64_t BT,
                             int64_t c, int64_t P, cudaStream_t stream) {
  if (BT * c * P == 0) return cudaSuccess;
  return MGNET_FLOAT_SWITCH(dt, T, [&] { return gate_t<T>(src, fo, gf, out, BT, c, P, stream); });
}

}  // namespace mgnet_lka3d_cuda
