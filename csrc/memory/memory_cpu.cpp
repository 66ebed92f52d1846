// Fused memory cosine addressing on the CPU (mgnet.ops.memory_address, paper eq. 7).
//
//   score   = normalize(q) @ normalize(mem).T    normalize(v) = v / max(||v||, eps), eps = 1e-12
//   weights = softmax(score, dim=1);  read = weights @ mem;  top2 = two best slots (ties -> lower index)
//
// Forward, one pass over q:
//   A. per query tile (TQ rows, parallel over tiles): squared norms and dot products against every
//      slot (register-blocked TQ x SB accumulators, vectorised over the width), cosine scores from the
//      slot norms computed once, safe softmax (max subtracted), top-2, weights written;
//   B. read = weights @ mem, parallel over (query tile, width chunk) so that few-query / wide-row
//      problems (BSMM: 256 x 5130 against 50 slots) still use every core.
// Backward (grads of q and mem; top2 has none), with gW = grad_weights + grad_read @ mem.T,
//   gs = W * (gW - sum_s W gW) (softmax), b = gs / (|q|_eps |m|_eps):
//   grad_q   = b @ mem - beta_n q,     beta_n  = [||q_n|| >= eps] sum_s gs*score / |q_n|_eps^2
//   grad_mem = W.T @ grad_read + b.T @ q - gamma_s mem,  gamma_s = [||m_s|| >= eps] sum_n gs*score / |m_s|_eps^2
//   (the bracket is where F.normalize's clamp_min passes its gradient: a zero-norm row gets g / eps).
//   A. per query tile: dot products of q and grad_read with every slot in one sweep, softmax grad, b,
//      grad_q; when S*C is small the tile's contribution to grad_mem is accumulated into a per-chunk
//      partial right away (q and grad_read are still in L1), otherwise
//   B. grad_mem is computed parallel over width chunks (each thread owns columns, no reduction).
//
// Vectors are GCC/Clang vector extensions of 64 bytes (one AVX-512 register under -march=native,
// split into narrower registers otherwise); float and double (double for gradcheck).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

constexpr double kEps = 1e-12;  // mgnet.ops.memory.EPS (F.normalize's eps)
constexpr int TQ = 4;           // queries per tile
constexpr int SB = 4;           // slots per register block (forward dots)
constexpr int SB2 = 2;          // slots per register block (backward: q and grad_read dots together)
constexpr int CV = 4;           // vectors per width block of the read / grad_q
constexpr int64_t CW = 512;     // width chunk (elements) of the parallel read / grad_mem

typedef float vfloat __attribute__((vector_size(64)));
typedef double vdouble __attribute__((vector_size(64)));
template <typename T> struct VecOf;
template <> struct VecOf<float> { using type = vfloat; };
template <> struct VecOf<double> { using type = vdouble; };

template <typename T> using Vec = typename VecOf<T>::type;
template <typename T> constexpr int lanes() { return int(sizeof(Vec<T>) / sizeof(T)); }

template <typename T> inline Vec<T> vload(const T* p) { Vec<T> v; std::memcpy(&v, p, sizeof(v)); return v; }
template <typename T> inline void vstore(T* p, Vec<T> v) { std::memcpy(p, &v, sizeof(v)); }
template <typename T> inline Vec<T> vzero() { return Vec<T>{}; }
template <typename T> inline Vec<T> vbcast(T x) { return vzero<T>() + x; }
template <typename T> inline T hsum(Vec<T> v) {
  T s = 0;
  for (int l = 0; l < lanes<T>(); ++l) s += v[l];
  return s;
}

// --------------------------------------------------------------------------- dot products
// out[i * lds + j] = q_i . m_j for NQ queries (row stride C) and NS slots; squared norms of the
// queries too when NORM (the first slot block of a tile).
template <typename T, int NQ, int NS>
inline void dots_block(const T* q, const T* m, int64_t C, T* out, int64_t lds) {
  constexpr int L = lanes<T>();
  Vec<T> acc[NQ][NS];
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) acc[i][j] = vzero<T>();
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    Vec<T> qv[NQ];
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) qv[i] = vload(q + i * C + c);
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) {
      Vec<T> mv = vload(m + j * C + c);
#pragma GCC unroll 8
      for (int i = 0; i < NQ; ++i) acc[i][j] += qv[i] * mv;
    }
  }
  for (int i = 0; i < NQ; ++i)
    for (int j = 0; j < NS; ++j) {
      T s = hsum<T>(acc[i][j]);
      for (int64_t k = c; k < C; ++k) s += q[i * C + k] * m[j * C + k];
      out[i * lds + j] = s;
    }
}

// Same, for two query-side matrices at once (q and grad_read share the slot loads).
template <typename T, int NQ, int NS>
inline void dots2_block(const T* q, const T* g, const T* m, int64_t C, T* outq, T* outg, int64_t lds) {
  constexpr int L = lanes<T>();
  Vec<T> aq[NQ][NS], ag[NQ][NS];
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) { aq[i][j] = vzero<T>(); ag[i][j] = vzero<T>(); }
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    Vec<T> qv[NQ], gv[NQ];
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) { qv[i] = vload(q + i * C + c); gv[i] = vload(g + i * C + c); }
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) {
      Vec<T> mv = vload(m + j * C + c);
#pragma GCC unroll 8
      for (int i = 0; i < NQ; ++i) { aq[i][j] += qv[i] * mv; ag[i][j] += gv[i] * mv; }
    }
  }
  for (int i = 0; i < NQ; ++i)
    for (int j = 0; j < NS; ++j) {
      T sq = hsum<T>(aq[i][j]), sg = hsum<T>(ag[i][j]);
      for (int64_t k = c; k < C; ++k) { sq += q[i * C + k] * m[j * C + k]; sg += g[i * C + k] * m[j * C + k]; }
      outq[i * lds + j] = sq;
      outg[i * lds + j] = sg;
    }
}

template <typename T>
inline T sqnorm(const T* x, int64_t C) {
  constexpr int L = lanes<T>();
  Vec<T> a0 = vzero<T>(), a1 = vzero<T>();
  int64_t c = 0;
  for (; c + 2 * L <= C; c += 2 * L) {
    Vec<T> x0 = vload(x + c), x1 = vload(x + c + L);
    a0 += x0 * x0;
    a1 += x1 * x1;
  }
  for (; c + L <= C; c += L) { Vec<T> x0 = vload(x + c); a0 += x0 * x0; }
  T s = hsum<T>(a0 + a1);
  for (; c < C; ++c) s += x[c] * x[c];
  return s;
}

// All slots against NQ queries: out[i * S + s].
template <typename T, int NQ>
void dots_tile(const T* q, const T* mem, int64_t S, int64_t C, T* out) {
  int64_t s = 0;
  for (; s + SB <= S; s += SB) dots_block<T, NQ, SB>(q, mem + s * C, C, out + s, S);
  switch (S - s) {
    case 3: dots_block<T, NQ, 3>(q, mem + s * C, C, out + s, S); break;
    case 2: dots_block<T, NQ, 2>(q, mem + s * C, C, out + s, S); break;
    case 1: dots_block<T, NQ, 1>(q, mem + s * C, C, out + s, S); break;
    default: break;
  }
}

template <typename T, int NQ>
void dots2_tile(const T* q, const T* g, const T* mem, int64_t S, int64_t C, T* outq, T* outg) {
  int64_t s = 0;
  for (; s + SB2 <= S; s += SB2) dots2_block<T, NQ, SB2>(q, g, mem + s * C, C, outq + s, outg + s, S);
  if (s < S) dots2_block<T, NQ, 1>(q, g, mem + s * C, C, outq + s, outg + s, S);
}

// --------------------------------------------------------------------------- combination of slots
// out_i[c] = sum_s A[i * S + s] * mem[s][c] + beta_i * x_i[c]  (x may be null), c in [c0, c1).
template <typename T, int NQ, int NV>
inline void combine_block(const T* A, const T* mem, int64_t S, int64_t C, int64_t c,
                          const T* x, const T* beta, T* out) {
  constexpr int L = lanes<T>();
  Vec<T> acc[NQ][NV];
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = x ? vbcast<T>(beta[i]) * vload(x + i * C + c + v * L) : vzero<T>();
  for (int64_t s = 0; s < S; ++s) {
    Vec<T> mv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) mv[v] = vload(mem + s * C + c + v * L);
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) {
      Vec<T> a = vbcast<T>(A[i * S + s]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] += a * mv[v];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) vstore(out + i * C + c + v * L, acc[i][v]);
}

template <typename T, int NQ>
void combine_tile(const T* A, const T* mem, int64_t S, int64_t C, int64_t c0, int64_t c1,
                  const T* x, const T* beta, T* out) {
  constexpr int L = lanes<T>();
  int64_t c = c0;
  for (; c + CV * L <= c1; c += CV * L) combine_block<T, NQ, CV>(A, mem, S, C, c, x, beta, out);
  for (; c + L <= c1; c += L) combine_block<T, NQ, 1>(A, mem, S, C, c, x, beta, out);
  for (; c < c1; ++c)
    for (int i = 0; i < NQ; ++i) {
      T acc = x ? beta[i] * x[i * C + c] : T(0);
      for (int64_t s = 0; s < S; ++s) acc += A[i * S + s] * mem[s * C + c];
      out[i * C + c] = acc;
    }
}

// --------------------------------------------------------------------------- grad of mem
// part[s][c] += sum_i W[i][s] * g_i[c] + B[i][s] * q_i[c]   (NQ rows of one tile, every slot)
template <typename T, int NQ>
void gmem_accumulate(const T* W, const T* B, const T* g, const T* q, int64_t S, int64_t C, T* part) {
  constexpr int L = lanes<T>();
  for (int64_t s = 0; s < S; ++s) {
    T w[NQ], b[NQ];
    for (int i = 0; i < NQ; ++i) { w[i] = W[i * S + s]; b[i] = B[i * S + s]; }
    T* p = part + s * C;
    int64_t c = 0;
    for (; c + L <= C; c += L) {
      Vec<T> acc = vload(p + c);
#pragma GCC unroll 8
      for (int i = 0; i < NQ; ++i) acc += vbcast<T>(w[i]) * vload(g + i * C + c) + vbcast<T>(b[i]) * vload(q + i * C + c);
      vstore(p + c, acc);
    }
    for (; c < C; ++c) {
      T acc = p[c];
      for (int i = 0; i < NQ; ++i) acc += w[i] * g[i * C + c] + b[i] * q[i * C + c];
      p[c] = acc;
    }
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
    for (int v = 0; v < NV; ++v) acc[j][v] = -vbcast<T>(gamma[s0 + j]) * vload(mem + (s0 + j) * C + c + v * L);
  for (int64_t n = 0; n < N; ++n) {
    Vec<T> gv[NV], qv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) { gv[v] = vload(g + n * C + c + v * L); qv[v] = vload(q + n * C + c + v * L); }
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) {
      Vec<T> w = vbcast<T>(W[n * S + s0 + j]), b = vbcast<T>(B[n * S + s0 + j]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[j][v] += w * gv[v] + b * qv[v];
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
  for (; c + 2 * L <= c1; c += 2 * L) gmem_block<T, NS, 2>(W, B, g, q, mem, gamma, N, S, C, s0, c, out);
  for (; c + L <= c1; c += L) gmem_block<T, NS, 1>(W, B, g, q, mem, gamma, N, S, C, s0, c, out);
  for (; c < c1; ++c)
    for (int j = 0; j < NS; ++j) {
      int64_t s = s0 + j;
      T acc = -gamma[s] * mem[s * C + c];
      for (int64_t n = 0; n < N; ++n) acc += W[n * S + s] * g[n * C + c] + B[n * S + s] * q[n * C + c];
      out[s * C + c] = acc;
    }
}

// --------------------------------------------------------------------------- dispatch on tile size
#define MGNET_MEM_TILE_SWITCH(nq, CALL) \
  switch (nq) {                         \
    case 4: { constexpr int NQ = 4; CALL; break; } \
    case 3: { constexpr int NQ = 3; CALL; break; } \
    case 2: { constexpr int NQ = 2; CALL; break; } \
    default: { constexpr int NQ = 1; CALL; break; } \
  }
static_assert(TQ == 4, "MGNET_MEM_TILE_SWITCH covers tiles of up to 4 queries");

// Chunks of consecutive tiles, one per thread (deterministic partials for the reductions).
inline int64_t num_chunks(int64_t ntiles) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntiles));
}

template <typename T>
void slot_norms(const T* mem, int64_t S, int64_t C, T* mn, T* mraw) {
  at::parallel_for(0, S, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; ++s) {
      T r = std::sqrt(sqnorm(mem + s * C, C));
      mraw[s] = r;
      mn[s] = std::max(r, T(kEps));
    }
  });
}

// --------------------------------------------------------------------------- forward
template <typename T>
void forward_impl(const T* q, const T* mem, int64_t N, int64_t S, int64_t C, T* W, T* read, int64_t* top2) {
  std::vector<T> mn(S), mraw(S);
  slot_norms(mem, S, C, mn.data(), mraw.data());
  std::vector<T> inv_mn(S);
  for (int64_t s = 0; s < S; ++s) inv_mn[s] = T(1) / mn[s];

  const int64_t ntiles = (N + TQ - 1) / TQ;
  const int64_t nch = num_chunks(ntiles);
  at::parallel_for(0, nch, 1, [&](int64_t cb, int64_t ce) {
    std::vector<T> sc(TQ * S);
    for (int64_t ch = cb; ch < ce; ++ch) {
      for (int64_t t = ntiles * ch / nch; t < ntiles * (ch + 1) / nch; ++t) {
        const int64_t n0 = t * TQ, nq = std::min<int64_t>(TQ, N - n0);
        const T* qt = q + n0 * C;
        MGNET_MEM_TILE_SWITCH(nq, (dots_tile<T, NQ>(qt, mem, S, C, sc.data())));
        for (int64_t i = 0; i < nq; ++i) {
          const T inv_qn = T(1) / std::max(std::sqrt(sqnorm(qt + i * C, C)), T(kEps));
          T* r = sc.data() + i * S;
          T mx = -INFINITY;
          int64_t i1 = 0, i2 = 0;
          T v1 = -INFINITY, v2 = -INFINITY;
          for (int64_t s = 0; s < S; ++s) {
            const T v = r[s] * inv_qn * inv_mn[s];
            r[s] = v;
            mx = std::max(mx, v);
            if (v > v1) { v2 = v1; i2 = i1; v1 = v; i1 = s; }
            else if (v > v2) { v2 = v; i2 = s; }
          }
          if (S == 1) { i1 = 0; i2 = 0; }
          T sum = 0;
          for (int64_t s = 0; s < S; ++s) { r[s] = std::exp(r[s] - mx); sum += r[s]; }
          const T inv = T(1) / sum;
          T* w = W + (n0 + i) * S;
          for (int64_t s = 0; s < S; ++s) w[s] = r[s] * inv;
          top2[(n0 + i) * 2] = i1;
          top2[(n0 + i) * 2 + 1] = i2;
        }
      }
    }
  });

  // read = W @ mem over (tile, width chunk)
  const int64_t ncc = std::max<int64_t>(1, (C + CW - 1) / CW);
  at::parallel_for(0, ntiles * ncc, 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t t = u / ncc, cc = u % ncc;
      const int64_t n0 = t * TQ, nq = std::min<int64_t>(TQ, N - n0);
      const int64_t c0 = cc * CW, c1 = std::min<int64_t>(C, c0 + CW);
      MGNET_MEM_TILE_SWITCH(nq, (combine_tile<T, NQ>(W + n0 * S, mem, S, C, c0, c1, nullptr, nullptr, read + n0 * C)));
    }
  });
}

// --------------------------------------------------------------------------- backward
template <typename T>
void backward_impl(const T* gW, const T* gR, const T* q, const T* mem, const T* W, int64_t N, int64_t S,
                   int64_t C, T* gq, T* gm) {
  std::vector<T> mn(S), mraw(S);
  slot_norms(mem, S, C, mn.data(), mraw.data());

  const int64_t ntiles = (N + TQ - 1) / TQ;
  const int64_t nch = num_chunks(ntiles);
  // grad_mem strategy: per-chunk partials fused into the query sweep when they are small and there
  // are many tiles per chunk; otherwise a second sweep parallel over the width.
  const bool fused_gm = S * C * nch <= (int64_t(1) << 18) && ntiles >= 4 * nch;
  std::vector<T> B(fused_gm ? 0 : N * S);                   // b = gs / (|q| |m|), for the width sweep
  std::vector<T> gamma_part(nch * S, T(0));                 // sum_n gs*score per chunk
  std::vector<T> gm_part(fused_gm ? nch * S * C : 0, T(0)); // grad_mem partials per chunk

  at::parallel_for(0, nch, 1, [&](int64_t cb, int64_t ce) {
    std::vector<T> dq(TQ * S), dg(TQ * S), bt(TQ * S);
    T beta[TQ];
    for (int64_t ch = cb; ch < ce; ++ch) {
      T* gpart = gamma_part.data() + ch * S;
      for (int64_t t = ntiles * ch / nch; t < ntiles * (ch + 1) / nch; ++t) {
        const int64_t n0 = t * TQ, nq = std::min<int64_t>(TQ, N - n0);
        const T* qt = q + n0 * C;
        const T* gt = gR + n0 * C;
        MGNET_MEM_TILE_SWITCH(nq, (dots2_tile<T, NQ>(qt, gt, mem, S, C, dq.data(), dg.data())));
        for (int64_t i = 0; i < nq; ++i) {
          const T qraw = std::sqrt(sqnorm(qt + i * C, C));
          const T qn = std::max(qraw, T(kEps));
          const T* w = W + (n0 + i) * S;
          const T* gw = gW + (n0 + i) * S;
          T* g = dg.data() + i * S;  // -> gW total -> gs
          T* d = dq.data() + i * S;  // -> score
          T* b = bt.data() + i * S;
          T dot = 0;
          for (int64_t s = 0; s < S; ++s) { g[s] += gw[s]; dot += w[s] * g[s]; }
          T ssum = 0;
          for (int64_t s = 0; s < S; ++s) {
            const T gs = w[s] * (g[s] - dot);
            const T score = d[s] / (qn * mn[s]);
            ssum += gs * score;
            gpart[s] += gs * score;
            b[s] = gs / (qn * mn[s]);
          }
          beta[i] = qraw >= T(kEps) ? -ssum / (qn * qn) : T(0);
        }
        MGNET_MEM_TILE_SWITCH(nq, (combine_tile<T, NQ>(bt.data(), mem, S, C, 0, C, qt, beta, gq + n0 * C)));
        if (fused_gm) {
          MGNET_MEM_TILE_SWITCH(nq, (gmem_accumulate<T, NQ>(W + n0 * S, bt.data(), gt, qt, S, C,
                                                            gm_part.data() + ch * S * C)));
        } else {
          std::memcpy(B.data() + n0 * S, bt.data(), sizeof(T) * nq * S);
        }
      }
    }
  });

  std::vector<T> gamma(S);
  for (int64_t s = 0; s < S; ++s) {
    T acc = 0;
    for (int64_t ch = 0; ch < nch; ++ch) acc += gamma_part[ch * S + s];
    gamma[s] = mraw[s] >= T(kEps) ? acc / (mn[s] * mn[s]) : T(0);
  }

  if (fused_gm) {
    at::parallel_for(0, S * C, 4096, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        T acc = -gamma[k / std::max<int64_t>(C, 1)] * mem[k];
        for (int64_t ch = 0; ch < nch; ++ch) acc += gm_part[ch * S * C + k];
        gm[k] = acc;
      }
    });
  } else {
    const int64_t cw = 8 * lanes<T>();
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
void check_inputs(const at::Tensor& q, const at::Tensor& mem) {
  TORCH_CHECK(q.device().is_cpu() && mem.device().is_cpu(), "memory_address_forward_cpu: q and mem must be CPU tensors");
  TORCH_CHECK(q.dim() == 2 && mem.dim() == 2, "memory_address: q must be (N, C) and mem (S, C), got ",
              q.sizes(), " and ", mem.sizes());
  TORCH_CHECK(q.size(1) == mem.size(1), "memory_address: mem must have C=", q.size(1), " columns, got ", mem.sizes());
  TORCH_CHECK(mem.size(0) >= 1, "memory_address: mem must have at least one slot");
  TORCH_CHECK(q.scalar_type() == mem.scalar_type(), "memory_address: q and mem must have the same dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "memory_address CPU kernel: dtype must be float32 or float64, got ", q.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> memory_address_forward_cpu(const at::Tensor& q_, const at::Tensor& mem_) {
  check_inputs(q_, mem_);
  auto q = q_.contiguous();
  auto mem = mem_.contiguous();
  const int64_t N = q.size(0), C = q.size(1), S = mem.size(0);
  auto W = at::empty({N, S}, q.options());
  auto read = at::empty({N, C}, q.options());
  auto top2 = at::empty({N, 2}, q.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "memory_address_forward_cpu", [&] {
    forward_impl<scalar_t>(q.data_ptr<scalar_t>(), mem.data_ptr<scalar_t>(), N, S, C, W.data_ptr<scalar_t>(),
                           read.data_ptr<scalar_t>(), top2.data_ptr<int64_t>());
  });
  return {W, read, top2};
}

std::tuple<at::Tensor, at::Tensor> memory_address_backward_cpu(const at::Tensor& grad_weights, const at::Tensor& grad_read,
                                                               const at::Tensor& q_, const at::Tensor& mem_,
                                                               const at::Tensor& weights) {
  check_inputs(q_, mem_);
  const int64_t N = q_.size(0), C = q_.size(1), S = mem_.size(0);
  TORCH_CHECK(grad_weights.sizes() == at::IntArrayRef({N, S}) && weights.sizes() == at::IntArrayRef({N, S}),
              "memory_address_backward_cpu: grad_weights and weights must be (N, S) = (", N, ", ", S, ")");
  TORCH_CHECK(grad_read.sizes() == q_.sizes(), "memory_address_backward_cpu: grad_read must have q's shape");
  for (const auto* t : {&grad_weights, &grad_read, &weights})
    TORCH_CHECK(t->scalar_type() == q_.scalar_type() && t->device().is_cpu(),
                "memory_address_backward_cpu: gradients and weights must be CPU tensors of q's dtype");
  auto q = q_.contiguous(), mem = mem_.contiguous();
  auto gW = grad_weights.contiguous(), gR = grad_read.contiguous(), W = weights.contiguous();
  auto gq = at::empty_like(q), gm = at::empty_like(mem);
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
