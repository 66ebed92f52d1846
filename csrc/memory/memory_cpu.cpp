// Fused memory cosine addressing on the CPU (mgnet.ops.memory_address, paper eq. 7).
//
//   score   = normalize(q) @ normalize(mem).T    normalize(v) = v / max(||v||, eps), eps = 1e-12
//   weights = softmax(score, dim=1);  read = weights @ mem;  top2 = two best slots (ties -> lower index)
//
// Forward, one pass over q:
//   A. per query tile (TQ rows; threads own contiguous runs of tiles): dot products against every slot
//      (TQ x SB register-blocked accumulators, vectorised over the width, reduced with a shuffle tree),
//      query norms on the fly, cosine scores from the slot norms computed once, safe softmax (max
//      subtracted, vectorised exp), top-2 (strict >, so ties keep the lower index), weights written;
//   B. read = weights @ mem, parallel over (width chunk, query tile) so that few-query / wide-row problems
//      (BSMM: 256 x 5130 against 50 slots) use every core and keep a chunk of mem in cache.
// Backward (grads of q and mem; top2 has none). With gW = grad_weights + grad_read @ mem.T,
//   gs = W * (gW - sum_s W gW) (softmax), b = gs / (|q|_eps |m|_eps):
//   grad_q   = b @ mem - beta_n q,                   beta_n  = [||q_n|| >= eps] sum_s gs*score / |q_n|_eps^2
//   grad_mem = W.T @ grad_read + b.T @ q - gamma_s mem, gamma_s = [||m_s|| >= eps] sum_n gs*score / |m_s|_eps^2
//   (the bracket is where F.normalize's clamp_min passes its gradient: a row below eps gets g / eps).
//   The scores are not recomputed (that would cost a third N x S x C product): softmax gives
//   score_s = log W_s + lse, and lse follows from one slot, lse = score_s0 - log W_s0, with s0 the row's
//   most likely slot (best conditioned), i.e. one dot product per query instead of S.
//   A. per query tile: grad_read . mem for every slot, the softmax grad, b, grad_q; when S*C is small
//      the tile's contribution to grad_mem goes into a per-thread partial while q and grad_read are in
//      L1, otherwise
//   B. grad_mem is computed parallel over width chunks (each thread owns columns, no reduction).
//
// Vectors are GCC/Clang vector extensions of 64 bytes (one AVX-512 register under -march=native, split
// into narrower registers otherwise); float, and double for gradcheck (scalar exp/log there).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

constexpr double kEps = 1e-12;  // mgnet.ops.memory.EPS (F.normalize's eps)
constexpr int TQ = 4;           // queries per tile
constexpr int SB = 4;           // slots per register block of the dot products
constexpr int CV = 4;           // vectors per register block of the slot combinations (read, grad_q)
constexpr int64_t CW = 512;     // width chunk (elements) of the parallel read

typedef float vfloat __attribute__((vector_size(64)));
typedef double vdouble __attribute__((vector_size(64)));
typedef int32_t vint __attribute__((vector_size(64)));
typedef float vfloat_u __attribute__((vector_size(64), aligned(4), may_alias));
typedef double vdouble_u __attribute__((vector_size(64), aligned(8), may_alias));

template <typename T> struct VecOf;
template <> struct VecOf<float> { using type = vfloat; using unaligned = vfloat_u; };
template <> struct VecOf<double> { using type = vdouble; using unaligned = vdouble_u; };
template <typename T> using Vec = typename VecOf<T>::type;
template <typename T> constexpr int lanes() { return int(sizeof(Vec<T>) / sizeof(T)); }

// A load the compiler keeps in a register (otherwise GCC folds it into every FMA that uses it and
// the inner loops become load-bound).
template <typename T> inline Vec<T> vload(const T* p) {
  Vec<T> v = *reinterpret_cast<const typename VecOf<T>::unaligned*>(p);
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+v"(v));
#endif
  return v;
}
template <typename T> inline Vec<T> vloadf(const T* p) {  // foldable load
  return *reinterpret_cast<const typename VecOf<T>::unaligned*>(p);
}
template <typename T> inline void vstore(T* p, Vec<T> v) { *reinterpret_cast<typename VecOf<T>::unaligned*>(p) = v; }
template <typename T> inline Vec<T> vzero() { return Vec<T>{}; }
template <typename T> inline Vec<T> vbcast(T x) { return vzero<T>() + x; }
template <typename T> inline T hsum(Vec<T> v) {
  T s = 0;
  for (int l = 0; l < lanes<T>(); ++l) s += v[l];
  return s;
}

// Horizontal sums of lanes() vectors at once: lane k of the result = sum of a[k] (shuffle tree).
inline vfloat reduce_lanes(const vfloat* a) {
  vfloat t[8], u[4], v[2];
  for (int k = 0; k < 8; ++k)
    t[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int k = 0; k < 4; ++k)
    u[k] = __builtin_shufflevector(t[2 * k], t[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(t[2 * k], t[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int k = 0; k < 2; ++k)
    v[k] = __builtin_shufflevector(u[2 * k], u[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(u[2 * k], u[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(v[0], v[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(v[0], v[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
inline vdouble reduce_lanes(const vdouble* a) {
  vdouble t[4], u[2];
  for (int k = 0; k < 4; ++k)
    t[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  for (int k = 0; k < 2; ++k)
    u[k] = __builtin_shufflevector(t[2 * k], t[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(t[2 * k], t[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  return __builtin_shufflevector(u[0], u[1], 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(u[0], u[1], 1, 3, 5, 7, 9, 11, 13, 15);
}

// exp / log on whole vectors. float: Cephes expf / logf (about 1 ulp), double: libm per lane.
inline vfloat vexp(vfloat x) {
  const vfloat lo = vbcast<float>(-87.33f), hi = vbcast<float>(88.37f);
  vfloat xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const vfloat magic = vbcast<float>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vfloat f = xc * 1.44269504088896341f + magic;
  vfloat n = f - magic;
  vfloat r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vfloat p = vbcast<float>(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * (r * r) + r + 1.0f;
  vint ni = (vint)f - (vint)magic;
  vfloat scale = (vfloat)((ni + 127) << 23);
  vfloat res = p * scale;
  return x < lo ? vzero<float>() : res;  // exp(-inf) = 0; NaN propagates
}
inline vdouble vexp(vdouble x) {
  for (int l = 0; l < 8; ++l) x[l] = std::exp(x[l]);
  return x;
}
inline vfloat vlog(vfloat x) {  // x > 0, normal
  vint xi = (vint)x;
  vint e = ((xi >> 23) & 0xff) - 126;
  vfloat m = (vfloat)((xi & 0x807fffff) | 0x3f000000);  // x = m * 2^e, m in [0.5, 1)
  vfloat ef = __builtin_convertvector(e, vfloat);
  vint small = m < 0.707106781186547524f;
  ef = ef + __builtin_convertvector(small, vfloat);  // -1 where small
  m = small ? m + m - 1.0f : m - 1.0f;
  vfloat z = m * m;
  vfloat y = vbcast<float>(7.0376836292E-2f);
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  y = y + ef * -2.12194440e-4f;
  y = y + z * -0.5f;
  return m + y + ef * 0.693359375f;
}
inline vdouble vlog(vdouble x) {
  for (int l = 0; l < 8; ++l) x[l] = std::log(x[l]);
  return x;
}

template <typename T>
inline T sqnorm(const T* x, int64_t C) {
  constexpr int L = lanes<T>();
  Vec<T> a0 = vzero<T>(), a1 = vzero<T>();
  int64_t c = 0;
  for (; c + 2 * L <= C; c += 2 * L) {
    Vec<T> x0 = vloadf(x + c), x1 = vloadf(x + c + L);
    a0 += x0 * x0;
    a1 += x1 * x1;
  }
  for (; c + L <= C; c += L) { Vec<T> x0 = vloadf(x + c); a0 += x0 * x0; }
  T s = hsum<T>(a0 + a1);
  for (; c < C; ++c) s += x[c] * x[c];
  return s;
}

template <typename T>
inline T dot(const T* x, const T* y, int64_t C) {
  constexpr int L = lanes<T>();
  Vec<T> a0 = vzero<T>(), a1 = vzero<T>();
  int64_t c = 0;
  for (; c + 2 * L <= C; c += 2 * L) {
    a0 += vloadf(x + c) * vloadf(y + c);
    a1 += vloadf(x + c + L) * vloadf(y + c + L);
  }
  for (; c + L <= C; c += L) a0 += vloadf(x + c) * vloadf(y + c);
  T s = hsum<T>(a0 + a1);
  for (; c < C; ++c) s += x[c] * y[c];
  return s;
}

// --------------------------------------------------------------------------- dot products
// out[i * lds + j] = x_i . m_j for NQ rows of x (row stride C) and NS slots.
template <typename T, int NQ, int NS>
inline void dots_block(const T* x, const T* m, int64_t C, T* out, int64_t lds) {
  constexpr int L = lanes<T>();
  constexpr int NA = NQ * NS;
  constexpr int NR = (NA + L - 1) / L;
  Vec<T> acc[NR * L];
#pragma GCC unroll 16
  for (int a = 0; a < NR * L; ++a) acc[a] = vzero<T>();
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    Vec<T> xv[NQ];
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) xv[i] = vload(x + i * C + c);
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) {
      Vec<T> mv = vload(m + j * C + c);
#pragma GCC unroll 8
      for (int i = 0; i < NQ; ++i) acc[i * NS + j] += xv[i] * mv;
    }
  }
  T sums[NR * L];
  for (int r = 0; r < NR; ++r) vstore(sums + r * L, reduce_lanes(acc + r * L));
  for (int i = 0; i < NQ; ++i)
    for (int j = 0; j < NS; ++j) {
      T s = sums[i * NS + j];
      for (int64_t k = c; k < C; ++k) s += x[i * C + k] * m[j * C + k];
      out[i * lds + j] = s;
    }
}

// All slots against NQ rows: out[i * lds + s].
template <typename T, int NQ>
void dots_tile(const T* x, const T* mem, int64_t S, int64_t C, T* out, int64_t lds) {
  int64_t s = 0;
  for (; s + SB <= S; s += SB) dots_block<T, NQ, SB>(x, mem + s * C, C, out + s, lds);
  switch (S - s) {
    case 3: dots_block<T, NQ, 3>(x, mem + s * C, C, out + s, lds); break;
    case 2: dots_block<T, NQ, 2>(x, mem + s * C, C, out + s, lds); break;
    case 1: dots_block<T, NQ, 1>(x, mem + s * C, C, out + s, lds); break;
    default: break;
  }
}

// --------------------------------------------------------------------------- combination of slots
// out_i[c] = sum_s A[i * lda + s] * mem[s][c] (+ beta_i * x_i[c] when HASX), NV vectors at c.
template <typename T, int NQ, int NV, bool HASX>
inline void combine_block(const T* A, int64_t lda, const T* mem, int64_t S, int64_t C, int64_t c,
                          const T* x, const T* beta, T* out) {
  constexpr int L = lanes<T>();
  Vec<T> acc[NQ][NV];
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = HASX ? vbcast<T>(beta[i]) * vloadf(x + i * C + c + v * L) : vzero<T>();
  for (int64_t s = 0; s < S; ++s) {
    Vec<T> mv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) mv[v] = vload(mem + s * C + c + v * L);
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) {
      Vec<T> a = vbcast<T>(A[i * lda + s]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] += a * mv[v];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) vstore(out + i * C + c + v * L, acc[i][v]);
}

template <typename T, int NQ, bool HASX>
void combine_tile(const T* A, int64_t lda, const T* mem, int64_t S, int64_t C, int64_t c0, int64_t c1,
                  const T* x, const T* beta, T* out) {
  constexpr int L = lanes<T>();
  int64_t c = c0;
  for (; c + CV * L <= c1; c += CV * L) combine_block<T, NQ, CV, HASX>(A, lda, mem, S, C, c, x, beta, out);
  for (; c + L <= c1; c += L) combine_block<T, NQ, 1, HASX>(A, lda, mem, S, C, c, x, beta, out);
  for (; c < c1; ++c)
    for (int i = 0; i < NQ; ++i) {
      T acc = HASX ? beta[i] * x[i * C + c] : T(0);
      for (int64_t s = 0; s < S; ++s) acc += A[i * lda + s] * mem[s * C + c];
      out[i * C + c] = acc;
    }
}

// --------------------------------------------------------------------------- grad of mem
// part[s][c] += sum_i W[i * ld + s] * g_i[c] + B[i * ld + s] * q_i[c]   (NQ rows of one tile)
template <typename T, int NQ>
void gmem_accumulate(const T* W, const T* B, int64_t ld, const T* g, const T* q, int64_t S, int64_t C, T* part) {
  constexpr int L = lanes<T>();
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    Vec<T> gv[NQ], qv[NQ];
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) { gv[i] = vload(g + i * C + c); qv[i] = vload(q + i * C + c); }
    for (int64_t s = 0; s < S; ++s) {
      Vec<T> acc = vloadf(part + s * C + c);
#pragma GCC unroll 8
      for (int i = 0; i < NQ; ++i) {  // two separate updates: two FMAs (a + (x + y) would be mul, fma, add)
        acc += vbcast<T>(W[i * ld + s]) * gv[i];
        acc += vbcast<T>(B[i * ld + s]) * qv[i];
      }
      vstore(part + s * C + c, acc);
    }
  }
  for (; c < C; ++c)
    for (int64_t s = 0; s < S; ++s) {
      T acc = part[s * C + c];
      for (int i = 0; i < NQ; ++i) acc += W[i * ld + s] * g[i * C + c] + B[i * ld + s] * q[i * C + c];
      part[s * C + c] = acc;
    }
}

// out[s][c] = sum_n W[n][s] g_n[c] + B[n][s] q_n[c] - gamma_s mem_s[c] for NS slots, NV vectors at c.
template <typename T, int NS, int NV>
inline void gmem_block(const T* W, const T* B, const T* g, const T* q, const T* mem, const T* gamma,
                       int64_t N, int64_t S, int64_t C, int64_t s0, int64_t c, T* out) {
  constexpr int L = lanes<T>();
  Vec<T> acc[NS][NV];
#pragma GCC unroll 8
  for (int j = 0; j < NS; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[j][v] = -vbcast<T>(gamma[s0 + j]) * vloadf(mem + (s0 + j) * C + c + v * L);
  for (int64_t n = 0; n < N; ++n) {
    Vec<T> gv[NV], qv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) { gv[v] = vload(g + n * C + c + v * L); qv[v] = vload(q + n * C + c + v * L); }
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) {
      Vec<T> w = vbcast<T>(W[n * S + s0 + j]), b = vbcast<T>(B[n * S + s0 + j]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {  // two FMAs, not mul + fma + add
        acc[j][v] += w * gv[v];
        acc[j][v] += b * qv[v];
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NS; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) vstore(out + (s0 + j) * C + c + v * L, acc[j][v]);
}

template <typename T, int NS>
void gmem_columns(const T* W, const T* B, const T* g, const T* q, const T* mem, const T* gamma,
                  int64_t N, int64_t S, int64_t C, int64_t s0, int64_t c0, int64_t c1, T* out) {
  constexpr int L = lanes<T>();
  int64_t c = c0;
  for (; c + 4 * L <= c1; c += 4 * L) gmem_block<T, NS, 4>(W, B, g, q, mem, gamma, N, S, C, s0, c, out);
  for (; c + L <= c1; c += L) gmem_block<T, NS, 1>(W, B, g, q, mem, gamma, N, S, C, s0, c, out);
  for (; c < c1; ++c)
    for (int j = 0; j < NS; ++j) {
      int64_t s = s0 + j;
      T acc = -gamma[s] * mem[s * C + c];
      for (int64_t n = 0; n < N; ++n) acc += W[n * S + s] * g[n * C + c] + B[n * S + s] * q[n * C + c];
      out[s * C + c] = acc;
    }
}

// --------------------------------------------------------------------------- helpers
#define MGNET_MEM_TILE_SWITCH(nq, CALL)              \
  switch (nq) {                                      \
    case 4: { constexpr int NQ = 4; CALL; break; }   \
    case 3: { constexpr int NQ = 3; CALL; break; }   \
    case 2: { constexpr int NQ = 2; CALL; break; }   \
    default: { constexpr int NQ = 1; CALL; break; }  \
  }
static_assert(TQ == 4, "MGNET_MEM_TILE_SWITCH covers tiles of up to 4 queries");

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Contiguous runs of tiles, one per thread (deterministic partials for the reductions).
inline int64_t num_chunks(int64_t ntiles) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntiles));
}

// Slot norms: mn = max(||m||, eps) (and the raw norm, for the gradient's clamp test); inv_mn is
// padded with zeros to a multiple of the vector width.
template <typename T>
void slot_norms(const T* mem, int64_t S, int64_t C, T* mn, T* mraw, T* inv_mn) {
  // one parallel region fewer for the usual sizes: every region is a barrier, and on a busy machine a
  // barrier can wait a whole scheduler time slice
  at::parallel_for(0, S, S * C <= (int64_t(1) << 20) ? S : std::max<int64_t>(1, 65536 / std::max<int64_t>(C, 1)),
                   [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; ++s) {
      T r = std::sqrt(sqnorm(mem + s * C, C));
      mraw[s] = r;
      mn[s] = std::max(r, T(kEps));
      inv_mn[s] = T(1) / mn[s];
    }
  });
}

// --------------------------------------------------------------------------- forward
template <typename T>
void forward_impl(const T* q, const T* mem, int64_t N, int64_t S, int64_t C, T* W, T* read, int64_t* top2) {
  constexpr int L = lanes<T>();
  const int64_t Sp = round_up(S, L);
  std::vector<T> mn(S), mraw(S), inv_mn(Sp, T(0));
  slot_norms(mem, S, C, mn.data(), mraw.data(), inv_mn.data());

  const int64_t ntiles = (N + TQ - 1) / TQ;
  const int64_t nch = num_chunks(ntiles);
  // with enough tiles per thread the read is computed right after the tile's weights (one sweep, one
  // parallel region); with few queries it is split over the width afterwards
  const bool fused_read = ntiles >= 4 * at::get_num_threads();
  at::parallel_for(0, nch, 1, [&](int64_t cb, int64_t ce) {
    std::vector<T> sc(TQ * Sp);
    for (int64_t ch = cb; ch < ce; ++ch) {
      for (int64_t t = ntiles * ch / nch; t < ntiles * (ch + 1) / nch; ++t) {
        const int64_t n0 = t * TQ, nq = std::min<int64_t>(TQ, N - n0);
        const T* qt = q + n0 * C;
        MGNET_MEM_TILE_SWITCH(nq, (dots_tile<T, NQ>(qt, mem, S, C, sc.data(), Sp)));
        for (int64_t i = 0; i < nq; ++i) {
          T* r = sc.data() + i * Sp;
          const T inv_qn = T(1) / std::max(std::sqrt(sqnorm(qt + i * C, C)), T(kEps));
          for (int64_t s = 0; s < Sp; s += L) vstore(r + s, vloadf(r + s) * inv_qn * vloadf(inv_mn.data() + s));
          T v1 = r[0], v2 = -std::numeric_limits<T>::infinity();
          int64_t i1 = 0, i2 = 0;
          for (int64_t s = 1; s < S; ++s) {  // strict '>': an equal score keeps the lower index
            const T v = r[s];
            if (v > v1) { v2 = v1; i2 = i1; v1 = v; i1 = s; }
            else if (v > v2) { v2 = v; i2 = s; }
          }
          const T mx = v1;  // the row's maximum: the softmax subtracts it
          Vec<T> sum = vzero<T>();
          for (int64_t s = 0; s < Sp; s += L) {
            Vec<T> e = vexp(vloadf(r + s) - mx);
            if (s + L > S)
              for (int64_t l = S - s; l < L; ++l) e[l] = 0;
            vstore(r + s, e);
            sum += e;
          }
          const T inv = T(1) / hsum<T>(sum);
          T* w = W + (n0 + i) * S;
          int64_t s = 0;
          for (; s + L <= S; s += L) vstore(w + s, vloadf(r + s) * inv);
          for (; s < S; ++s) w[s] = r[s] * inv;
          top2[(n0 + i) * 2] = i1;
          top2[(n0 + i) * 2 + 1] = S == 1 ? 0 : i2;
        }
        if (fused_read)
          MGNET_MEM_TILE_SWITCH(nq, (combine_tile<T, NQ, false>(W + n0 * S, S, mem, S, C, 0, C, nullptr, nullptr,
                                                                read + n0 * C)));
      }
    }
  });
  if (fused_read) return;

  // read = W @ mem over (width chunk, tile): a thread keeps its chunk of mem in cache across tiles
  const int64_t ncc = std::max<int64_t>(1, (C + CW - 1) / CW);
  at::parallel_for(0, ntiles * ncc, 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t cc = u / ntiles, t = u % ntiles;
      const int64_t n0 = t * TQ, nq = std::min<int64_t>(TQ, N - n0);
      const int64_t c0 = cc * CW, c1 = std::min<int64_t>(C, c0 + CW);
      MGNET_MEM_TILE_SWITCH(nq, (combine_tile<T, NQ, false>(W + n0 * S, S, mem, S, C, c0, c1, nullptr, nullptr,
                                                            read + n0 * C)));
    }
  });
}

// --------------------------------------------------------------------------- backward
template <typename T>
void backward_impl(const T* gW, const T* gR, const T* q, const T* mem, const T* W, int64_t N, int64_t S,
                   int64_t C, T* gq, T* gm) {
  constexpr int L = lanes<T>();
  const int64_t Sp = round_up(S, L);
  std::vector<T> mn(S), mraw(S), inv_mn(Sp, T(0));
  slot_norms(mem, S, C, mn.data(), mraw.data(), inv_mn.data());

  const int64_t ntiles = (N + TQ - 1) / TQ;
  const int64_t nch = num_chunks(ntiles);
  // grad_mem strategy: per-chunk partials fused into the query sweep when a partial stays in L2 (it is
  // read and written once per tile) and each chunk has many tiles; otherwise a second sweep parallel
  // over the width.
  const bool fused_gm = S * C * int64_t(sizeof(T)) <= 128 * 1024 && ntiles >= 4 * nch;
  std::vector<T> B(fused_gm ? 0 : N * S);                    // b, for the width sweep
  std::vector<T> gamma_part(nch * Sp, T(0));                 // sum_n gs*score per chunk
  std::vector<T> gm_part(fused_gm ? nch * S * C : 0, T(0));  // grad_mem partials per chunk
  const T tiny = std::numeric_limits<T>::min();

  at::parallel_for(0, nch, 1, [&](int64_t cb, int64_t ce) {
    std::vector<T> gd(TQ * Sp), wt(TQ * Sp, T(0)), bt(TQ * Sp, T(0));
    T beta[TQ];
    for (int64_t ch = cb; ch < ce; ++ch) {
      T* gpart = gamma_part.data() + ch * Sp;
      for (int64_t t = ntiles * ch / nch; t < ntiles * (ch + 1) / nch; ++t) {
        const int64_t n0 = t * TQ, nq = std::min<int64_t>(TQ, N - n0);
        const T* qt = q + n0 * C;
        const T* gt = gR + n0 * C;
        MGNET_MEM_TILE_SWITCH(nq, (dots_tile<T, NQ>(gt, mem, S, C, gd.data(), Sp)));
        for (int64_t i = 0; i < nq; ++i) {
          const T* w_in = W + (n0 + i) * S;
          const T* gw_in = gW + (n0 + i) * S;
          T* w = wt.data() + i * Sp;
          T* g = gd.data() + i * Sp;
          T* b = bt.data() + i * Sp;
          int64_t s0 = 0;
          for (int64_t s = 0; s < S; ++s) {
            w[s] = w_in[s];
            g[s] += gw_in[s];
            if (w[s] > w[s0]) s0 = s;
          }
          for (int64_t s = S; s < Sp; ++s) { w[s] = 0; g[s] = 0; }
          const T qraw = std::sqrt(sqnorm(qt + i * C, C));
          const T qn = std::max(qraw, T(kEps));
          const T inv_qn = T(1) / qn;
          // lse of the row's softmax from its best slot: score_s = log W_s + lse
          const T lse = dot(qt + i * C, mem + s0 * C, C) * inv_qn * inv_mn[s0] - std::log(w[s0]);
          Vec<T> d = vzero<T>();
          for (int64_t s = 0; s < Sp; s += L) d += vloadf(w + s) * vloadf(g + s);
          const T wg = hsum<T>(d);
          Vec<T> ss = vzero<T>();
          for (int64_t s = 0; s < Sp; s += L) {
            Vec<T> wv = vloadf(w + s);
            Vec<T> gs = wv * (vloadf(g + s) - wg);
            Vec<T> wl = wv < tiny ? vbcast<T>(tiny) : wv;  // padding lanes have w = 0 (and gs = 0)
            Vec<T> score = vlog(wl) + lse;
            Vec<T> gsc = gs * score;
            ss += gsc;
            vstore(gpart + s, vloadf(gpart + s) + gsc);
            vstore(b + s, gs * inv_qn * vloadf(inv_mn.data() + s));
          }
          beta[i] = qraw >= T(kEps) ? -hsum<T>(ss) * inv_qn * inv_qn : T(0);
        }
        MGNET_MEM_TILE_SWITCH(nq, (combine_tile<T, NQ, true>(bt.data(), Sp, mem, S, C, 0, C, qt, beta, gq + n0 * C)));
        if (fused_gm) {
          MGNET_MEM_TILE_SWITCH(nq, (gmem_accumulate<T, NQ>(wt.data(), bt.data(), Sp, gt, qt, S, C,
                                                            gm_part.data() + ch * S * C)));
        } else {
          for (int64_t i = 0; i < nq; ++i) std::memcpy(B.data() + (n0 + i) * S, bt.data() + i * Sp, sizeof(T) * S);
        }
      }
    }
  });

  std::vector<T> gamma(S);
  for (int64_t s = 0; s < S; ++s) {
    T acc = 0;
    for (int64_t ch = 0; ch < nch; ++ch) acc += gamma_part[ch * Sp + s];
    gamma[s] = mraw[s] >= T(kEps) ? acc * inv_mn[s] * inv_mn[s] : T(0);
  }

  if (fused_gm) {
    at::parallel_for(0, S, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t b, int64_t e) {
      for (int64_t s = b; s < e; ++s)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t k = s * C + c;
          T acc = -gamma[s] * mem[k];
          for (int64_t ch = 0; ch < nch; ++ch) acc += gm_part[ch * S * C + k];
          gm[k] = acc;
        }
    });
  } else {
    const int64_t cw = 4 * L;
    const int64_t ncc = std::max<int64_t>(1, (C + cw - 1) / cw);
    at::parallel_for(0, ncc, 1, [&](int64_t b, int64_t e) {
      for (int64_t cc = b; cc < e; ++cc) {
        const int64_t c0 = cc * cw, c1 = std::min<int64_t>(C, c0 + cw);
        int64_t s = 0;
        for (; s + 4 <= S; s += 4) gmem_columns<T, 4>(W, B.data(), gR, q, mem, gamma.data(), N, S, C, s, c0, c1, gm);
        for (; s < S; ++s) gmem_columns<T, 1>(W, B.data(), gR, q, mem, gamma.data(), N, S, C, s, c0, c1, gm);
      }
    });
  }
}

// --------------------------------------------------------------------------- torch glue
// Large outputs (read, grad_q: N x C) are written once, right after allocation, so their first-touch
// page faults cost as much as the kernel itself (4 KiB pages: ~0.5 ms per MB here). Asking for
// transparent huge pages on the fresh buffer (a hint; ignored where THP is off) cuts that ~4x.
// torch's own allocator does the same for every tensor with THP_MEM_ALLOC_ENABLE=1.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t H = uintptr_t(2) << 20;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr()), bytes = t.nbytes();
  if (bytes < 4 * H) return;
  const uintptr_t a = (p + H - 1) & ~(H - 1), e = (p + bytes) & ~(H - 1);
  if (e > a) (void)madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

void check_inputs(const char* fn, const at::Tensor& q, const at::Tensor& mem) {
  TORCH_CHECK(q.device().is_cpu() && mem.device().is_cpu(), fn, ": q and mem must be CPU tensors");
  TORCH_CHECK(q.dim() == 2 && mem.dim() == 2, fn, ": q must be (N, C) and mem (S, C), got ", q.sizes(), " and ",
              mem.sizes());
  TORCH_CHECK(q.size(1) == mem.size(1), fn, ": mem must have C=", q.size(1), " columns, got ", mem.sizes());
  TORCH_CHECK(mem.size(0) >= 1, fn, ": mem must have at least one slot");
  TORCH_CHECK(q.scalar_type() == mem.scalar_type(), fn, ": q and mem must have the same dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble, fn,
              ": dtype must be float32 or float64, got ", q.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> memory_address_forward_cpu(const at::Tensor& q_, const at::Tensor& mem_) {
  check_inputs("memory_address_forward_cpu", q_, mem_);
  auto q = q_.contiguous();
  auto mem = mem_.contiguous();
  const int64_t N = q.size(0), C = q.size(1), S = mem.size(0);
  auto W = at::empty({N, S}, q.options());
  auto read = at::empty({N, C}, q.options());
  auto top2 = at::empty({N, 2}, q.options().dtype(at::kLong));
  advise_huge_pages(read);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "memory_address_forward_cpu", [&] {
    forward_impl<scalar_t>(q.data_ptr<scalar_t>(), mem.data_ptr<scalar_t>(), N, S, C, W.data_ptr<scalar_t>(),
                           read.data_ptr<scalar_t>(), top2.data_ptr<int64_t>());
  });
  return {W, read, top2};
}

std::tuple<at::Tensor, at::Tensor> memory_address_backward_cpu(const at::Tensor& grad_weights, const at::Tensor& grad_read,
                                                               const at::Tensor& q_, const at::Tensor& mem_,
                                                               const at::Tensor& weights) {
  const char* fn = "memory_address_backward_cpu";
  check_inputs(fn, q_, mem_);
  const int64_t N = q_.size(0), C = q_.size(1), S = mem_.size(0);
  TORCH_CHECK(grad_weights.sizes() == at::IntArrayRef({N, S}) && weights.sizes() == at::IntArrayRef({N, S}), fn,
              ": grad_weights and weights must be (N, S) = (", N, ", ", S, ")");
  TORCH_CHECK(grad_read.sizes() == q_.sizes(), fn, ": grad_read must have q's shape ", q_.sizes());
  for (const at::Tensor* t : {&grad_weights, &grad_read, &weights})
    TORCH_CHECK(t->scalar_type() == q_.scalar_type() && t->device().is_cpu(), fn,
                ": gradients and weights must be CPU tensors of q's dtype");
  auto q = q_.contiguous(), mem = mem_.contiguous();
  auto gW = grad_weights.contiguous(), gR = grad_read.contiguous(), W = weights.contiguous();
  auto gq = at::empty_like(q), gm = at::empty_like(mem);
  advise_huge_pages(gq);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "memory_address_backward_cpu", [&] {
    backward_impl<scalar_t>(gW.data_ptr<scalar_t>(), gR.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                            mem.data_ptr<scalar_t>(), W.data_ptr<scalar_t>(), N, S, C, gq.data_ptr<scalar_t>(),
                            gm.data_ptr<scalar_t>());
  });
  return {gq, gm};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mgnet_C, m) {
  m.def("memory_address_forward_cpu", &memory_address_forward_cpu);
  m.def("memory_address_backward_cpu", &memory_address_backward_cpu);
}
