// Fused memory cosine addressing on the CPU (mgnet.ops.memory_address, paper eq. 7).
//
//   score   = normalize(q) @ normalize(mem).T    normalize(v) = v / max(||v||, eps), eps = 1e-12
//   weights = softmax(score, dim=1);  read = weights @ mem;  top2 = two best slots (ties -> lower index)
//
// Forward, one pass over q. The many-query regime (S <= kRowsMaxS slots, not wide: the behavior
// memory's 131072 x 192 x 10) takes rows_forward (below, before forward_impl): blocks of one vector's
// lanes of queries, register blocks sized for AVX2, softmax and top-2 across the block's queries, read
// with streaming stores, the next block's rows prefetched; chunks of kRowsGrain blocks are pulled by the
// threads (common/parallel.h). Otherwise:
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
//   A. per query tile (chunks of tiles pulled by the threads; the next tile's rows prefetched):
//      grad_read . mem for every slot, the softmax grad, b, grad_q; when S*C is small
//      the tile's contribution to grad_mem goes into its chunk's partial while q and grad_read are in
//      L1 (chunks of tiles fixed by the size alone, summed in order: bit-identical at any thread
//      count), otherwise A keeps b and beta and
//   B. grad_q and grad_mem are computed parallel over width blocks (each thread owns columns, no
//      reduction), both from one read of the block's q.
// The backward does the 4 unavoidable N x S x C products (grad_read @ mem.T, b @ mem, W.T @ grad_read,
// b.T @ q) and O(N C + S C) more; the forward the 2 of its definition.
//
// Wide regime (is_wide: mem above L2 size next to a tile, N <= 2048; the BSMM's 256 x 5130 x 50): the
// dot products are blocked over the width (a packed, aligned KW-column block of mem stays in L2 across
// a thread's tiles; 4 queries x 6 slots per register block), and read / grad_q / grad_mem run over
// packed column blocks (mem's block S x RB*L or PB*L, and for the gradients grad_read's and q's block
// N x 2 x PB*L, contiguous and L2-resident instead of one page per row) with 6 x 4-vector register
// blocks; the last, partial block is zero-padded. The backward's width sweep is used whenever grad_mem
// is not fused into A; above 2048 queries it reads the unpacked rows.
//
// Vectors: csrc/common/vec.h (GCC/Clang vector extensions, one register of the ISA built for); float,
// and double for gradcheck (scalar exp/log there).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "../common/buffer_cache.h"
#include "../common/parallel.h"
#include "../common/static_switch.h"
#include "../common/torch_glue.h"
#include "../common/vec.h"
#include "memory_args.h"

namespace {

using namespace mgnet::vec;

constexpr double kEps = 1e-12;  // mgnet.ops.memory.EPS (F.normalize's eps)
constexpr int TQ = 4;           // queries per tile
// The TQ x SB and TQ x CV register blocks must fit the vector registers with their operands: 4 x 4
// accumulators + 4 + 1 operands spill with AVX2's 16 registers (the backward of the many-query regime ran
// ~20 % slower), so they halve there; AVX-512 has 32.
#if MGNET_VEC_BYTES == 64
constexpr int SB = 4;           // slots per register block of the dot products
constexpr int CV = 4;           // vectors per register block of the slot combinations (read, grad_q)
#else
constexpr int SB = 2;
constexpr int CV = 2;
#endif
constexpr int64_t CW = 512;     // width chunk (elements) of the parallel read

// --------------------------------------------------------------------------- dot products
// out[i * lds + j] (+)= x_i[0:K] . m_j[0:K] for NQ rows of x (ldx apart) and NS slots (ldm apart).
template <typename T, int NQ, int NS, bool ACC = false>
inline void dots_block(const T* x, int64_t ldx, const T* m, int64_t ldm, int64_t K, T* out, int64_t lds) {
  constexpr int L = lanes<T>();
  constexpr int NA = NQ * NS;
  constexpr int NR = (NA + L - 1) / L;
  Vec<T> acc[NR * L];
#pragma GCC unroll 16
  for (int a = 0; a < NR * L; ++a) acc[a] = vzero<T>();
  int64_t c = 0;
  for (; c + L <= K; c += L) {
    Vec<T> xv[NQ];
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) xv[i] = vload(x + i * ldx + c);
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) {
      Vec<T> mv = vload(m + j * ldm + c);
#pragma GCC unroll 8
      for (int i = 0; i < NQ; ++i) acc[i * NS + j] += xv[i] * mv;
    }
  }
  T sums[NR * L];
  for (int r = 0; r < NR; ++r) vstore(sums + r * L, reduce_lanes(acc + r * L));
  for (int i = 0; i < NQ; ++i)
    for (int j = 0; j < NS; ++j) {
      T s = sums[i * NS + j];
      for (int64_t k = c; k < K; ++k) s += x[i * ldx + k] * m[j * ldm + k];
      out[i * lds + j] = ACC ? out[i * lds + j] + s : s;
    }
}

// All slots against NQ rows over the columns [0, K): out[i * lds + s] (+)=, NS slots per register block.
template <typename T, int NQ, bool ACC = false, int NS = SB>
void dots_tile(const T* x, int64_t ldx, const T* mem, int64_t ldm, int64_t S, int64_t K, T* out, int64_t lds) {
  static_assert(NS >= 1 && NS <= 6, "dots_tile: 1 to 6 slots per block");
  int64_t s = 0;
  for (; s + NS <= S; s += NS) dots_block<T, NQ, NS, ACC>(x, ldx, mem + s * ldm, ldm, K, out + s, lds);
  switch (S - s) {
    case 5: dots_block<T, NQ, 5, ACC>(x, ldx, mem + s * ldm, ldm, K, out + s, lds); break;
    case 4: dots_block<T, NQ, 4, ACC>(x, ldx, mem + s * ldm, ldm, K, out + s, lds); break;
    case 3: dots_block<T, NQ, 3, ACC>(x, ldx, mem + s * ldm, ldm, K, out + s, lds); break;
    case 2: dots_block<T, NQ, 2, ACC>(x, ldx, mem + s * ldm, ldm, K, out + s, lds); break;
    case 1: dots_block<T, NQ, 1, ACC>(x, ldx, mem + s * ldm, ldm, K, out + s, lds); break;
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
      Vec<T> a = vsplat(A + i * lda + s);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = vfma(a, mv[v], acc[i][v]);  // as rows_combine: same bits
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
      for (int64_t s = 0; s < S; ++s) acc = sfma(A[i * lda + s], mem[s * C + c], acc);
      out[i * C + c] = acc;
    }
}

// --------------------------------------------------------------------------- grad of mem
// part[s][c] += sum_i W[i * ld + s] * g_i[c] + B[i * ld + s] * q_i[c]   (NQ rows of one tile)
template <typename T, int NQ>
void gmem_accumulate(const T* W, const T* B, int64_t ld, const T* g, const T* q, int64_t S, int64_t C, T* part) {
  constexpr int L = lanes<T>();
  // slots outer: the 2 NQ broadcasts of a slot's coefficients are made once, not once per vector of the
  // width (they were a third of the instructions), and the rows of g and q are re-read from L1 as FMA
  // operands; two vectors per step give two independent chains. Per element the order of the updates is
  // unchanged.
  const int64_t cv = C / L * L;
  for (int64_t s = 0; s < S; ++s) {
    Vec<T> wv[NQ], bv[NQ];
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) { wv[i] = vsplat(W + i * ld + s); bv[i] = vsplat(B + i * ld + s); }
    T* ps = part + s * C;
    int64_t c = 0;
    for (; c + 2 * L <= cv; c += 2 * L) {
      Vec<T> a0 = vloadf(ps + c), a1 = vloadf(ps + c + L);
#pragma GCC unroll 8
      for (int i = 0; i < NQ; ++i) {  // two separate updates: two FMAs (a + (x + y) would be mul, fma, add)
        a0 += wv[i] * vloadf(g + i * C + c);
        a1 += wv[i] * vloadf(g + i * C + c + L);
        a0 += bv[i] * vloadf(q + i * C + c);
        a1 += bv[i] * vloadf(q + i * C + c + L);
      }
      vstore(ps + c, a0);
      vstore(ps + c + L, a1);
    }
    for (; c < cv; c += L) {
      Vec<T> a0 = vloadf(ps + c);
#pragma GCC unroll 8
      for (int i = 0; i < NQ; ++i) {
        a0 += wv[i] * vloadf(g + i * C + c);
        a0 += bv[i] * vloadf(q + i * C + c);
      }
      vstore(ps + c, a0);
    }
  }
  for (int64_t c = C / L * L; c < C; ++c)
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
static_assert(TQ == 4, "MGNET_UPTO4_SWITCH covers tiles of up to 4 queries");

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Prefetch of the n elements at p (n <= 0: none): the next rows of a stream, issued a tile or block
// ahead (the hardware prefetchers alone left the first loads of each row waiting on memory).
template <typename T>
inline void prefetch_rows(const T* p, int64_t n) {
  for (int64_t k = 0; k < n; k += 64 / int64_t(sizeof(T))) __builtin_prefetch(p + k);
}

// Contiguous runs of tiles. The forward's results do not depend on the split (every query is
// computed alone): one run per thread. The backward reduces over the queries (gamma, the fused
// grad_mem) by summing one partial per run in run order, so its runs are fixed by the problem size
// alone (at least kTilesPerChunk tiles, at most kChunks runs), whatever the number of threads: the
// gradients are then bit-identical at any thread count.
constexpr int64_t kChunks = 16, kTilesPerChunk = 8;
inline int64_t thread_chunks(int64_t ntiles) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntiles));
}
inline int64_t reduction_chunks(int64_t ntiles) {
  return std::max<int64_t>(1, std::min<int64_t>(kChunks, ntiles / kTilesPerChunk));
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

// --------------------------------------------------------------------------- wide regime
// G[n * Sp + s] = x_n . mem_s for the query tiles [tb, te), blocked over the width: a KW-column block of
// mem, packed into Mk (aligned rows; 512 KiB, half of this machine's L2), stays in L2 across the tiles
// (the wide regime, where the whole of mem does not fit in L2); 4 queries x 6 slots per register block.
// Fewer, longer blocks measured best (blocks of 96 / 192 / 384 / 640 KiB: BSMM forward 3.39 / 3.17 / 3.09 /
// 3.04 ms, 1 thread).
template <typename T>
void blocked_dots(const T* x, const T* mem, int64_t N, int64_t S, int64_t C, int64_t tb, int64_t te, T* G, int64_t Sp) {
  constexpr int L = lanes<T>();
  const int64_t KW = std::max<int64_t>(4 * L, (int64_t(512) * 1024 / int64_t(sizeof(T)) / S) / (4 * L) * (4 * L));
  std::vector<T> Mk(S * std::min<int64_t>(KW, C));
  for (int64_t k0 = 0; k0 < C; k0 += KW) {
    const int64_t K = std::min<int64_t>(KW, C - k0);
    for (int64_t s = 0; s < S; ++s) std::memcpy(Mk.data() + s * K, mem + s * C + k0, sizeof(T) * K);
    for (int64_t t = tb; t < te; ++t) {
      const int64_t n0 = t * TQ, nq = std::min<int64_t>(TQ, N - n0);
      T* out = G + n0 * Sp;
      if (k0 == 0)
        MGNET_UPTO4_SWITCH(nq, NQ, [&] { dots_tile<T, NQ, false, 6>(x + n0 * C, C, Mk.data(), K, S, K, out, Sp); });
      else
        MGNET_UPTO4_SWITCH(nq, NQ, [&] { dots_tile<T, NQ, true, 6>(x + n0 * C + k0, C, Mk.data(), K, S, K, out, Sp); });
    }
  }
}

// Width sweep of the backward, one block of PB vectors of columns at c (all N queries): packs the block's
// rows of grad_read and q into P (per query: PB*L of grad_read, then PB*L of q) and the block of mem into
// Mp (S x PB*L), so that the inner loops read contiguous, L2-resident panels (the rows of the originals are
// C apart: one page per row), then, PV vectors at a time,
//   grad_q[:, blk]   = B @ mem[:, blk] + beta * q[:, blk]                                (query tiles)
//   grad_mem[:, blk] = W.T @ grad_read[:, blk] + B.T @ q[:, blk] - gamma * mem[:, blk]   (slot groups)
constexpr int PB = 8;   // vectors per packed column block of the width sweep
constexpr int PV = 4;   // vectors per register block inside it
constexpr int PS = 6;   // slots per register block of grad_mem (PS x PV accumulators)
constexpr int PQ = 6;   // queries per register block of grad_q (PQ x PV accumulators)

// acc[j][v] += c[j] * x[v L .. (v+1) L) for the NS x PV register block: one rank-1 update.
template <typename T, int NS>
inline void rank1_block(Vec<T> (&acc)[NS][PV], const T* c, const T* x) {
  constexpr int L = lanes<T>();
  Vec<T> xv[PV];
#pragma GCC unroll 8
  for (int v = 0; v < PV; ++v) xv[v] = vload(x + v * L);
#pragma GCC unroll 8
  for (int j = 0; j < NS; ++j) {
    const Vec<T> a = vbcast<T>(c[j]);
#pragma GCC unroll 8
    for (int v = 0; v < PV; ++v) acc[j][v] += a * xv[v];
  }
}

template <typename T, int NS>
inline void gmem_packed(const T* W, const T* B, const T* P, const T* Mp, const T* gamma, int64_t N, int64_t S,
                        int64_t ldo, int64_t s0, int64_t v0, T* out) {
  constexpr int L = lanes<T>();
  constexpr int64_t BW = PB * L;
  Vec<T> acc[NS][PV];
#pragma GCC unroll 8
  for (int j = 0; j < NS; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < PV; ++v) acc[j][v] = -vbcast<T>(gamma[s0 + j]) * vloadf(Mp + (s0 + j) * BW + (v0 + v) * L);
  const T* w = W + s0;
  const T* b = B + s0;
  P += v0 * L;
  for (int64_t n = 0; n < N; ++n, P += 2 * BW, w += S, b += S) {
    rank1_block<T, NS>(acc, w, P);        // the W half of the packed row
    rank1_block<T, NS>(acc, b, P + BW);   // the B half
  }
#pragma GCC unroll 8
  for (int j = 0; j < NS; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < PV; ++v) vstore(out + (s0 + j) * ldo + (v0 + v) * L, acc[j][v]);
}

// out_i[v0 L + (0..PV L)] = sum_s A[i * S + s] Mp[s] + beta_i q_i for NQ queries (q_i from P).
template <typename T, int NQ, bool HASX = true, int NB = PB>
inline void gq_packed(const T* A, int64_t S, const T* Mp, const T* Pq, const T* beta, int64_t v0, T* out, int64_t C) {
  constexpr int L = lanes<T>();
  constexpr int64_t BW = NB * L;
  Vec<T> acc[NQ][PV];
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < PV; ++v)
      acc[i][v] = HASX ? vbcast<T>(beta[i]) * vloadf(Pq + i * 2 * BW + (v0 + v) * L) : vzero<T>();
  Mp += v0 * L;
  for (int64_t s = 0; s < S; ++s, Mp += BW) {
    Vec<T> mv[PV];
#pragma GCC unroll 8
    for (int v = 0; v < PV; ++v) mv[v] = vload(Mp + v * L);
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) {
      const Vec<T> a = vbcast<T>(A[i * S + s]);
#pragma GCC unroll 8
      for (int v = 0; v < PV; ++v) acc[i][v] += a * mv[v];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < PV; ++v) vstore(out + i * C + (v0 + v) * L, acc[i][v]);
}

// Forward's read = W @ mem for the columns [c, c + cn), cn <= RB * L, through the packed block Mp (S x RB*L)
// and, for a partial block, Tq (N x RB*L). Query tiles outer: a tile's rows of read are written whole.
constexpr int RB = 16;  // vectors per column block of the forward's read

template <typename T>
void read_block(const T* W, const T* mem, int64_t N, int64_t S, int64_t C, int64_t c, int64_t cn, T* Mp, T* Tq,
                T* read) {
  constexpr int L = lanes<T>();
  constexpr int64_t BW = RB * L;
  const bool full = cn == BW;
  for (int64_t s = 0; s < S; ++s) {
    std::memcpy(Mp + s * BW, mem + s * C + c, sizeof(T) * cn);
    if (!full) std::memset(Mp + s * BW + cn, 0, sizeof(T) * (BW - cn));
  }
  T* o = full ? read + c : Tq;
  const int64_t ld = full ? C : BW;
  int64_t n0 = 0;
  for (; n0 + PQ <= N; n0 += PQ)
    for (int64_t v0 = 0; v0 < RB; v0 += PV)
      gq_packed<T, PQ, false, RB>(W + n0 * S, S, Mp, nullptr, nullptr, v0, o + n0 * ld, ld);
  for (; n0 < N; n0 += TQ) {
    const int64_t nq = std::min<int64_t>(TQ, N - n0);
    for (int64_t v0 = 0; v0 < RB; v0 += PV)
      MGNET_UPTO4_SWITCH(nq, NQ, [&] { gq_packed<T, NQ, false, RB>(W + n0 * S, S, Mp, nullptr, nullptr, v0, o + n0 * ld, ld); });
  }
  if (!full)
    for (int64_t n = 0; n < N; ++n) std::memcpy(read + n * C + c, Tq + n * BW, sizeof(T) * cn);
}

// The block of columns [c, c + cn), cn <= PB * L; a partial block (the last one) is packed with zero
// columns and its results go through Tq (N x PB*L) and Tm (S x PB*L).
template <typename T>
void width_block(const T* W, const T* B, const T* beta, const T* gamma, const T* gR, const T* q, const T* mem,
                 int64_t N, int64_t S, int64_t C, int64_t c, int64_t cn, T* P, T* Mp, T* Tq, T* Tm, T* gq, T* gm) {
  constexpr int L = lanes<T>();
  constexpr int64_t BW = PB * L;
  const bool full = cn == BW;
  auto pack_row = [&](T* dst, const T* src) {
    if (full) {
#pragma GCC unroll 16
      for (int v = 0; v < PB; ++v) vstore(dst + v * L, vloadf(src + v * L));
    } else {
      std::memcpy(dst, src, sizeof(T) * cn);
      std::memset(dst + cn, 0, sizeof(T) * (BW - cn));
    }
  };
  for (int64_t s = 0; s < S; ++s) pack_row(Mp + s * BW, mem + s * C + c);
  constexpr int64_t AHEAD = 8;  // rows: the rows are a page apart, so the hardware prefetchers do not follow
  for (int64_t n = 0; n < N; ++n) {
    if (n + AHEAD < N)
      for (int64_t k = 0; k < cn; k += 64 / int64_t(sizeof(T))) {
        __builtin_prefetch(gR + (n + AHEAD) * C + c + k);
        __builtin_prefetch(q + (n + AHEAD) * C + c + k);
      }
    pack_row(P + n * 2 * BW, gR + n * C + c);
    pack_row(P + n * 2 * BW + BW, q + n * C + c);
  }
  T* oq = full ? gq + c : Tq;
  T* om = full ? gm + c : Tm;
  const int64_t ldq = full ? C : BW, ldm = full ? C : BW;
  // grad_q: PV vectors of columns at a time over all tiles, so that those columns of Mp stay in L1
  int64_t n0 = 0;
  for (; n0 + PQ <= N; n0 += PQ)
    for (int64_t v0 = 0; v0 < PB; v0 += PV)
      gq_packed<T, PQ>(B + n0 * S, S, Mp, P + n0 * 2 * BW + BW, beta + n0, v0, oq + n0 * ldq, ldq);
  for (; n0 < N; n0 += TQ) {
    const int64_t nq = std::min<int64_t>(TQ, N - n0);
    for (int64_t v0 = 0; v0 < PB; v0 += PV)
      MGNET_UPTO4_SWITCH(nq, NQ, [&] { gq_packed<T, NQ>(B + n0 * S, S, Mp, P + n0 * 2 * BW + BW, beta + n0, v0,
                                                   oq + n0 * ldq, ldq); });
  }
  for (int64_t v0 = 0; v0 < PB; v0 += PV) {
    int64_t s = 0;
    for (; s + PS <= S; s += PS) gmem_packed<T, PS>(W, B, P, Mp, gamma, N, S, ldm, s, v0, om);
    switch (S - s) {
      case 5: gmem_packed<T, 5>(W, B, P, Mp, gamma, N, S, ldm, s, v0, om); break;
      case 4: gmem_packed<T, 4>(W, B, P, Mp, gamma, N, S, ldm, s, v0, om); break;
      case 3: gmem_packed<T, 3>(W, B, P, Mp, gamma, N, S, ldm, s, v0, om); break;
      case 2: gmem_packed<T, 2>(W, B, P, Mp, gamma, N, S, ldm, s, v0, om); break;
      case 1: gmem_packed<T, 1>(W, B, P, Mp, gamma, N, S, ldm, s, v0, om); break;
      default: break;
    }
  }
  if (!full) {
    for (int64_t n = 0; n < N; ++n) std::memcpy(gq + n * C + c, Tq + n * BW, sizeof(T) * cn);
    for (int64_t s = 0; s < S; ++s) std::memcpy(gm + s * C + c, Tm + s * BW, sizeof(T) * cn);
  }
}

// --------------------------------------------------------------------------- forward
// The wide regime (BSMM: 256 queries of width 5130 against 50 slots): mem does not fit in L2 next to a
// query tile, and there are few enough queries for the packed panels of the width sweeps (2 N x PB*L).
// Independent of the thread count, so that results are too.
template <typename T>
bool is_wide(int64_t N, int64_t S, int64_t C) {
  return S * C * int64_t(sizeof(T)) > 256 * 1024 && N <= 2048;
}

// --------------------------------------------------------------------------- many-query regime
// Forward of the many-query regime (the behavior memory: 131072 queries of width 192 against 10 slots),
// a stream over q at the machine's bandwidth and FMA rate. Blocks of L queries (L = lanes<T>(): 8 fp32
// with AVX2), one pass over q:
//   1. raw dots: per 2 queries x up to 5 slots (+ the 2 squared norms in the first slot group), 15 vector
//      registers, so that it fits AVX2's 16 (the 4 x 4 blocks of dots_tile spill there); the slots are
//      read from Mp, mem packed once (rows padded with zeros to a whole vector, 10 x 192 fp32: 7.5 KiB,
//      L1-resident). The accumulators are stored unreduced, R[j][i] (slot j, query i; j = S: the norm),
//   2. reduce_lanes of R[j][0..L) gives slot j's dot products of the L queries as one vector: the
//      cosine, the safe softmax (vexp of S vectors) and the top-2 run across the block's queries, lane i
//      being query i, with selects instead of the per-query compare branches (random scores mispredict),
//   3. read = W @ mem of the block, 2 queries x 4 vectors per register block, written with streaming
//      stores when the rows are vector-aligned (read is write-only: no read-for-ownership of 100 MB).
// Per element the arithmetic of read is combine_tile's (acc = 0; acc += w_s m_s, s = 0..S-1, FMA), so the
// width-split read (few queries per thread) gives the same bits.
constexpr int64_t kRowsMaxS = 32;       // above, the block's raw accumulators ((S+1) L vectors) leave L1
constexpr int64_t kRowsGrain = 32;      // blocks per chunk of the dynamic schedule (256 fp32 rows)

template <typename T>
bool use_rows(int64_t N, int64_t S, int64_t C) {
  return !is_wide<T>(N, S, C) && S <= kRowsMaxS;
}

// Raw accumulators of NQ rows of x (ldx apart) against NS packed slots (Mp + j * Cp, zero-padded past C):
// R[j * L + i] = sum over vectors of x_i * m_j (lanes unreduced); with NORM also Rn[i] = x_i * x_i.
template <typename T, int NQ, int NS, bool NORM>
inline void raw_dots(const T* x, int64_t ldx, const T* Mp, int64_t Cp, int64_t C, Vec<T>* R, Vec<T>* Rn) {
  constexpr int L = lanes<T>();
  Vec<T> acc[NQ][NS], nacc[NQ];
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i) {
    nacc[i] = vzero<T>();
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) acc[i][j] = vzero<T>();
  }
  auto step = [&](const Vec<T>(&xv)[NQ], int64_t c) {
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) {
      const Vec<T> mv = vload(Mp + j * Cp + c);
#pragma GCC unroll 8
      for (int i = 0; i < NQ; ++i) acc[i][j] += xv[i] * mv;
    }
    if (NORM)
#pragma GCC unroll 8
      for (int i = 0; i < NQ; ++i) nacc[i] += xv[i] * xv[i];
  };
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    Vec<T> xv[NQ];
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) xv[i] = vload(x + i * ldx + c);
    step(xv, c);
  }
  if (c < C) {  // the last, partial vector: x's lanes past C are zero (Mp's are too)
    Vec<T> xv[NQ];
    for (int i = 0; i < NQ; ++i) {
      T t[L] = {};
      for (int64_t k = c; k < C; ++k) t[k - c] = x[i * ldx + k];
      xv[i] = vloadf(t);
    }
    step(xv, c);
  }
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) R[j * L + i] = acc[i][j];
    if (NORM) Rn[i] = nacc[i];
  }
}

template <typename T, int NQ>
void raw_dots_all(const T* x, int64_t ldx, const T* Mp, int64_t Cp, int64_t S, int64_t C, Vec<T>* R) {
  constexpr int L = lanes<T>();
  Vec<T>* Rn = R + S * L;
  for (int64_t s = 0; s < S; s += 5) {
    const bool first = s == 0;
    Vec<T>* Rs = R + s * L;
    const T* Ms = Mp + s * Cp;
    switch (std::min<int64_t>(5, S - s) + (first ? 8 : 0)) {
      case 13: raw_dots<T, NQ, 5, true>(x, ldx, Ms, Cp, C, Rs, Rn); break;
      case 12: raw_dots<T, NQ, 4, true>(x, ldx, Ms, Cp, C, Rs, Rn); break;
      case 11: raw_dots<T, NQ, 3, true>(x, ldx, Ms, Cp, C, Rs, Rn); break;
      case 10: raw_dots<T, NQ, 2, true>(x, ldx, Ms, Cp, C, Rs, Rn); break;
      case 9: raw_dots<T, NQ, 1, true>(x, ldx, Ms, Cp, C, Rs, Rn); break;
      case 5: raw_dots<T, NQ, 5, false>(x, ldx, Ms, Cp, C, Rs, Rn); break;
      case 4: raw_dots<T, NQ, 4, false>(x, ldx, Ms, Cp, C, Rs, Rn); break;
      case 3: raw_dots<T, NQ, 3, false>(x, ldx, Ms, Cp, C, Rs, Rn); break;
      case 2: raw_dots<T, NQ, 2, false>(x, ldx, Ms, Cp, C, Rs, Rn); break;
      case 1: raw_dots<T, NQ, 1, false>(x, ldx, Ms, Cp, C, Rs, Rn); break;
      default: break;
    }
  }
}

// out_i[c .. c + NV L) = sum_s wt[s * L + i0 + i] * Mp[s][...] for NQ queries of the block.
template <typename T, int NQ, int NV, bool STREAM>
inline void rows_combine_block(const T* wt, int i0, const T* Mp, int64_t Cp, int64_t S, int64_t c, T* out,
                               int64_t ldo) {
  constexpr int L = lanes<T>();
  Vec<T> acc[NQ][NV];
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = vzero<T>();
  for (int64_t s = 0; s < S; ++s) {
    Vec<T> mv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) mv[v] = vload(Mp + s * Cp + c + v * L);
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) {
      const Vec<T> a = vsplat(wt + s * L + i0 + i);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = vfma(a, mv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      if (STREAM) vstream(out + i * ldo + c + v * L, acc[i][v]);
      else vstore(out + i * ldo + c + v * L, acc[i][v]);
    }
}

template <typename T, int NQ, int NV, bool STREAM>
void rows_combine(const T* wt, int i0, const T* Mp, int64_t Cp, int64_t S, int64_t C, T* out) {
  constexpr int L = lanes<T>();
  int64_t c = 0;
  for (; c + NV * L <= C; c += NV * L) rows_combine_block<T, NQ, NV, STREAM>(wt, i0, Mp, Cp, S, c, out, C);
  for (; c + L <= C; c += L) rows_combine_block<T, NQ, 1, STREAM>(wt, i0, Mp, Cp, S, c, out, C);
  for (; c < C; ++c)
    for (int i = 0; i < NQ; ++i) {
      T acc = T(0);
      for (int64_t s = 0; s < S; ++s) acc = sfma(wt[s * L + i0 + i], Mp[s * Cp + c], acc);
      out[i * C + c] = acc;
    }
}

// Weights, top-2 and (with read != nullptr) read of the query blocks [bb, be) (L queries each).
template <typename T>
void rows_forward(const T* q, const T* Mp, int64_t Cp, const T* inv_mn, int64_t N, int64_t S, int64_t C, int64_t bb,
                  int64_t be, T* W, T* read, int64_t* top2) {
  constexpr int L = lanes<T>();
  std::vector<Vec<T>> R((S + 1) * L), sc(S);
  std::vector<T> wt(S * L);
  const bool stream = read != nullptr && C % L == 0 && reinterpret_cast<uintptr_t>(read) % sizeof(Vec<T>) == 0;
  for (int64_t b = bb; b < be; ++b) {
    const int64_t n0 = b * L, nq = std::min<int64_t>(L, N - n0);
    const T* qb = q + n0 * C;
    if (nq < L) std::fill(R.begin(), R.end(), vzero<T>());  // lanes of absent queries: 0, never written
    int64_t i = 0;
    for (; i + 2 <= nq; i += 2) {
      prefetch_rows(qb + (L + i) * C, std::min<int64_t>(2, N - (n0 + L + i)) * C);
      raw_dots_all<T, 2>(qb + i * C, C, Mp, Cp, S, C, R.data() + i);
    }
    if (i < nq) raw_dots_all<T, 1>(qb + i * C, C, Mp, Cp, S, C, R.data() + i);
    // lane i of each vector below is query n0 + i
    const Vec<T> n2 = reduce_lanes(R.data() + S * L);
    const Vec<T> qn = vsqrt(n2), eps = vbcast<T>(T(kEps));
    const Vec<T> inv_qn = vbcast<T>(T(1)) / (qn < eps ? eps : qn);  // 1 / max(||q||, eps), as std::max
    Vec<T> v1 = vzero<T>(), v2 = vbcast<T>(-std::numeric_limits<T>::infinity()), i1 = vzero<T>(), i2 = vzero<T>();
    for (int64_t s = 0; s < S; ++s) {
      const Vec<T> v = reduce_lanes(R.data() + s * L) * inv_qn * inv_mn[s];
      sc[s] = v;
      if (s == 0) { v1 = v; continue; }
      const Vec<T> js = vbcast<T>(T(s));
      const auto gt1 = v > v1, gt2 = v > v2;  // strict '>': an equal score keeps the lower index
      v2 = gt1 ? v1 : (gt2 ? v : v2);
      i2 = gt1 ? i1 : (gt2 ? js : i2);
      v1 = gt1 ? v : v1;
      i1 = gt1 ? js : i1;
    }
    Vec<T> sum = vzero<T>();
    for (int64_t s = 0; s < S; ++s) {
      sc[s] = vexp(sc[s] - v1);  // v1: the row's maximum, subtracted by the safe softmax
      sum += sc[s];
    }
    const Vec<T> inv = vbcast<T>(T(1)) / sum;
    for (int64_t s = 0; s < S; ++s) vstore(wt.data() + s * L, sc[s] * inv);
    for (int64_t k = 0; k < nq; ++k) {
      T* w = W + (n0 + k) * S;
      for (int64_t s = 0; s < S; ++s) w[s] = wt[s * L + k];
      top2[(n0 + k) * 2] = int64_t(i1[k]);
      top2[(n0 + k) * 2 + 1] = S == 1 ? 0 : int64_t(i2[k]);
    }
    if (read == nullptr) continue;
    T* rb = read + n0 * C;
    i = 0;
    if (stream) {
      for (; i + 4 <= nq; i += 4) rows_combine<T, 4, 3, true>(wt.data(), int(i), Mp, Cp, S, C, rb + i * C);
      for (; i + 2 <= nq; i += 2) rows_combine<T, 2, 3, true>(wt.data(), int(i), Mp, Cp, S, C, rb + i * C);
    }
    for (; i + 4 <= nq; i += 4) rows_combine<T, 4, 3, false>(wt.data(), int(i), Mp, Cp, S, C, rb + i * C);
    for (; i + 2 <= nq; i += 2) rows_combine<T, 2, 3, false>(wt.data(), int(i), Mp, Cp, S, C, rb + i * C);
    if (i < nq) rows_combine<T, 1, 3, false>(wt.data(), int(i), Mp, Cp, S, C, rb + i * C);
  }
  if (stream) vstream_fence();
}

template <typename T>
void split_read(const T* W, const T* mem, int64_t N, int64_t S, int64_t C, T* read);

template <typename T>
void forward_impl(const T* q, const T* mem, int64_t N, int64_t S, int64_t C, T* W, T* read, int64_t* top2) {
  constexpr int L = lanes<T>();
  const int64_t Sp = round_up(S, L);
  std::vector<T> mn(S), mraw(S), inv_mn(Sp, T(0));
  slot_norms(mem, S, C, mn.data(), mraw.data(), inv_mn.data());

  if (use_rows<T>(N, S, C)) {
    const int64_t Cp = round_up(C, L), nblk = (N + L - 1) / L;
    std::vector<T> Mp(S * Cp, T(0));
    for (int64_t s = 0; s < S; ++s) std::memcpy(Mp.data() + s * Cp, mem + s * C, sizeof(T) * C);
    // read fused into the block sweep when every thread has enough blocks, else split over the width
    // below (the same bits either way)
    const bool fused = nblk >= 4 * at::get_num_threads();
    // chunks of kRowsGrain blocks pulled by the threads (parallel.h): a preempted thread leaves its
    // remaining chunks to the others instead of holding the whole region up
    mgnet::parallel_dynamic(nblk, kRowsGrain, [&](int64_t bb, int64_t be) {
      rows_forward<T>(q, Mp.data(), Cp, inv_mn.data(), N, S, C, bb, be, W, fused ? read : nullptr, top2);
    });
    if (fused) return;
    split_read<T>(W, mem, N, S, C, read);
    return;
  }

  const int64_t ntiles = (N + TQ - 1) / TQ;
  const int64_t nch = thread_chunks(ntiles);
  // with enough tiles per thread the read is computed right after the tile's weights (one sweep, one
  // parallel region); with few queries it is split over the width afterwards
  // wide regime (mem does not fit in L2 next to the tiles, few queries): dot products blocked over the
  // width, then read = W @ mem of the chunk's queries in packed column blocks (one parallel region: on a
  // shared machine every barrier can wait a whole scheduler slice for a preempted thread)
  const bool wide = is_wide<T>(N, S, C);
  const bool fused_read = !wide && ntiles >= 4 * at::get_num_threads();
  std::vector<T> G(wide ? N * Sp : 0);
  at::parallel_for(0, nch, 1, [&](int64_t cb, int64_t ce) {
    std::vector<T> sc(TQ * Sp), Mp, Tq;
    for (int64_t ch = cb; ch < ce; ++ch) {
      const int64_t tb = ntiles * ch / nch, te = ntiles * (ch + 1) / nch;
      if (wide) blocked_dots<T>(q, mem, N, S, C, tb, te, G.data(), Sp);
      for (int64_t t = tb; t < te; ++t) {
        const int64_t n0 = t * TQ, nq = std::min<int64_t>(TQ, N - n0);
        const T* qt = q + n0 * C;
        T* scores = wide ? G.data() + n0 * Sp : sc.data();
        if (!wide) MGNET_UPTO4_SWITCH(nq, NQ, [&] { dots_tile<T, NQ>(qt, C, mem, C, S, C, scores, Sp); });
        for (int64_t i = 0; i < nq; ++i) {
          T* r = scores + i * Sp;
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
          MGNET_UPTO4_SWITCH(nq, NQ, [&] { combine_tile<T, NQ, false>(W + n0 * S, S, mem, S, C, 0, C, nullptr, nullptr,
                                                                read + n0 * C); });
      }
      if (wide) {  // read of this chunk's queries, in the same parallel region (no barrier)
        const int64_t r0 = tb * TQ, nr = std::min<int64_t>(N, te * TQ) - r0, cw = RB * L;
        if (Mp.empty()) Mp.resize(S * cw);
        for (int64_t c0 = 0; c0 < C; c0 += cw) {
          const int64_t cn = std::min<int64_t>(cw, C - c0);
          if (cn < cw && Tq.size() < size_t(nr * cw)) Tq.resize(nr * cw);
          read_block<T>(W + r0 * S, mem, nr, S, C, c0, cn, Mp.data(), Tq.data(), read + r0 * C);
        }
      }
    }
  });
  if (fused_read || wide) return;
  split_read<T>(W, mem, N, S, C, read);
}

// read = W @ mem over (width chunk, tile): a thread keeps its chunk of mem in cache across tiles
template <typename T>
void split_read(const T* W, const T* mem, int64_t N, int64_t S, int64_t C, T* read) {
  const int64_t ntiles = (N + TQ - 1) / TQ;
  const int64_t ncc = std::max<int64_t>(1, (C + CW - 1) / CW);
  at::parallel_for(0, ntiles * ncc, 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t cc = u / ntiles, t = u % ntiles;
      const int64_t n0 = t * TQ, nq = std::min<int64_t>(TQ, N - n0);
      const int64_t c0 = cc * CW, c1 = std::min<int64_t>(C, c0 + CW);
      MGNET_UPTO4_SWITCH(nq, NQ, [&] { combine_tile<T, NQ, false>(W + n0 * S, S, mem, S, C, c0, c1, nullptr, nullptr,
                                                            read + n0 * C); });
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
  const int64_t nch = reduction_chunks(ntiles);
  // grad_mem strategy: per-chunk partials fused into the query sweep when a partial stays in L2 (it is
  // read and written once per tile) and each chunk has many tiles; otherwise a second sweep parallel
  // over the width.
  const bool fused_gm = S * C * int64_t(sizeof(T)) <= 128 * 1024 && ntiles >= 4 * nch;
  std::vector<T> B(fused_gm ? 0 : N * S);                    // b, for the width sweep
  std::vector<T> Beta(fused_gm ? 0 : N);                     // beta, for the width sweep
  std::vector<T> gamma_part(nch * Sp, T(0));                 // sum_n gs*score per chunk
  std::vector<T> gm_part(fused_gm ? nch * S * C : 0, T(0));  // grad_mem partials per chunk
  const T tiny = std::numeric_limits<T>::min();

  // the width sweep's dot products grad_read . mem are blocked over the width (a KW-column block of mem
  // stays in L2 across the chunk's tiles) into G, N x Sp
  std::vector<T> G(fused_gm ? 0 : N * Sp);
  // the chunks are pulled by the threads (parallel.h); every partial belongs to its chunk
  mgnet::parallel_dynamic(nch, 1, [&](int64_t cb, int64_t ce) {
    std::vector<T> gdt(TQ * Sp), wt(TQ * Sp, T(0)), bt(TQ * Sp, T(0));
    T beta[TQ];
    for (int64_t ch = cb; ch < ce; ++ch) {
      T* gpart = gamma_part.data() + ch * Sp;
      const int64_t tb = ntiles * ch / nch, te = ntiles * (ch + 1) / nch;
      if (!fused_gm) {
        blocked_dots<T>(gR, mem, N, S, C, tb, te, G.data(), Sp);
      }
      for (int64_t t = tb; t < te; ++t) {
        const int64_t n0 = t * TQ, nq = std::min<int64_t>(TQ, N - n0);
        const T* qt = q + n0 * C;
        const T* gt = gR + n0 * C;
        if (t + 1 < te) {  // the next tile's rows (q is first read by the norms below, after the dots)
          const int64_t nn = std::min<int64_t>(TQ, N - n0 - TQ) * C;
          prefetch_rows(qt + TQ * C, nn);
          if (fused_gm) prefetch_rows(gt + TQ * C, nn);
        }
        T* gd = fused_gm ? gdt.data() : G.data() + n0 * Sp;
        if (fused_gm) MGNET_UPTO4_SWITCH(nq, NQ, [&] { dots_tile<T, NQ>(gt, C, mem, C, S, C, gd, Sp); });
        for (int64_t i = 0; i < nq; ++i) {
          const T* w_in = W + (n0 + i) * S;
          const T* gw_in = gW + (n0 + i) * S;
          T* w = wt.data() + i * Sp;
          T* g = gd + i * Sp;
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
        if (fused_gm) {
          MGNET_UPTO4_SWITCH(nq, NQ, [&] { combine_tile<T, NQ, true>(bt.data(), Sp, mem, S, C, 0, C, qt, beta, gq + n0 * C); });
          MGNET_UPTO4_SWITCH(nq, NQ, [&] { gmem_accumulate<T, NQ>(wt.data(), bt.data(), Sp, gt, qt, S, C,
                                                            gm_part.data() + ch * S * C); });
        } else {
          for (int64_t i = 0; i < nq; ++i) {
            std::memcpy(B.data() + (n0 + i) * S, bt.data() + i * Sp, sizeof(T) * S);
            Beta[n0 + i] = beta[i];
          }
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
    const int64_t cw = PB * L;
    const int64_t ncc = std::max<int64_t>(1, (C + cw - 1) / cw);
    const bool pack = N <= 2048;  // P: 2 N PB L elements per thread
    at::parallel_for(0, ncc, 1, [&](int64_t b, int64_t e) {
      std::vector<T> P(pack ? 2 * N * cw : 0), Mp(pack ? S * cw : 0);
      std::vector<T> Tq, Tm;
      for (int64_t cc = b; cc < e; ++cc) {
        const int64_t c0 = cc * cw, c1 = std::min<int64_t>(C, c0 + cw);
        if (pack) {
          if (c1 - c0 < cw && Tq.empty()) { Tq.resize(N * cw); Tm.resize(S * cw); }
          width_block<T>(W, B.data(), Beta.data(), gamma.data(), gR, q, mem, N, S, C, c0, c1 - c0, P.data(), Mp.data(),
                         Tq.data(), Tm.data(), gq, gm);
          continue;
        }
        for (int64_t t = 0; t < ntiles; ++t) {
          const int64_t n0 = t * TQ, nq = std::min<int64_t>(TQ, N - n0);
          MGNET_UPTO4_SWITCH(nq, NQ, [&] { combine_tile<T, NQ, true>(B.data() + n0 * S, S, mem, S, C, c0, c1, q + n0 * C,
                                                               Beta.data() + n0, gq + n0 * C); });
        }
        int64_t s = 0;
        for (; s + 4 <= S; s += 4) gmem_columns<T, 4>(W, B.data(), gR, q, mem, gamma.data(), N, S, C, s, c0, c1, gm);
        for (; s < S; ++s) gmem_columns<T, 1>(W, B.data(), gR, q, mem, gamma.data(), N, S, C, s, c0, c1, gm);
      }
    });
  }
}

// --------------------------------------------------------------------------- torch glue
// The large outputs (read, grad_q: N x C; the weights) come from common/buffer_cache.h: they are written
// once, right after allocation, and a fresh mapping's first-touch page zeroing cost more than the
// kernel itself.
std::tuple<at::Tensor, at::Tensor, at::Tensor> memory_address_forward_cpu(const at::Tensor& q_, const at::Tensor& mem_) {
  const char* fn = "memory_address_forward_cpu";
  mgnet_memory::check_forward_args(fn, /*cuda=*/false, q_, mem_);
  mgnet::check_cpu_float(q_, "q", fn);
  auto q = q_.contiguous();
  auto mem = mem_.contiguous();
  const int64_t N = q.size(0), C = q.size(1), S = mem.size(0);
  auto W = mgnet::empty_cached({N, S}, q.options());
  auto read = mgnet::empty_cached({N, C}, q.options());
  auto top2 = mgnet::empty_cached({N, 2}, q.options().dtype(at::kLong));
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
  mgnet_memory::check_backward_args(fn, /*cuda=*/false, grad_weights, grad_read, q_, mem_, weights);
  mgnet::check_cpu_float(q_, "q", fn);
  const int64_t N = q_.size(0), C = q_.size(1), S = mem_.size(0);
  auto q = q_.contiguous(), mem = mem_.contiguous();
  auto gW = grad_weights.contiguous(), gR = grad_read.contiguous(), W = weights.contiguous();
  auto gq = mgnet::empty_cached(q.sizes(), q.options()), gm = at::empty_like(mem);
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
