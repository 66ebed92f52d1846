// The channel-mixing (GEMM-shaped) parts of lka3d's CPU kernels (lka3d_cpu.cpp):
//   pointwise       out[b] = w @ in[b] + bias          (C x C weight, C x N channel slabs; forward and
//                                                       the backward's G2 = wp^T g)
//   channel_dots    gw[b][co][ci] = <g[b][co], a[b][ci]>  (the backward's grad of wp, per batch)
// Both are register-blocked for the vector registers of the ISA built for (csrc/common/vec.h), and
// both keep their per-element summation order fixed by the shapes alone (bit-identical at any thread
// count; the tasks are pulled dynamically, csrc/common/parallel.h).
//
// The channel slabs have a row stride of N = D*H*W elements: 32 KiB for the (8, 32, 32) volume, so
// that every row of a C-row panel falls in the same L1 sets (the former pointwise read its 64-row
// panel from L2 at every step, and its 4 x 64-lane accumulator block spilled: it ran at half the rate
// of the depthwise convolutions). pointwise therefore copies a task's panel (C x PW_NT) into a
// contiguous buffer first.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../common/parallel.h"
#include "../common/vec.h"

namespace mgnet_lka3d {

using mgnet::vec::lanes;
using mgnet::vec::Vec;

constexpr int64_t PW_NT = 64;  // spatial elements per pointwise task (the packed panel: C x PW_NT)
constexpr int PW_CO = 6;       // output channels per register block (PW_CO x 2 vectors of accumulators)

// acc rows co0 .. co0 + NJ of the panel's columns [n, n + NV L): bias + sum_ci w[co][ci] * P[ci][n ..]
template <typename T, int NJ, int NV>
inline void pointwise_block(const T* P, const T* w, const T* bias, int64_t C, int64_t co0, int64_t n, T* out,
                            int64_t ldo) {
  using namespace mgnet::vec;
  constexpr int L = lanes<T>();
  Vec<T> acc[NJ][NV];
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[j][v] = vsplat(bias + co0 + j);
  const T* wr = w + co0 * C;
  for (int64_t ci = 0; ci < C; ++ci) {
    Vec<T> a[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) a[v] = vload(P + ci * PW_NT + n + v * L);
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) {
      const Vec<T> wv = vsplat(wr + j * C + ci);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[j][v] = vfma(wv, a[v], acc[j][v]);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) vstore(out + (co0 + j) * ldo + n + v * L, acc[j][v]);
}

// All output channels of one packed panel (PW_NT columns, zero past the volume's end) into out
// (rows ldo apart).
template <typename T>
void pointwise_panel(const T* P, const T* w, const T* bias, int64_t C, T* out, int64_t ldo) {
  constexpr int L = lanes<T>();
  constexpr int NV = PW_NT >= 2 * L ? 2 : 1;
  static_assert(PW_NT % (NV * L) == 0, "pointwise: the panel is a whole number of register blocks");
  int64_t co = 0;
  for (; co + PW_CO <= C; co += PW_CO)
    for (int64_t n = 0; n < PW_NT; n += NV * L) pointwise_block<T, PW_CO, NV>(P, w, bias, C, co, n, out, ldo);
  for (int64_t n = 0; n < PW_NT; n += NV * L) {
    switch (C - co) {
      case 5: pointwise_block<T, 5, NV>(P, w, bias, C, co, n, out, ldo); break;
      case 4: pointwise_block<T, 4, NV>(P, w, bias, C, co, n, out, ldo); break;
      case 3: pointwise_block<T, 3, NV>(P, w, bias, C, co, n, out, ldo); break;
      case 2: pointwise_block<T, 2, NV>(P, w, bias, C, co, n, out, ldo); break;
      case 1: pointwise_block<T, 1, NV>(P, w, bias, C, co, n, out, ldo); break;
      default: break;
    }
  }
}

// out[b][co][n] = bias[co] + sum_ci w[co][ci] * in[b][ci][n] for b < nb; in/out (nb, C, N).
template <typename T>
void pointwise(const T* in, const T* w, const T* bias, T* out, int64_t nb, int64_t C, int64_t N) {
  const int64_t ntiles = (N + PW_NT - 1) / PW_NT;
  // ~0.25 ms of one core per chunk of tasks
  const int64_t grain = std::max<int64_t>(1, (int64_t(8) << 20) / std::max<int64_t>(1, PW_NT * C * C));
  mgnet::parallel_dynamic(nb * ntiles, grain, [&](int64_t s, int64_t e) {
    std::vector<T> P(static_cast<size_t>(C * PW_NT)), O;
    for (int64_t idx = s; idx < e; ++idx) {
      const int64_t b = idx / ntiles, n0 = (idx % ntiles) * PW_NT, nt = std::min(PW_NT, N - n0);
      const T* ib = in + b * C * N + n0;
      for (int64_t ci = 0; ci < C; ++ci) {
        std::memcpy(P.data() + ci * PW_NT, ib + ci * N, sizeof(T) * nt);
        if (nt < PW_NT) std::memset(P.data() + ci * PW_NT + nt, 0, sizeof(T) * (PW_NT - nt));
      }
      T* ob = out + b * C * N + n0;
      if (nt == PW_NT) {
        pointwise_panel<T>(P.data(), w, bias, C, ob, N);
        continue;
      }
      O.resize(static_cast<size_t>(C * PW_NT));  // the last, partial tile: through a panel-shaped buffer
      pointwise_panel<T>(P.data(), w, bias, C, O.data(), PW_NT);
      for (int64_t co = 0; co < C; ++co) std::memcpy(ob + co * N, O.data() + co * PW_NT, sizeof(T) * nt);
    }
  });
}

// gw[co0 + i][ci0 + j] = <g[co0 + i], a[ci0 + j]> over n < N (rows N apart), NI x NJ lane-wise
// partial sums in registers, then a fixed-order reduction.
template <typename T, int NI, int NJ>
inline void channel_dots_block(const T* g, const T* a, int64_t N, int64_t C, int64_t co0, int64_t ci0, T* gw) {
  using namespace mgnet::vec;
  constexpr int L = lanes<T>();
  Vec<T> acc[NI][NJ];
#pragma GCC unroll 8
  for (int i = 0; i < NI; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) acc[i][j] = vzero<T>();
  const T* gr = g + co0 * N;
  const T* ar = a + ci0 * N;
  int64_t n = 0;
  for (; n + L <= N; n += L) {
    Vec<T> av[NJ];
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) av[j] = vload(ar + j * N + n);
#pragma GCC unroll 8
    for (int i = 0; i < NI; ++i) {
      const Vec<T> gv = vload(gr + i * N + n);
#pragma GCC unroll 8
      for (int j = 0; j < NJ; ++j) acc[i][j] = vfma(gv, av[j], acc[i][j]);
    }
  }
  for (int i = 0; i < NI; ++i)
    for (int j = 0; j < NJ; ++j) {
      T s = hsum<T>(acc[i][j]);
      for (int64_t m = n; m < N; ++m) s += gr[i * N + m] * ar[j * N + m];
      gw[(co0 + i) * C + ci0 + j] = s;
    }
}

// gw[b][co][ci] = <g[b][co], a[b][ci]> for b < nb (g, a: (nb, C, N); gw: (nb, C, C)), blocks of
// 4 x 3 channel pairs (12 accumulators + 3 operands: AVX2's 16 registers).
template <typename T>
void channel_dots(const T* g, const T* a, int64_t nb, int64_t C, int64_t N, T* gw) {
  constexpr int NI = 4, NJ = 3;
  const int64_t nco = (C + NI - 1) / NI;
  mgnet::parallel_dynamic(nb * nco, 1, [&](int64_t s, int64_t e) {
    for (int64_t idx = s; idx < e; ++idx) {
      const int64_t b = idx / nco, co = (idx % nco) * NI, ni = std::min<int64_t>(NI, C - co);
      const T* gb = g + b * C * N;
      const T* ab = a + b * C * N;
      T* out = gw + b * C * C;
      auto row = [&](auto NIc) {
        constexpr int I = decltype(NIc)::value;
        int64_t ci = 0;
        for (; ci + NJ <= C; ci += NJ) channel_dots_block<T, I, NJ>(gb, ab, N, C, co, ci, out);
        if (C - ci == 2) channel_dots_block<T, I, 2>(gb, ab, N, C, co, ci, out);
        if (C - ci == 1) channel_dots_block<T, I, 1>(gb, ab, N, C, co, ci, out);
      };
      switch (ni) {
        case 4: row(std::integral_constant<int, 4>()); break;
        case 3: row(std::integral_constant<int, 3>()); break;
        case 2: row(std::integral_constant<int, 2>()); break;
        default: row(std::integral_constant<int, 1>()); break;
      }
    }
  });
}

}  // namespace mgnet_lka3d
