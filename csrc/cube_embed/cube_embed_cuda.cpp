// masked_cube_embed CUDA glue: argument checks, device guard, current stream, dtype mapping; the
// kernels live in cube_embed_kernels.cu (CUDA headers only). Registers
// torch.ops.mgnet_C.masked_cube_embed_{forward,backward}_cuda.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../common/cuda_glue.h"
#include "../common/torch_glue.h"
#include "cube_embed_args.h"
#include "cube_embed_cuda.h"

namespace {

using mgnet_cube::DType;
using mgnet_cube::Geom;

// The shared checks (cube_embed_args.h) and CUDA's dtype rule: float frames in the weight's dtype.
Geom check_inputs(const char* op, const at::Tensor& frames, const at::Tensor& visible, const at::Tensor& weight,
                  const std::optional<at::Tensor>& pos, const std::optional<at::Tensor>& mean,
                  const std::optional<at::Tensor>& std_,
                  std::initializer_list<std::pair<const char*, const at::Tensor*>> others) {
  const Geom g = mgnet_cube::check_args(op, /*cuda=*/true, frames, visible, weight, pos, mean, std_, others);
  TORCH_CHECK(frames.scalar_type() == at::kByte || frames.scalar_type() == weight.scalar_type(), op,
              ": float frames must have weight's dtype ", weight.scalar_type(), ", got ", frames.scalar_type());
  return g;
}

DType frames_dtype(const at::Tensor& frames, const char* op) {
  return mgnet::to_dtype(frames.scalar_type(), op, "frames", /*allow_u8=*/true);
}
DType weight_dtype(const at::Tensor& weight, const char* op) { return mgnet::to_dtype(weight.scalar_type(), op, "weight"); }

// x_norm = x * scale[c] + shift[c] (uint8 -> /255, then (x - mean) / std), on the device
std::tuple<at::Tensor, at::Tensor> affine(const at::Tensor& frames, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& mean,
                                          const std::optional<at::Tensor>& std_) {
  const auto opts = frames.options().dtype(at::kDouble);
  at::Tensor m = mean.has_value() ? mean->to(at::kDouble).reshape({3}) : at::zeros({3}, opts);
  at::Tensor s = std_.has_value() ? std_->to(at::kDouble).reshape({3}) : at::ones({3}, opts);
  const double u = frames.scalar_type() == at::kByte ? 1.0 / 255.0 : 1.0;
  const auto acc = mgnet::acc_type(weight.scalar_type());
  return {(u / s).to(acc).contiguous(), (-m / s).to(acc).contiguous()};
}

}  // namespace

at::Tensor masked_cube_embed_forward_cuda(const at::Tensor& frames_, const at::Tensor& visible_,
                                          const at::Tensor& weight_, const at::Tensor& bias_,
                                          const std::optional<at::Tensor>& pos_,
                                          const std::optional<at::Tensor>& mean,
                                          const std::optional<at::Tensor>& std_) {
  const char* op = "masked_cube_embed_forward_cuda";
  const Geom g = check_inputs(op, frames_, visible_, weight_, pos_, mean, std_, {{"bias", &bias_}});
  const at::cuda::CUDAGuard device_guard(frames_.device());
  const at::Tensor frames = frames_.contiguous(), visible = visible_.contiguous();
  const at::Tensor weight = weight_.contiguous(), bias = bias_.to(weight.scalar_type()).contiguous();
  std::optional<at::Tensor> pos;
  if (pos_.has_value()) pos = pos_->to(weight.scalar_type()).contiguous();
  at::Tensor out = at::empty({g.B, g.Pv, g.D}, weight.options());
  if (g.N == 0) return out;
  auto [scale, shift] = affine(frames, weight, mean, std_);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = mgnet_cube::forward_launch(
      frames.data_ptr(), frames_dtype(frames, op), visible.data_ptr<int64_t>(), weight.data_ptr(), bias.data_ptr(),
      pos.has_value() ? pos->data_ptr() : nullptr, weight_dtype(weight, op), scale.data_ptr(), shift.data_ptr(),
      out.data_ptr(), g, stream);
  mgnet::check_launch(err, op);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_cube_embed_backward_cuda(
    const at::Tensor& grad_, const at::Tensor& frames_, const at::Tensor& visible_,
    const at::Tensor& weight_, const std::optional<at::Tensor>& pos_,
    const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& std_) {
  const char* op = "masked_cube_embed_backward_cuda";
  const Geom g = check_inputs(op, frames_, visible_, weight_, pos_, mean, std_, {{"grad", &grad_}});
  mgnet_cube::check_grad(op, grad_, g);
  const at::cuda::CUDAGuard device_guard(frames_.device());
  const at::Tensor frames = frames_.contiguous(), visible = visible_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const at::Tensor grad = grad_.to(weight.scalar_type()).contiguous();
  const auto opts = weight.options().dtype(mgnet::acc_type(weight.scalar_type()));
  at::Tensor gw = at::zeros({g.D, mgnet_cube::K}, opts);
  at::Tensor gb = at::zeros({g.D}, opts);
  at::Tensor gp = pos_.has_value() ? at::zeros({g.P, g.D}, opts) : at::Tensor();
  if (g.N > 0) {
    auto [scale, shift] = affine(frames, weight, mean, std_);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
    const cudaError_t err = mgnet_cube::backward_launch(
        grad.data_ptr(), frames.data_ptr(), frames_dtype(frames, op), visible.data_ptr<int64_t>(),
        weight_dtype(weight, op), scale.data_ptr(), shift.data_ptr(), gw.data_ptr(), gb.data_ptr(),
        gp.defined() ? gp.data_ptr() : nullptr, g, stream);
    mgnet::check_launch(err, op);
  }
  const auto dt = weight.scalar_type();
  return {gw.view(weight.sizes()).to(dt), gb.to(dt),
          gp.defined() ? gp.to(dt) : at::empty({0}, weight.options())};
}

TORCH_LIBRARY_FRAGMENT(mgnet_C, m) {
  m.def("masked_cube_embed_forward_cuda", &masked_cube_embed_forward_cuda);
  m.def("masked_cube_embed_backward_cuda", &masked_cube_embed_backward_cuda);
}
