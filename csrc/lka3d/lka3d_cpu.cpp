// Fused 3D large-kernel attention (lka3d) and the LSTA gate (lsta): C++ CPU kernels.
//
// lka3d(x (B,C,D,H,W)) = pointwise(dwconv_dil(dwconv(x, w0, b0), w1, b1, d), wp, bp)
//
// Algorithm (forward), per chunk of batches whose depthwise output fits in L3:
//   1. parallel over (batch, channel): the channel volume of x is copied into a thread-local
//      W-padded buffer; the k0^3 depthwise conv writes a1 straight into a second thread-local
//      padded buffer (a1 never leaves the core's cache); the dilated k1^3 conv reads it and writes
//      a2 into the chunk's scratch slab (C x DHW per batch, L3 sized).
//   2. parallel over (batch, spatial tile): out = wp @ a2 + bp, register-blocked (the output tile
//      accumulates in registers across all input channels; bias in the epilogue).
// Depth and height halos are handled by loop bounds (only the taps that land inside the volume
// are visited); width halos by zero columns in the padded buffers, so the innermost loop is a
// fixed-width (BW lanes) SIMD block with no branches. All reductions keep BW lane-wise partial
// sums, so they vectorise without -ffast-math.
//
// Backward recomputes a1/a2 for the chunk, then: g_wp += g a2^T, g_bp += sum g, G2 = wp^T g
// (same register-blocked GEMM), and per (batch, channel): g_b1, g_w1 (correlation of G2 with a1),
// g_a1 = transposed dilated conv of G2 (= conv with the flipped kernel, same padding), g_b0,
// g_w0 (correlation of g_a1 with x), g_x = transposed conv of g_a1 - all in thread-local padded
// buffers. Weight gradients are reduced over the batch from per-(batch, channel) partials, so
// the result does not depend on the thread count.
//
// lsta(e (B,t,c,h,w)): one read of e for the channel mean f (B,1,t,h,w), lka3d on f (C = 1,
// cheap), then one read + one write of e for out = e * (1 + sigmoid(f_o)). Backward: one read
// of (e, g) for the mean and sum_c g*e, lka3d backward on the small volume, one read of g and one
// write of g_e.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../common/buffer_cache.h"
#include "../common/parallel.h"
#include "../common/static_switch.h"
#include "../common/vec.h"
#include "lka3d_args.h"
#include "lka3d_pointwise.h"

namespace mgnet_lka3d {

constexpr int64_t kMaxBW = 32;  // widest SIMD block (elements); buffers are padded for it

// Register budget of the convolutions' inner blocks, in lanes of T: 12 of the machine's vector
// registers for accumulators (AVX2 has 16; the rest hold the broadcast weight or the loaded operands).
template <typename T> constexpr int kVecLanes = MGNET_VEC_BYTES / int(sizeof(T));
template <typename T> constexpr int kAccLanes = 12 * kVecLanes<T>;
// corr: taps per sweep, so that the (taps + 1) x (two vectors) block fits kAccLanes
template <typename T> constexpr int kCorrTaps = kAccLanes<T> / (2 * kVecLanes<T>) - 1;

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t ceil_div_pos(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

// A channel volume (D, H, W) whose rows have stride Wp, data at column offset P, zeros in
// [0, P) and [P + W, Wp). The zero columns are written once; later loads only touch the data.
template <typename T>
struct PadBuf {
  std::vector<T> buf;
  int64_t D = 0, H = 0, W = 0, P = 0, Wp = 0;
  void init(int64_t D_, int64_t H_, int64_t W_, int64_t P_) {
    D = D_; H = H_; W = W_; P = P_;
    Wp = round_up(W, kMaxBW) + 2 * P + kMaxBW;
    buf.assign(static_cast<size_t>(D * H * Wp), T(0));
  }
  T* row(int64_t z, int64_t y) { return buf.data() + (z * H + y) * Wp; }
  const T* row(int64_t z, int64_t y) const { return buf.data() + (z * H + y) * Wp; }
  T* data_row(int64_t z, int64_t y) { return row(z, y) + P; }
  void load(const T* src) {
    for (int64_t z = 0; z < D; ++z)
      for (int64_t y = 0; y < H; ++y) std::memcpy(data_row(z, y), src + (z * H + y) * W, sizeof(T) * W);
  }
  void store(T* dst) const {
    for (int64_t z = 0; z < D; ++z)
      for (int64_t y = 0; y < H; ++y) std::memcpy(dst + (z * H + y) * W, row(z, y) + P, sizeof(T) * W);
  }
};

// dst(z, y, x) = bias + sum_{taps} w[kz,ky,kx] * src(z + kz*dil - p, y + ky*dil - p, x + kx*dil - p)
// with p = dil*(k-1)/2 and zeros outside the volume. dst row (z, y) starts at dst + (z*H+y)*dstride.
//
// Register block: MR output rows y0 + m*dil (m < MR, one depth z) x NV vectors of columns. The MR rows
// read the same input rows (row y0 - p + t*dil feeds row m through tap ky = t - m), so each input
// vector is loaded once per tap kx and feeds up to MR accumulators: about one load per FMA, where one
// output row at a time took 1.25 (a load per FMA and a broadcast per row of taps), half of them split
// over two cache lines (the tap shifts are not vector-aligned). MR x NV accumulators + NV operands + the
// broadcast weight fit AVX2's 16 registers. KC > 0 fixes k at compile time (the kx loop unrolls).
// dst(z, y, x) = bias + sum_{taps} w[kz,ky,kx] * src(z + kz*dil - p, y + ky*dil - p, x + kx*dil - p)
// with p = dil*(k-1)/2 and zeros outside the volume. dst row (z, y) starts at dst + (z*H+y)*dstride.
// KC > 0 fixes k at compile time: the kx loop unrolls and the taps rotate over NA accumulator sets
// (NA x BW lanes of independent FMA chains, enough to hide the FMA latency, and within kAccLanes: 4 sets
// of 32 fp32 lanes are 16 AVX2 registers, which spilled to the stack in every tap; 3 sets do not).
// (Tried: blocks of 5 output rows sharing each input vector, one load per FMA instead of 1.25; GCC kept
// their accumulators on the stack and the forward ran 20 % slower than this.)
template <typename T, int BW, int KC>
void dwconv(const PadBuf<T>& src, const T* w, T bias, int64_t k_rt, int64_t dil, T* dst, int64_t dstride) {
  const int64_t k = KC > 0 ? KC : k_rt;
  constexpr int NA = KC > 0 ? std::max(1, std::min(4, kAccLanes<T> / BW)) : 1;
  const int64_t D = src.D, H = src.H, W = src.W, p = dil * (k - 1) / 2, sh = src.P - p;
  for (int64_t z = 0; z < D; ++z) {
    const int64_t kz0 = ceil_div_pos(p - z, dil), kz1 = std::min(k - 1, (D - 1 + p - z) / dil);
    for (int64_t y = 0; y < H; ++y) {
      const int64_t ky0 = ceil_div_pos(p - y, dil), ky1 = std::min(k - 1, (H - 1 + p - y) / dil);
      T* drow = dst + (z * H + y) * dstride;
      for (int64_t x0 = 0; x0 < W; x0 += BW) {
        T acc[NA][BW];
        for (int a = 0; a < NA; ++a)
          for (int i = 0; i < BW; ++i) acc[a][i] = a == 0 ? bias : T(0);
        for (int64_t kz = kz0; kz <= kz1; ++kz) {
          for (int64_t ky = ky0; ky <= ky1; ++ky) {
            const T* r = src.row(z + kz * dil - p, y + ky * dil - p) + sh + x0;
            const T* wr = w + (kz * k + ky) * k;
            if constexpr (KC > 0) {
#pragma GCC unroll 16
              for (int kx = 0; kx < KC; ++kx) {
                const T wv = wr[kx];
                const T* rr = r + kx * dil;
                T* ac = acc[kx % NA];
#pragma omp simd
                for (int i = 0; i < BW; ++i) ac[i] += wv * rr[i];
              }
            } else {
              for (int64_t kx = 0; kx < k; ++kx) {
                const T wv = wr[kx];
                const T* rr = r + kx * dil;
#pragma omp simd
                for (int i = 0; i < BW; ++i) acc[0][i] += wv * rr[i];
              }
            }
          }
        }
        for (int a = 1; a < NA; ++a)
          for (int i = 0; i < BW; ++i) acc[0][i] += acc[a][i];
        const int64_t n = std::min<int64_t>(BW, W - x0);
        for (int64_t i = 0; i < n; ++i) drow[x0 + i] = acc[0][i];
      }
    }
  }
}

// gw[kz,ky,kx] += sum_{z,y,x} g(z,y,x) * in(z + kz*dil - p, y + ky*dil - p, x + kx*dil - p)
// One (kz, ky) pair and NK consecutive kx taps [kx0, kx0 + NK) per sweep over the volume: NK x XB
// lane-wise partial sums (XB = two vectors of the row) stay in registers with the XB lanes of g they
// multiply, NK + 1 <= kAccLanes / XB (the former single block of k x BW sums, 7 x 32 fp32 lanes for k1,
// was 28 AVX2 vectors and lived on the stack).
template <typename T, int BW, int NK>
void corr_taps(const PadBuf<T>& g, const PadBuf<T>& in, int64_t k, int64_t dil, int64_t kz, int64_t ky, int64_t kx0,
               T* gw) {
  constexpr int XB = std::min(BW, 2 * kVecLanes<T>);
  const int64_t D = g.D, H = g.H, W = g.W, p = dil * (k - 1) / 2;
  const int64_t z0 = std::max<int64_t>(0, p - kz * dil), z1 = std::min<int64_t>(D, D + p - kz * dil);
  const int64_t y0 = std::max<int64_t>(0, p - ky * dil), y1 = std::min<int64_t>(H, H + p - ky * dil);
  const int64_t Wb = round_up(W, BW);  // g is zero past W (PadBuf): whole blocks, no tail
  T part[NK][XB];
  for (int j = 0; j < NK; ++j)
    for (int i = 0; i < XB; ++i) part[j][i] = T(0);
  for (int64_t z = z0; z < z1; ++z) {
    for (int64_t y = y0; y < y1; ++y) {
      const T* gr = g.row(z, y) + g.P;
      const T* ir = in.row(z + kz * dil - p, y + ky * dil - p) + in.P - p + kx0 * dil;
      for (int64_t x0 = 0; x0 < Wb; x0 += XB) {
#pragma GCC unroll 8
        for (int j = 0; j < NK; ++j) {
          const T* rr = ir + x0 + j * dil;
#pragma omp simd
          for (int i = 0; i < XB; ++i) part[j][i] += gr[x0 + i] * rr[i];
        }
      }
    }
  }
  T* out = gw + (kz * k + ky) * k + kx0;
  for (int j = 0; j < NK; ++j) {
    T s = 0;
    for (int i = 0; i < XB; ++i) s += part[j][i];
    out[j] += s;
  }
}

// All k^3 taps: per (kz, ky) the k kx taps in nearly equal groups of at most kCorrTaps (KC > 0: k
// fixed at compile time; otherwise groups of 4).
template <typename T, int BW, int KC>
void corr(const PadBuf<T>& g, const PadBuf<T>& in, int64_t k_rt, int64_t dil, T* gw) {
  const int64_t k = KC > 0 ? KC : k_rt;
  constexpr int NG = KC > 0 ? (KC + kCorrTaps<T> - 1) / kCorrTaps<T> : 1;
  constexpr int TG = KC > 0 ? (KC + NG - 1) / NG : 4;
  for (int64_t kz = 0; kz < k; ++kz)
    for (int64_t ky = 0; ky < k; ++ky)
      for (int64_t kx0 = 0; kx0 < k; kx0 += TG) {
        switch (std::min<int64_t>(TG, k - kx0)) {
          case 5: corr_taps<T, BW, std::min(5, TG)>(g, in, k, dil, kz, ky, kx0, gw); break;
          case 4: corr_taps<T, BW, std::min(4, TG)>(g, in, k, dil, kz, ky, kx0, gw); break;
          case 3: corr_taps<T, BW, std::min(3, TG)>(g, in, k, dil, kz, ky, kx0, gw); break;
          case 2: corr_taps<T, BW, std::min(2, TG)>(g, in, k, dil, kz, ky, kx0, gw); break;
          default: corr_taps<T, BW, 1>(g, in, k, dil, kz, ky, kx0, gw); break;
        }
      }
}

// Sum over the long rows of a channel volume: 64 lane-wise partial sums (8 independent vector chains
// on AVX2, enough to hide the add latency; common/vec.h's accumulate keeps 2 chains, for short rows).
template <typename T>
T vsum(const T* a, int64_t n) {
  constexpr int L = 64;
  T part[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
#pragma omp simd
    for (int j = 0; j < L; ++j) part[j] += a[i + j];
  T s = 0;
  for (; i < n; ++i) s += a[i];
  for (int j = 0; j < L; ++j) s += part[j];
  return s;
}


// row width -> SIMD block width BW: the narrowest of 8, 16, 32 lanes that covers a row and is at least
// one vector (wider rows take several blocks of 32)
#define MGNET_LKA_BW_SWITCH(T, W, NAME, ...)                                \
  [&] {                                                                     \
    if ((W) <= 8 && kVecLanes<T> <= 8) { constexpr int NAME = 8; return __VA_ARGS__(); }    \
    if ((W) <= 16 && kVecLanes<T> <= 16) { constexpr int NAME = 16; return __VA_ARGS__(); } \
    constexpr int NAME = 32;                                                \
    return __VA_ARGS__();                                                   \
  }()

template <typename T>
void dwconv_any(const PadBuf<T>& src, const T* w, T bias, int64_t k, int64_t dil, T* dst, int64_t dstride) {
  MGNET_LKA_BW_SWITCH(T, src.W, BW, [&] {
    MGNET_KSIZE_SWITCH(k, KC, [&] { dwconv<T, BW, KC>(src, w, bias, k, dil, dst, dstride); });
  });
}

template <typename T>
void corr_any(const PadBuf<T>& g, const PadBuf<T>& in, int64_t k, int64_t dil, T* gw) {
  MGNET_LKA_BW_SWITCH(T, g.W, BW, [&] { MGNET_KSIZE_SWITCH(k, KC, [&] { corr<T, BW, KC>(g, in, k, dil, gw); }); });
}

// Grain of an at::parallel_for: enough items that one chunk carries about `target` units of work
// (FMAs or elements). Small calls then run inline on the calling thread: on a loaded machine an
// OpenMP region can stall for a scheduler time slice (~5-10 ms) waiting for a preempted thread,
// far more than a sub-millisecond op costs serially.
inline int64_t grain_for(int64_t work_per_item, int64_t target) {
  return std::max<int64_t>(1, target / std::max<int64_t>(1, work_per_item));
}
constexpr int64_t kFmaPerChunk = int64_t(32) << 20;   // ~0.5-1 ms of one core
// Chunks of the (batch, channel) loops of the depthwise convolutions, pulled by the threads
// (common/parallel.h): a few ms of one core each, so that the per-chunk padded buffers cost nothing,
// and many per region, so that a thread preempted by another job leaves its share to the others.
constexpr int64_t kFmaPerTask = int64_t(8) << 20;
constexpr int64_t kElemsPerChunk = int64_t(2) << 20;  // ~8 MB of float traffic

struct Geo {
  int64_t B, C, D, H, W, N, k0, k1, dil, p0, p1;
};

inline Geo geometry(const at::Tensor& x, const at::Tensor& w0, const at::Tensor& w1, int64_t dil) {
  Geo g;
  g.B = x.size(0); g.C = x.size(1); g.D = x.size(2); g.H = x.size(3); g.W = x.size(4);
  g.N = g.D * g.H * g.W; g.k0 = w0.size(-1); g.k1 = w1.size(-1); g.dil = dil;
  g.p0 = g.k0 / 2; g.p1 = dil * (g.k1 - 1) / 2;
  return g;
}

// Batches per chunk: the chunk's scratch (a few C x N slabs) stays within ~8 MiB (L3), but at
// least enough (batch, channel) pairs to keep every thread busy.
inline int64_t batch_chunk(const Geo& g, size_t elem, int64_t slabs) {
  const int64_t per_batch = std::max<int64_t>(1, g.C * g.N * static_cast<int64_t>(elem) * slabs);
  int64_t bc = std::max<int64_t>(1, (int64_t(8) << 20) / per_batch);
  const int64_t need = (at::get_num_threads() + g.C - 1) / g.C;
  bc = std::max(bc, need);
  return std::min(bc, g.B);
}

// depthwise pair for batches [b0, b0+nb): a2 (nb, C, N) and optionally a1 (nb, C, N)
template <typename T>
void depthwise_pair(const Geo& g, const T* x, const T* w0, const T* bb0, const T* w1, const T* bb1,
                    int64_t b0, int64_t nb, T* a2, T* a1_out) {
  const int64_t work = g.N * (g.k0 * g.k0 * g.k0 + g.k1 * g.k1 * g.k1);
  mgnet::parallel_dynamic(nb * g.C, grain_for(work, kFmaPerTask), [&](int64_t s, int64_t e) {
    PadBuf<T> xin, a1;
    xin.init(g.D, g.H, g.W, g.p0);
    a1.init(g.D, g.H, g.W, g.p1);
    for (int64_t idx = s; idx < e; ++idx) {
      const int64_t b = idx / g.C, c = idx % g.C;
      xin.load(x + ((b0 + b) * g.C + c) * g.N);
      dwconv_any<T>(xin, w0 + c * g.k0 * g.k0 * g.k0, bb0[c], g.k0, 1, a1.data_row(0, 0), a1.Wp);
      if (a1_out) a1.store(a1_out + idx * g.N);
      dwconv_any<T>(a1, w1 + c * g.k1 * g.k1 * g.k1, bb1[c], g.k1, g.dil, a2 + idx * g.N, g.W);
    }
  });
}

template <typename T>
void lka3d_forward_impl(const Geo& g, const T* x, const T* w0, const T* bb0, const T* w1, const T* bb1,
                        const T* wp, const T* bp, T* out) {
  const int64_t bc = batch_chunk(g, sizeof(T), 1);
  std::vector<T> a2(static_cast<size_t>(bc * g.C * g.N));
  for (int64_t b0 = 0; b0 < g.B; b0 += bc) {
    const int64_t nb = std::min(bc, g.B - b0);
    depthwise_pair<T>(g, x, w0, bb0, w1, bb1, b0, nb, a2.data(), nullptr);
    pointwise<T>(a2.data(), wp, bp, out + b0 * g.C * g.N, nb, g.C, g.N);
  }
}

inline std::vector<int64_t> flip_index(int64_t C, int64_t kk) {
  std::vector<int64_t> idx(static_cast<size_t>(C * kk));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < kk; ++j) idx[c * kk + j] = c * kk + (kk - 1 - j);
  return idx;
}

// Gradients of lka3d. grad, x: (B, C, D, H, W). Outputs are written (not accumulated).
template <typename T>
void lka3d_backward_impl(const Geo& g, const T* grad, const T* x, const T* w0, const T* bb0, const T* w1,
                         const T* bb1, const T* wp, const T* bp, T* gx, T* gw0, T* gb0, T* gw1, T* gb1,
                         T* gwp, T* gbp) {
  (void)bp;
  const int64_t C = g.C, N = g.N, kk0 = g.k0 * g.k0 * g.k0, kk1 = g.k1 * g.k1 * g.k1;
  std::vector<T> w0f(static_cast<size_t>(C * kk0)), w1f(static_cast<size_t>(C * kk1)), wpt(static_cast<size_t>(C * C));
  {
    auto i0 = flip_index(C, kk0), i1 = flip_index(C, kk1);
    for (size_t i = 0; i < w0f.size(); ++i) w0f[i] = w0[i0[i]];
    for (size_t i = 0; i < w1f.size(); ++i) w1f[i] = w1[i1[i]];
    for (int64_t i = 0; i < C; ++i)
      for (int64_t j = 0; j < C; ++j) wpt[i * C + j] = wp[j * C + i];
  }
  const std::vector<T> zero_bias(static_cast<size_t>(C), T(0));
  const int64_t bc = batch_chunk(g, sizeof(T), 3);
  std::vector<T> A1(static_cast<size_t>(bc * C * N)), A2(A1.size()), G2(A1.size());
  std::vector<T> pw0(static_cast<size_t>(g.B * C * kk0), T(0)), pw1(static_cast<size_t>(g.B * C * kk1), T(0));
  std::vector<T> pb0(static_cast<size_t>(g.B * C), T(0)), pb1(pb0.size(), T(0));
  std::vector<T> pwp(static_cast<size_t>(g.B * C * C), T(0)), pbp(pb0.size(), T(0));

  for (int64_t b0 = 0; b0 < g.B; b0 += bc) {
    const int64_t nb = std::min(bc, g.B - b0);
    const T* gb = grad + b0 * C * N;
    depthwise_pair<T>(g, x, w0, bb0, w1, bb1, b0, nb, A2.data(), A1.data());
    // g_wp[b][co][ci] = <g[b][co], a2[b][ci]>, g_bp[b][co] = sum g[b][co]
    channel_dots<T>(gb, A2.data(), nb, C, N, pwp.data() + b0 * C * C);
    at::parallel_for(0, nb * C, grain_for(N, kElemsPerChunk), [&](int64_t s, int64_t e) {
      for (int64_t idx = s; idx < e; ++idx) pbp[b0 * C + idx] = vsum(gb + idx * N, N);
    });
    pointwise<T>(gb, wpt.data(), zero_bias.data(), G2.data(), nb, C, N);  // G2 = wp^T g
    mgnet::parallel_dynamic(nb * C, grain_for(2 * N * (kk0 + kk1), kFmaPerTask), [&](int64_t s, int64_t e) {
      PadBuf<T> g2, a1, g1, xin;
      g2.init(g.D, g.H, g.W, g.p1);
      a1.init(g.D, g.H, g.W, g.p1);
      g1.init(g.D, g.H, g.W, std::max(g.p0, g.p1));
      xin.init(g.D, g.H, g.W, g.p0);
      for (int64_t idx = s; idx < e; ++idx) {
        const int64_t b = idx / C, c = idx % C, bi = (b0 + b) * C + c;
        g2.load(G2.data() + idx * N);
        a1.load(A1.data() + idx * N);
        pb1[bi] = vsum(G2.data() + idx * N, N);
        corr_any<T>(g2, a1, g.k1, g.dil, pw1.data() + bi * kk1);
        dwconv_any<T>(g2, w1f.data() + c * kk1, T(0), g.k1, g.dil, g1.data_row(0, 0), g1.Wp);
        T s0 = 0;
        for (int64_t z = 0; z < g.D; ++z)
          for (int64_t y = 0; y < g.H; ++y) s0 += vsum(g1.data_row(z, y), g.W);
        pb0[bi] = s0;
        xin.load(x + bi * N);
        corr_any<T>(g1, xin, g.k0, 1, pw0.data() + bi * kk0);
        dwconv_any<T>(g1, w0f.data() + c * kk0, T(0), g.k0, 1, gx + bi * N, g.W);
      }
    });
  }
  // deterministic reduction over the batch
  auto reduce = [&](const std::vector<T>& part, T* dst, int64_t per) {
    for (int64_t i = 0; i < per; ++i) dst[i] = T(0);
    for (int64_t b = 0; b < g.B; ++b)
      for (int64_t i = 0; i < per; ++i) dst[i] += part[b * per + i];
  };
  reduce(pw0, gw0, C * kk0);
  reduce(pw1, gw1, C * kk1);
  reduce(pb0, gb0, C);
  reduce(pb1, gb1, C);
  reduce(pwp, gwp, C * C);
  reduce(pbp, gbp, C);
}

// ------------------------------------------------------------------ lsta pieces
// f[b][z][i] = mean_c e[b][z][c][i]; optionally ge[b][z][i] = sum_c g*e (one read of e and g)
template <typename T>
void lsta_mean(const T* e, const T* grad, T* f, T* ge, int64_t B, int64_t t, int64_t c, int64_t P) {
  at::parallel_for(0, B * t, grain_for(c * P, kElemsPerChunk), [&](int64_t s, int64_t en) {
    std::vector<T> acc(static_cast<size_t>(P)), acc2(static_cast<size_t>(P));
    const T inv = T(1) / T(c);
    for (int64_t bz = s; bz < en; ++bz) {
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(acc2.begin(), acc2.end(), T(0));
      const T* eb = e + bz * c * P;
      T* a = acc.data();
      T* a2 = acc2.data();
      if (grad) {
        const T* gbz = grad + bz * c * P;
        for (int64_t ci = 0; ci < c; ++ci) {
          const T* er = eb + ci * P;
          const T* gr = gbz + ci * P;
#pragma omp simd
          for (int64_t i = 0; i < P; ++i) { a[i] += er[i]; a2[i] += gr[i] * er[i]; }
        }
        std::memcpy(ge + bz * P, a2, sizeof(T) * P);
      } else {
        for (int64_t ci = 0; ci < c; ++ci) {
          const T* er = eb + ci * P;
#pragma omp simd
          for (int64_t i = 0; i < P; ++i) a[i] += er[i];
        }
      }
      for (int64_t i = 0; i < P; ++i) f[bz * P + i] = a[i] * inv;
    }
  });
}

template <typename T>
inline T sigmoid(T v) { return T(1) / (T(1) + std::exp(-v)); }

// out = e * (1 + sigmoid(f_o)) broadcast over c: one read and one write of e
template <typename T>
void lsta_gate(const T* e, const T* fo, T* out, int64_t B, int64_t t, int64_t c, int64_t P) {
  at::parallel_for(0, B * t, grain_for(c * P, kElemsPerChunk), [&](int64_t s, int64_t en) {
    std::vector<T> s1(static_cast<size_t>(P));
    for (int64_t bz = s; bz < en; ++bz) {
      for (int64_t i = 0; i < P; ++i) s1[i] = T(1) + sigmoid(fo[bz * P + i]);
      const T* sp = s1.data();
      for (int64_t ci = 0; ci < c; ++ci) {
        const T* er = e + (bz * c + ci) * P;
        T* orow = out + (bz * c + ci) * P;
#pragma omp simd
        for (int64_t i = 0; i < P; ++i) orow[i] = er[i] * sp[i];
      }
    }
  });
}

// g_e = g * (1 + sigmoid(f_o)) + g_f / c: one read of g and one write of g_e
template <typename T>
void lsta_gate_backward(const T* g, const T* fo, const T* gf, T* ge, int64_t B, int64_t t, int64_t c, int64_t P) {
  const T inv = T(1) / T(c);
  at::parallel_for(0, B * t, grain_for(c * P, kElemsPerChunk), [&](int64_t s, int64_t en) {
    std::vector<T> s1(static_cast<size_t>(P)), add(static_cast<size_t>(P));
    for (int64_t bz = s; bz < en; ++bz) {
      for (int64_t i = 0; i < P; ++i) {
        s1[i] = T(1) + sigmoid(fo[bz * P + i]);
        add[i] = gf[bz * P + i] * inv;
      }
      const T* sp = s1.data();
      const T* ap = add.data();
      for (int64_t ci = 0; ci < c; ++ci) {
        const T* gr = g + (bz * c + ci) * P;
        T* orow = ge + (bz * c + ci) * P;
#pragma omp simd
        for (int64_t i = 0; i < P; ++i) orow[i] = gr[i] * sp[i] + ap[i];
      }
    }
  });
}

// d out / d f_o summed over c, in place: gs = (sum_c g*e) * s * (1 - s)
template <typename T>
void lsta_gate_grad_fo(T* gs, const T* fo, int64_t M) {
  for (int64_t i = 0; i < M; ++i) {
    const T s = sigmoid(fo[i]);
    gs[i] = gs[i] * s * (T(1) - s);
  }
}

// ------------------------------------------------------------------ torch entry points
// The shared checks (lka3d_args.h) and the CPU's rules: float32 / float64, contiguous, one dtype.
void check_inputs(const char* op, const at::Tensor& x, const char* x_name, NamedTensors ws) {
  check_devices(op, /*cuda=*/false, x, x_name, ws);
  mgnet::check_cpu_float(x, x_name, op);
  TORCH_CHECK(x.is_contiguous(), op, ": ", x_name, " must be contiguous");
  for (const auto& [name, t] : ws) {
    TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous");
    mgnet::check_same_dtype(*t, name, x, x_name, op);
  }
}

at::Tensor lka3d_forward_cpu(const at::Tensor& x, const at::Tensor& w0, const at::Tensor& b0, const at::Tensor& w1,
                             const at::Tensor& b1, const at::Tensor& wp, const at::Tensor& bp, int64_t dilation) {
  check_inputs("lka3d_forward_cpu", x, "x", {{"w0", &w0}, {"b0", &b0}, {"w1", &w1}, {"b1", &b1}, {"wp", &wp}, {"bp", &bp}});
  check_weights("lka3d_forward_cpu", x.size(1), w0, b0, w1, b1, wp, bp, dilation);
  auto out = mgnet::empty_like_cached(x);  // x is contiguous (checked)
  if (x.numel() == 0) return out;
  const Geo g = geometry(x, w0, w1, dilation);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lka3d_forward_cpu", [&] {
    lka3d_forward_impl<scalar_t>(g, x.data_ptr<scalar_t>(), w0.data_ptr<scalar_t>(), b0.data_ptr<scalar_t>(),
                                 w1.data_ptr<scalar_t>(), b1.data_ptr<scalar_t>(), wp.data_ptr<scalar_t>(),
                                 bp.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<at::Tensor> lka3d_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w0,
                                           const at::Tensor& b0, const at::Tensor& w1, const at::Tensor& b1,
                                           const at::Tensor& wp, const at::Tensor& bp, int64_t dilation) {
  check_inputs("lka3d_backward_cpu", x, "x",
               {{"grad", &grad}, {"w0", &w0}, {"b0", &b0}, {"w1", &w1}, {"b1", &b1}, {"wp", &wp}, {"bp", &bp}});
  TORCH_CHECK(grad.sizes() == x.sizes(), "lka3d_backward_cpu: grad must have x's shape");
  check_weights("lka3d_backward_cpu", x.size(1), w0, b0, w1, b1, wp, bp, dilation);
  auto gx = mgnet::empty_like_cached(x);
  auto gw0 = at::zeros_like(w0), gb0 = at::zeros_like(b0), gw1 = at::zeros_like(w1), gb1 = at::zeros_like(b1);
  auto gwp = at::zeros_like(wp), gbp = at::zeros_like(bp);
  if (x.numel() == 0) return {gx, gw0, gb0, gw1, gb1, gwp, gbp};
  const Geo g = geometry(x, w0, w1, dilation);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lka3d_backward_cpu", [&] {
    lka3d_backward_impl<scalar_t>(g, grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w0.data_ptr<scalar_t>(),
                                  b0.data_ptr<scalar_t>(), w1.data_ptr<scalar_t>(), b1.data_ptr<scalar_t>(),
                                  wp.data_ptr<scalar_t>(), bp.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                                  gw0.data_ptr<scalar_t>(), gb0.data_ptr<scalar_t>(), gw1.data_ptr<scalar_t>(),
                                  gb1.data_ptr<scalar_t>(), gwp.data_ptr<scalar_t>(), gbp.data_ptr<scalar_t>());
  });
  return {gx, gw0, gb0, gw1, gb1, gwp, gbp};
}

at::Tensor lsta_forward_cpu(const at::Tensor& e, const at::Tensor& w0, const at::Tensor& b0, const at::Tensor& w1,
                            const at::Tensor& b1, const at::Tensor& wp, const at::Tensor& bp, int64_t dilation) {
  check_inputs("lsta_forward_cpu", e, "e", {{"w0", &w0}, {"b0", &b0}, {"w1", &w1}, {"b1", &b1}, {"wp", &wp}, {"bp", &bp}});
  check_weights("lsta_forward_cpu", 1, w0, b0, w1, b1, wp, bp, dilation);
  auto out = mgnet::empty_like_cached(e);  // e is contiguous (checked)
  if (e.numel() == 0) return out;
  const int64_t B = e.size(0), t = e.size(1), c = e.size(2), h = e.size(3), w = e.size(4), P = h * w;
  auto f = at::empty({B, 1, t, h, w}, e.options());
  auto fo = at::empty_like(f);
  const Geo g = geometry(f, w0, w1, dilation);
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "lsta_forward_cpu", [&] {
    const scalar_t* ep = e.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    lsta_mean<scalar_t>(ep, nullptr, f.data_ptr<scalar_t>(), nullptr, B, t, c, P);
    lka3d_forward_impl<scalar_t>(g, f.data_ptr<scalar_t>(), w0.data_ptr<scalar_t>(), b0.data_ptr<scalar_t>(),
                                 w1.data_ptr<scalar_t>(), b1.data_ptr<scalar_t>(), wp.data_ptr<scalar_t>(),
                                 bp.data_ptr<scalar_t>(), fo.data_ptr<scalar_t>());
    lsta_gate<scalar_t>(ep, fo.data_ptr<scalar_t>(), op, B, t, c, P);
  });
  return out;
}

std::vector<at::Tensor> lsta_backward_cpu(const at::Tensor& grad, const at::Tensor& e, const at::Tensor& w0,
                                          const at::Tensor& b0, const at::Tensor& w1, const at::Tensor& b1,
                                          const at::Tensor& wp, const at::Tensor& bp, int64_t dilation) {
  check_inputs("lsta_backward_cpu", e, "e",
               {{"grad", &grad}, {"w0", &w0}, {"b0", &b0}, {"w1", &w1}, {"b1", &b1}, {"wp", &wp}, {"bp", &bp}});
  TORCH_CHECK(grad.sizes() == e.sizes(), "lsta_backward_cpu: grad must have e's shape");
  check_weights("lsta_backward_cpu", 1, w0, b0, w1, b1, wp, bp, dilation);
  auto ge = mgnet::empty_like_cached(e);
  auto gw0 = at::zeros_like(w0), gb0 = at::zeros_like(b0), gw1 = at::zeros_like(w1), gb1 = at::zeros_like(b1);
  auto gwp = at::zeros_like(wp), gbp = at::zeros_like(bp);
  if (e.numel() == 0) return {ge, gw0, gb0, gw1, gb1, gwp, gbp};
  const int64_t B = e.size(0), t = e.size(1), c = e.size(2), h = e.size(3), w = e.size(4), P = h * w;
  auto f = at::empty({B, 1, t, h, w}, e.options());
  auto fo = at::empty_like(f), gsum = at::empty_like(f), gf = at::empty_like(f);
  const Geo g = geometry(f, w0, w1, dilation);
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "lsta_backward_cpu", [&] {
    const scalar_t* ep = e.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    lsta_mean<scalar_t>(ep, gp, f.data_ptr<scalar_t>(), gsum.data_ptr<scalar_t>(), B, t, c, P);
    lka3d_forward_impl<scalar_t>(g, f.data_ptr<scalar_t>(), w0.data_ptr<scalar_t>(), b0.data_ptr<scalar_t>(),
                                 w1.data_ptr<scalar_t>(), b1.data_ptr<scalar_t>(), wp.data_ptr<scalar_t>(),
                                 bp.data_ptr<scalar_t>(), fo.data_ptr<scalar_t>());
    scalar_t* gsp = gsum.data_ptr<scalar_t>();
    const scalar_t* fop = fo.data_ptr<scalar_t>();
    lsta_gate_grad_fo<scalar_t>(gsp, fop, B * t * P);
    lka3d_backward_impl<scalar_t>(g, gsp, f.data_ptr<scalar_t>(), w0.data_ptr<scalar_t>(), b0.data_ptr<scalar_t>(),
                                  w1.data_ptr<scalar_t>(), b1.data_ptr<scalar_t>(), wp.data_ptr<scalar_t>(),
                                  bp.data_ptr<scalar_t>(), gf.data_ptr<scalar_t>(), gw0.data_ptr<scalar_t>(),
                                  gb0.data_ptr<scalar_t>(), gw1.data_ptr<scalar_t>(), gb1.data_ptr<scalar_t>(),
                                  gwp.data_ptr<scalar_t>(), gbp.data_ptr<scalar_t>());
    lsta_gate_backward<scalar_t>(gp, fop, gf.data_ptr<scalar_t>(), ge.data_ptr<scalar_t>(), B, t, c, P);
  });
  return {ge, gw0, gb0, gw1, gb1, gwp, gbp};
}

}  // namespace mgnet_lka3d

TORCH_LIBRARY_FRAGMENT(mgnet_C, m) {
  m.def("lka3d_forward_cpu", &mgnet_lka3d::lka3d_forward_cpu);
  m.def("lka3d_backward_cpu", &mgnet_lka3d::lka3d_backward_cpu);
  m.def("lsta_forward_cpu", &mgnet_lka3d::lsta_forward_cpu);
  m.def("lsta_backward_cpu", &mgnet_lka3d::lsta_backward_cpu);
}
