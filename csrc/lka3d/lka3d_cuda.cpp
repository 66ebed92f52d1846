// lka3d / lsta CUDA glue: argument checks, device guard, current stream, dtype mapping, workspaces and
// the small reductions (g_wp = sum_b g_b a2_b^T, bias sums, the batch sum of the weight-gradient
// partials) done with ATen; the kernels live in lka3d_kernels.cu (CUDA headers only). Registers
// torch.ops.mgnet_C.{lka3d,lsta}_{forward,backward}_cuda.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../common/cuda_glue.h"
#include "../common/torch_glue.h"
#include "lka3d_args.h"
#include "lka3d_cuda.h"

namespace {

using mgnet_lka3d_cuda::DType;
using mgnet_lka3d_cuda::Geom;

using mgnet::acc_type;

DType to_dtype(at::ScalarType t, const char* op) { return mgnet::to_dtype(t, op, "x"); }

// The shared checks (lka3d_args.h) and CUDA's int32 volume.
Geom geometry(const at::Tensor& x, const at::Tensor& w0, const at::Tensor& b0, const at::Tensor& w1,
              const at::Tensor& b1, const at::Tensor& wp, const at::Tensor& bp, int64_t dilation, const char* op) {
  TORCH_CHECK(x.dim() == 5, op, ": x must be (B, C, D, H, W), got ", x.sizes());
  const int64_t C = x.size(1);
  mgnet_lka3d::check_weights(op, C, w0, b0, w1, b1, wp, bp, dilation);
  TORCH_CHECK(x.size(2) * x.size(3) * x.size(4) < (int64_t(1) << 31), op, ": volume too large");
  Geom g;
  g.B = x.size(0);
  g.C = C;
  g.D = x.size(2);
  g.H = x.size(3);
  g.W = x.size(4);
  g.k0 = (int)w0.size(-1);
  g.k1 = (int)w1.size(-1);
  g.dil = (int)dilation;
  return g;
}

// weights and biases in the accumulation type, contiguous
at::Tensor acc_param(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

}  // namespace

at::Tensor lka3d_forward_cuda(const at::Tensor& x_, const at::Tensor& w0, const at::Tensor& b0, const at::Tensor& w1,
                              const at::Tensor& b1, const at::Tensor& wp, const at::Tensor& bp, int64_t dilation) {
  const char* op = "lka3d_forward_cuda";
  mgnet_lka3d::check_devices(op, /*cuda=*/true, x_, "x",
                             {{"w0", &w0}, {"b0", &b0}, {"w1", &w1}, {"b1", &b1}, {"wp", &wp}, {"bp", &bp}});
  const at::cuda::CUDAGuard device_guard(x_.device());
  const at::Tensor x = x_.contiguous();
  const Geom g = geometry(x, w0, b0, w1, b1, wp, bp, dilation, op);
  const auto acc = acc_type(x.scalar_type());
  const at::Tensor w0a = acc_param(w0, acc), b0a = acc_param(b0, acc), w1a = acc_param(w1, acc);
  const at::Tensor b1a = acc_param(b1, acc), wpa = acc_param(wp, acc), bpa = acc_param(bp, acc);
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  const auto wopts = x.options().dtype(acc);
  at::Tensor a1 = at::empty({x.numel()}, wopts), a2 = at::empty({x.numel()}, wopts);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = mgnet_lka3d_cuda::lka3d_forward_launch(
      x.data_ptr(), to_dtype(x.scalar_type(), op), w0a.data_ptr(), b0a.data_ptr(), w1a.data_ptr(), b1a.data_ptr(),
      wpa.data_ptr(), bpa.data_ptr(), a1.data_ptr(), false, a2.data_ptr(), out.data_ptr(), g, stream);
  mgnet::check_launch(err, op);
  return out;
}

std::vector<at::Tensor> lka3d_backward_cuda(const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& w0,
                                            const at::Tensor& b0, const at::Tensor& w1, const at::Tensor& b1,
                                            const at::Tensor& wp, const at::Tensor& bp, int64_t dilation) {
  const char* op = "lka3d_backward_cuda";
  mgnet_lka3d::check_devices(op, /*cuda=*/true, x_, "x",
                             {{"grad", &grad_}, {"w0", &w0}, {"b0", &b0}, {"w1", &w1}, {"b1", &b1}, {"wp", &wp},
                              {"bp", &bp}});
  const at::cuda::CUDAGuard device_guard(x_.device());
  const at::Tensor x = x_.contiguous();
  TORCH_CHECK(grad_.sizes() == x.sizes(), op, ": grad must have x's shape ", x.sizes(), ", got ", grad_.sizes());
  const at::Tensor grad = grad_.to(x.scalar_type()).contiguous();
  const Geom g = geometry(x, w0, b0, w1, b1, wp, bp, dilation, op);
  const auto acc = acc_type(x.scalar_type());
  const at::Tensor w0a = acc_param(w0, acc), b0a = acc_param(b0, acc), w1a = acc_param(w1, acc);
  const at::Tensor b1a = acc_param(b1, acc), wpa = acc_param(wp, acc);
  const auto wopts = x.options().dtype(acc);
  const int64_t N = g.D * g.H * g.W;
  at::Tensor gx = at::empty_like(x);
  at::Tensor a1 = at::empty({g.B, g.C, N}, wopts), a2 = at::empty({g.B, g.C, N}, wopts);
  at::Tensor g2 = at::empty({g.B, g.C, N}, wopts), g1 = at::empty({g.B, g.C, N}, wopts);
  at::Tensor pw0 = at::zeros({g.B, g.C, (int64_t)g.k0 * g.k0 * g.k0}, wopts);
  at::Tensor pw1 = at::zeros({g.B, g.C, (int64_t)g.k1 * g.k1 * g.k1}, wopts);
  if (x.numel() == 0) {
    return {gx.zero_(), at::zeros_like(w0), at::zeros_like(b0), at::zeros_like(w1), at::zeros_like(b1),
            at::zeros_like(wp), at::zeros_like(bp)};
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = mgnet_lka3d_cuda::lka3d_backward_launch(
      grad.data_ptr(), x.data_ptr(), to_dtype(x.scalar_type(), op), w0a.data_ptr(), b0a.data_ptr(), w1a.data_ptr(),
      b1a.data_ptr(), wpa.data_ptr(), a1.data_ptr(), a2.data_ptr(), g2.data_ptr(), g1.data_ptr(), gx.data_ptr(),
      pw0.data_ptr(), pw1.data_ptr(), g, stream);
  mgnet::check_launch(err, op);
  const at::Tensor ga = grad.to(acc).view({g.B, g.C, N});
  const at::Tensor gwp = at::matmul(ga, a2.transpose(1, 2)).sum(0);  // sum_b g_b a2_b^T (C, C)
  const at::Tensor gbp = ga.sum(at::IntArrayRef{0, 2});
  const at::Tensor gb1 = g2.sum(at::IntArrayRef{0, 2});
  const at::Tensor gb0 = g1.sum(at::IntArrayRef{0, 2});
  return {gx,
          pw0.sum(0).view(w0.sizes()).to(w0.scalar_type()),
          gb0.to(b0.scalar_type()),
          pw1.sum(0).view(w1.sizes()).to(w1.scalar_type()),
          gb1.to(b1.scalar_type()),
          gwp.view(wp.sizes()).to(wp.scalar_type()),
          gbp.to(bp.scalar_type())};
}

at::Tensor lsta_forward_cuda(const at::Tensor& e_, const at::Tensor& w0, const at::Tensor& b0, const at::Tensor& w1,
                             const at::Tensor& b1, const at::Tensor& wp, const at::Tensor& bp, int64_t dilation) {
  const char* op = "lsta_forward_cuda";
  mgnet_lka3d::check_devices(op, /*cuda=*/true, e_, "e", {});
  const at::cuda::CUDAGuard device_guard(e_.device());
  const at::Tensor e = e_.contiguous();
  const int64_t B = e.size(0), t = e.size(1), c = e.size(2), h = e.size(3), w = e.size(4);
  const auto acc = acc_type(e.scalar_type());
  at::Tensor out = at::empty_like(e);
  if (e.numel() == 0) return out;
  at::Tensor f = at::empty({B, 1, t, h, w}, e.options().dtype(acc));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  cudaError_t err = mgnet_lka3d_cuda::lsta_mean_launch(e.data_ptr(), nullptr, to_dtype(e.scalar_type(), op),
                                                       f.data_ptr(), nullptr, B * t, c, h * w, stream);
  mgnet::check_launch(err, op, "mean kernel");
  const at::Tensor fo = lka3d_forward_cuda(f, w0.to(acc), b0.to(acc), w1.to(acc), b1.to(acc), wp.to(acc), bp.to(acc),
                                           dilation);
  err = mgnet_lka3d_cuda::lsta_gate_launch(e.data_ptr(), to_dtype(e.scalar_type(), op), fo.data_ptr(), nullptr,
                                           out.data_ptr(), B * t, c, h * w, stream);
  mgnet::check_launch(err, op, "gate kernel");
  return out;
}

std::vector<at::Tensor> lsta_backward_cuda(const at::Tensor& grad_, const at::Tensor& e_, const at::Tensor& w0,
                                           const at::Tensor& b0, const at::Tensor& w1, const at::Tensor& b1,
                                           const at::Tensor& wp, const at::Tensor& bp, int64_t dilation) {
  const char* op = "lsta_backward_cuda";
  mgnet_lka3d::check_devices(op, /*cuda=*/true, e_, "e", {{"grad", &grad_}});
  const at::cuda::CUDAGuard device_guard(e_.device());
  TORCH_CHECK(grad_.sizes() == e_.sizes(), op, ": grad must have e's shape ", e_.sizes(), ", got ", grad_.sizes());
  const at::Tensor e = e_.contiguous();
  const at::Tensor grad = grad_.to(e.scalar_type()).contiguous();
  const int64_t B = e.size(0), t = e.size(1), c = e.size(2), h = e.size(3), w = e.size(4);
  const auto acc = acc_type(e.scalar_type());
  at::Tensor ge = at::empty_like(e);
  if (e.numel() == 0) {
    return {ge, at::zeros_like(w0), at::zeros_like(b0), at::zeros_like(w1), at::zeros_like(b1),
            at::zeros_like(wp), at::zeros_like(bp)};
  }
  const auto aopts = e.options().dtype(acc);
  at::Tensor f = at::empty({B, 1, t, h, w}, aopts), gsum = at::empty({B, 1, t, h, w}, aopts);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  cudaError_t err = mgnet_lka3d_cuda::lsta_mean_launch(e.data_ptr(), grad.data_ptr(), to_dtype(e.scalar_type(), op),
                                                       f.data_ptr(), gsum.data_ptr(), B * t, c, h * w, stream);
  mgnet::check_launch(err, op, "mean kernel");
  const at::Tensor w0a = w0.to(acc), b0a = b0.to(acc), w1a = w1.to(acc), b1a = b1.to(acc), wpa = wp.to(acc),
                   bpa = bp.to(acc);
  const at::Tensor fo = lka3d_forward_cuda(f, w0a, b0a, w1a, b1a, wpa, bpa, dilation);
  const at::Tensor s = at::sigmoid(fo);
  const at::Tensor gfo = (gsum * s * (1 - s)).contiguous();  // small (B, 1, t, h, w) volume
  std::vector<at::Tensor> gs = lka3d_backward_cuda(gfo, f, w0a, b0a, w1a, b1a, wpa, bpa, dilation);
  err = mgnet_lka3d_cuda::lsta_gate_launch(grad.data_ptr(), to_dtype(e.scalar_type(), op), fo.data_ptr(),
                                           gs[0].data_ptr(), ge.data_ptr(), B * t, c, h * w, stream);
  mgnet::check_launch(err, op, "gate kernel");
  return {ge,
          gs[1].to(w0.scalar_type()),
          gs[2].to(b0.scalar_type()),
          gs[3].to(w1.scalar_type()),
          gs[4].to(b1.scalar_type()),
          gs[5].to(wp.scalar_type()),
          gs[6].to(bp.scalar_type())};
}

TORCH_LIBRARY_FRAGMENT(mgnet_C, m) {
  m.def("lka3d_forward_cuda", &lka3d_forward_cuda);
  m.def("lka3d_backward_cuda", &lka3d_backward_cuda);
  m.def("lsta_forward_cuda", &lsta_forward_cuda);
  m.def("lsta_backward_cuda", &lsta_backward_cuda);
}
