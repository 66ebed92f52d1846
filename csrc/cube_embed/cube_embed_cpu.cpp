// masked_cube_embed on CPU: the 2x8x8 Conv3d patchify evaluated only at the visible cubes.
//
// Forward, per tile of TILE consecutive output rows (row r = b * Pv + j, cube p = visible[b, j]):
//   1. gather + normalise the 384-value patch of every cube of the tile straight from the frames
//      (uint8 or float) into a cache-sized buffer A (TILE x 384, compute dtype);
//   2. pre-fill the output rows with bias + pos[p] (the epilogue), then out_tile += A @ W^T with one
//      BLAS call on the tile (at::addmm_, single-threaded inside the parallel region).
// Tiles run in parallel (at::parallel_for, OpenMP). No tensor of the full clip's size is created.
//
// Backward recomputes the patches tile by tile: grad_weight = sum_tiles G_tile^T @ A_tile and
// grad_bias = column sums of G, accumulated in one partial per chunk of consecutive tiles (at most
// kChunks chunks, fixed by the number of rows alone) and the partials summed in chunk order, so the
// result is bit-identical at any thread count; grad_pos = scatter-add of G's rows by cube index (pos
// rows are shared across samples; each thread owns a range of pos rows and adds G's rows in row
// order, so the adds need no atomics and their order is fixed too).
//
// Compute dtype: float64 for float64 weights (gradcheck), float32 otherwise (fp16/bf16 weights are
// computed in fp32 and the results cast back).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../common/buffer_cache.h"
#include "../common/torch_glue.h"
#include "cube_embed_args.h"

namespace {

using mgnet_cube::Geom;
using mgnet_cube::K;
constexpr int64_t TILE = 128;      // forward rows per tile: A is 128 x 384 x 4 B = 192 KiB (fits L2)
constexpr int64_t TILE_BWD = 512;  // backward: a longer reduction per grad_weight update (768 KiB)
constexpr int64_t kChunks = 16;    // most grad_weight partials of the backward

// The shared checks (cube_embed_args.h), then the range of `visible` (duplicates are harmless for
// memory safety; the Python front end rejects them).
Geom check_inputs(const char* fn, const at::Tensor& frames, const at::Tensor& visible, const at::Tensor& weight,
                  const std::optional<at::Tensor>& pos, const std::optional<at::Tensor>& mean,
                  const std::optional<at::Tensor>& std_) {
  const Geom g = mgnet_cube::check_args(fn, /*cuda=*/false, frames, visible, weight, pos, mean, std_);
  if (visible.numel() > 0) {
    const int64_t lo = visible.min().item<int64_t>(), hi = visible.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < g.P, fn, ": visible indices must lie in [0, ", g.P, "), got range [", lo, ", ", hi,
                "]");
  }
  return g;
}

// x_norm = x * scale[c] + shift[c]: uint8 -> x / 255, then (x - mean) / std (module docstring)
template <typename acc_t>
void channel_affine(bool is_uint8, const std::optional<at::Tensor>& mean,
                    const std::optional<at::Tensor>& std_, acc_t scale[3], acc_t shift[3]) {
  at::Tensor m = mean.has_value() ? mean->to(at::kDouble).contiguous() : at::zeros({3}, at::kDouble);
  at::Tensor s = std_.has_value() ? std_->to(at::kDouble).contiguous() : at::ones({3}, at::kDouble);
  const double* mp = m.data_ptr<double>();
  const double* sp = s.data_ptr<double>();
  for (int c = 0; c < 3; ++c) {
    const double a = (is_uint8 ? 1.0 / 255.0 : 1.0) / sp[c];
    scale[c] = static_cast<acc_t>(a);
    shift[c] = static_cast<acc_t>(-mp[c] / sp[c]);
  }
}

// Gather + normalise rows [r0, r0 + M) into A (M x 384, row-major).
template <typename in_t, typename acc_t>
inline void gather_tile(const in_t* __restrict__ frames, const int64_t* __restrict__ visible,
                        const Geom& g, int64_t r0, int64_t M, const acc_t* scale,
                        const acc_t* shift, acc_t* __restrict__ A) {
  const int64_t HW = g.H * g.W, THW = g.T * HW;
  for (int64_t i = 0; i < M; ++i) {
    const int64_t r = r0 + i;
    const int64_t b = r / g.Pv;
    const int64_t p = visible[r];
    const int64_t wi = p % g.w, hi = (p / g.w) % g.h, ti = p / (g.w * g.h);
    const in_t* base = frames + b * 3 * THW + (2 * ti) * HW + (8 * hi) * g.W + 8 * wi;
    acc_t* row = A + i * K;
    for (int c = 0; c < 3; ++c) {
      const acc_t sc = scale[c], sh = shift[c];
      for (int dt = 0; dt < 2; ++dt) {
        const in_t* src = base + c * THW + dt * HW;
        acc_t* dst = row + c * 128 + dt * 64;
        for (int dy = 0; dy < 8; ++dy) {
#pragma omp simd
          for (int dx = 0; dx < 8; ++dx)
            dst[dy * 8 + dx] = static_cast<acc_t>(src[dy * g.W + dx]) * sc + sh;
        }
      }
    }
  }
}

template <typename in_t, typename acc_t>
void forward_impl(const at::Tensor& frames, const at::Tensor& visible, const at::Tensor& w2d,
                  const at::Tensor& bias, const std::optional<at::Tensor>& pos, const acc_t* scale,
                  const acc_t* shift, at::Tensor& out, const Geom& g) {
  const int64_t D = w2d.size(0);
  const in_t* fp = frames.data_ptr<in_t>();
  const int64_t* vp = visible.data_ptr<int64_t>();
  const acc_t* bp = bias.data_ptr<acc_t>();
  const acc_t* pp = pos.has_value() ? pos->data_ptr<acc_t>() : nullptr;
  acc_t* op = out.data_ptr<acc_t>();
  const at::Tensor wt = w2d.t();  // (384, D) view, BLAS handles the transpose
  const int64_t ntiles = (g.N + TILE - 1) / TILE;
  const auto opts = w2d.options();
  at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> buf(TILE * K);
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t r0 = tile * TILE, M = std::min(TILE, g.N - r0);
      gather_tile<in_t, acc_t>(fp, vp, g, r0, M, scale, shift, buf.data());
      acc_t* o = op + r0 * D;
      for (int64_t i = 0; i < M; ++i) {  // epilogue first: out = bias + pos[p]
        const acc_t* prow = pp ? pp + vp[r0 + i] * D : nullptr;
        acc_t* orow = o + i * D;
        if (prow) {
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) orow[d] = bp[d] + prow[d];
        } else {
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) orow[d] = bp[d];
        }
      }
      at::Tensor a = at::from_blob(buf.data(), {M, K}, opts);
      at::Tensor ot = at::from_blob(o, {M, D}, opts);
      ot.addmm_(a, wt);  // out_tile += A @ W^T
    }
  });
}

// dst[i] = sum over k of part[k * n + i], k in order (parallel over i: the order is fixed)
template <typename acc_t>
void sum_partials(const acc_t* part, int64_t nparts, int64_t n, acc_t* dst) {
  at::parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dst[i] = part[i];
    for (int64_t k = 1; k < nparts; ++k) {
      const acc_t* pk = part + k * n;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) dst[i] += pk[i];
    }
  });
}

template <typename in_t, typename acc_t>
void backward_impl(const at::Tensor& grad, const at::Tensor& frames, const at::Tensor& visible,
                   const acc_t* scale, const acc_t* shift, at::Tensor& gw2d, at::Tensor& gb,
                   std::optional<at::Tensor>& gp, const Geom& g) {
  const int64_t D = gw2d.size(0);
  const in_t* fp = frames.data_ptr<in_t>();
  const int64_t* vp = visible.data_ptr<int64_t>();
  const acc_t* gr = grad.data_ptr<acc_t>();
  const int64_t ntiles = (g.N + TILE_BWD - 1) / TILE_BWD;
  const int64_t nch = std::min(ntiles, kChunks);
  const auto opts = gw2d.options();
  // one (D x 384) + (D) partial per chunk of consecutive tiles
  at::Tensor gw_part = at::zeros({nch, D, K}, opts);
  at::Tensor gb_part = at::zeros({nch, D}, opts);
  at::parallel_for(0, nch, 1, [&](int64_t c0, int64_t c1) {
    std::vector<acc_t> buf(TILE_BWD * K);
    for (int64_t ch = c0; ch < c1; ++ch) {
      at::Tensor gwl = gw_part[ch];
      acc_t* gbl = gb_part.data_ptr<acc_t>() + ch * D;
      for (int64_t tile = ntiles * ch / nch; tile < ntiles * (ch + 1) / nch; ++tile) {
        const int64_t r0 = tile * TILE_BWD, M = std::min(TILE_BWD, g.N - r0);
        gather_tile<in_t, acc_t>(fp, vp, g, r0, M, scale, shift, buf.data());
        const acc_t* gt = gr + r0 * D;
        at::Tensor a = at::from_blob(buf.data(), {M, K}, opts);
        at::Tensor gtile = at::from_blob(const_cast<acc_t*>(gt), {M, D}, opts);
        gwl.addmm_(gtile.t(), a);  // += G_tile^T @ A_tile
        for (int64_t i = 0; i < M; ++i) {
          const acc_t* grow = gt + i * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) gbl[d] += grow[d];
        }
      }
    }
  });
  sum_partials(gw_part.data_ptr<acc_t>(), nch, D * K, gw2d.data_ptr<acc_t>());
  sum_partials(gb_part.data_ptr<acc_t>(), nch, D, gb.data_ptr<acc_t>());
  if (gp.has_value()) {
    acc_t* gpp = gp->data_ptr<acc_t>();
    // each thread owns the pos rows [p0, p1) and scans all rows of grad for them: no atomics
    at::parallel_for(0, g.P, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t r = 0; r < g.N; ++r) {
        const int64_t p = vp[r];
        if (p < p0 || p >= p1) continue;
        const acc_t* grow = gr + r * D;
        acc_t* dst = gpp + p * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) dst[d] += grow[d];
      }
    });
  }
}

#define CUBE_DISPATCH_FRAMES(TYPE, NAME, ...)                                         \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                                      \
                     AT_DISPATCH_CASE(at::kByte, __VA_ARGS__)                         \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                        \
                     AT_DISPATCH_CASE(at::kDouble, __VA_ARGS__)                       \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)                         \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

}  // namespace

at::Tensor masked_cube_embed_forward_cpu(const at::Tensor& frames_, const at::Tensor& visible_,
                                         const at::Tensor& weight, const at::Tensor& bias,
                                         const std::optional<at::Tensor>& pos,
                                         const std::optional<at::Tensor>& mean,
                                         const std::optional<at::Tensor>& std_) {
  const char* fn = "masked_cube_embed_forward_cpu";
  const Geom g = check_inputs(fn, frames_, visible_, weight, pos, mean, std_);
  mgnet::check_device(bias, "bias", frames_, "frames", /*cuda=*/false, fn);
  const at::Tensor frames = frames_.contiguous(), visible = visible_.contiguous();
  const int64_t D = g.D;
  const at::ScalarType ct = mgnet::acc_type(weight.scalar_type());
  const at::Tensor w2d = weight.reshape({D, K}).to(ct).contiguous();
  const at::Tensor b = bias.to(ct).contiguous();
  std::optional<at::Tensor> p;
  if (pos.has_value()) p = pos->to(ct).contiguous();
  at::Tensor out = mgnet::empty_cached({g.B, g.Pv, D}, w2d.options());
  if (g.N > 0) {
    CUBE_DISPATCH_FRAMES(frames.scalar_type(), "masked_cube_embed_forward_cpu", [&] {
      using in_t = scalar_t;
      MGNET_ACC_SWITCH(ct, acc_t, [&] {
        acc_t sc[3], sh[3];
        channel_affine<acc_t>(frames.scalar_type() == at::kByte, mean, std_, sc, sh);
        forward_impl<in_t, acc_t>(frames, visible, w2d, b, p, sc, sh, out, g);
      });
    });
  }
  return out.to(weight.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_cube_embed_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& frames_, const at::Tensor& visible_,
    const at::Tensor& weight, const std::optional<at::Tensor>& pos,
    const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& std_) {
  const char* fn = "masked_cube_embed_backward_cpu";
  const Geom g = check_inputs(fn, frames_, visible_, weight, pos, mean, std_);
  mgnet_cube::check_grad(fn, grad_, g);
  const at::Tensor frames = frames_.contiguous(), visible = visible_.contiguous();
  const int64_t D = g.D;
  const at::ScalarType ct = mgnet::acc_type(weight.scalar_type());
  const at::Tensor grad = grad_.to(ct).contiguous();
  const auto opts = weight.options().dtype(ct);
  at::Tensor gw = at::zeros({D, K}, opts);
  at::Tensor gb = at::zeros({D}, opts);
  std::optional<at::Tensor> gp;
  if (pos.has_value()) gp = at::zeros({g.P, D}, opts);
  if (g.N > 0) {
    CUBE_DISPATCH_FRAMES(frames.scalar_type(), "masked_cube_embed_backward_cpu", [&] {
      using in_t = scalar_t;
      MGNET_ACC_SWITCH(ct, acc_t, [&] {
        acc_t sc[3], sh[3];
        channel_affine<acc_t>(frames.scalar_type() == at::kByte, mean, std_, sc, sh);
        backward_impl<in_t, acc_t>(grad, frames, visible, sc, sh, gw, gb, gp, g);
      });
    });
  }
  const auto dt = weight.scalar_type();
  return {gw.view(weight.sizes()).to(dt), gb.to(dt),
          gp.has_value() ? gp->to(dt) : at::empty({0}, weight.options())};
}

TORCH_LIBRARY_FRAGMENT(mgnet_C, m) {
  m.def("masked_cube_embed_forward_cpu", &masked_cube_embed_forward_cpu);
  m.def("masked_cube_embed_backward_cpu", &masked_cube_embed_backward_cpu);
}
