// masked_cube_embed CUDA glue: argument checks, device guard, current stream, dtype mapping; the
// kernels live in cube_embed_kernels.cu (CUDA headers only). Registers
// torch.ops.mgnet_C.masked_cube_embed_{forward,backward}_cuda.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cube_embed_cuda.h"

namespace {

using mgnet_cube::DType;

DType to_dtype(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kByte: return DType::U8;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kFloat: return DType::F32;
    case at::kDouble: return DType::F64;
    default: TORCH_CHECK(false, "masked_cube_embed (cuda): unsupported dtype ", t, " for ", name);
  }
  return DType::F32;
}

void check_cuda(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  TORCH_CHECK(t.is_cuda(), "masked_cube_embed (cuda): ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == ref.device(), "masked_cube_embed (cuda): ", name, " is on ", t.device(),
              " but frames are on ", ref.device());
}

mgnet_cube::Geom geometry(const at::Tensor& frames, const at::Tensor& visible, const at::Tensor& weight,
                          const std::optional<at::Tensor>& pos) {
  TORCH_CHECK(frames.dim() == 5 && frames.size(1) == 3 && frames.size(2) % 2 == 0 &&
                  frames.size(3) % 8 == 0 && frames.size(4) % 8 == 0,
              "masked_cube_embed (cuda): frames must be (B, 3, T, H, W) with T % 2 == 0 and H, W "
              "multiples of 8, got ", frames.sizes());
  TORCH_CHECK(visible.dim() == 2 && visible.size(0) == frames.size(0) && visible.scalar_type() == at::kLong,
              "masked_cube_embed (cuda): visible must be int64 (B, Pv), got ", visible.scalar_type(), " ",
              visible.sizes());
  TORCH_CHECK(weight.dim() == 5 && weight.size(1) == 3 && weight.size(2) == 2 && weight.size(3) == 8 &&
                  weight.size(4) == 8,
              "masked_cube_embed (cuda): weight must be (D, 3, 2, 8, 8), got ", weight.sizes());
  TORCH_CHECK(frames.scalar_type() == at::kByte || frames.scalar_type() == weight.scalar_type(),
              "masked_cube_embed (cuda): float frames must have weight's dtype ", weight.scalar_type(),
              ", got ", frames.scalar_type());
  mgnet_cube::Geom g;
  g.B = frames.size(0);
  g.T = frames.size(2);
  g.H = frames.size(3);
  g.W = frames.size(4);
  g.h = g.H / 8;
  g.w = g.W / 8;
  g.P = (g.T / 2) * g.h * g.w;
  g.Pv = visible.size(1);
  g.N = g.B * g.Pv;
  g.D = weight.size(0);
  if (pos.has_value())
    TORCH_CHECK(pos->dim() == 2 && pos->size(0) == g.P && pos->size(1) == g.D,
                "masked_cube_embed (cuda): pos must be (P, D) = (", g.P, ", ", g.D, "), got ", pos->sizes());
  return g;
}

// x_norm = x * scale[c] + shift[c] (uint8 -> /255, then (x - mean) / std), on the device
std::tuple<at::Tensor, at::Tensor> affine(const at::Tensor& frames, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& mean,
                                          const std::optional<at::Tensor>& std_) {
  const auto opts = frames.options().dtype(at::kDouble);
  at::Tensor m = mean.has_value() ? mean->to(at::kDouble).reshape({3}) : at::zeros({3}, opts);
  at::Tensor s = std_.has_value() ? std_->to(at::kDouble).reshape({3}) : at::ones({3}, opts);
  const double u = frames.scalar_type() == at::kByte ? 1.0 / 255.0 : 1.0;
  const auto acc = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {(u / s).to(acc).contiguous(), (-m / s).to(acc).contiguous()};
}

}  // namespace

at::Tensor masked_cube_embed_forward_cuda(const at::Tensor& frames_, const at::Tensor& visible_,
                                          const at::Tensor& weight_, const at::Tensor& bias_,
                                          const std::optional<at::Tensor>& pos_,
                                          const std::optional<at::Tensor>& mean,
                                          const std::optional<at::Tensor>& std_) {
  check_cuda(frames_, "frames", frames_);
  check_cuda(visible_, "visible", frames_);
  check_cuda(weight_, "weight", frames_);
  check_cuda(bias_, "bias", frames_);
  if (pos_.has_value()) check_cuda(*pos_, "pos", frames_);
  const at::cuda::CUDAGuard device_guard(frames_.device());
  const at::Tensor frames = frames_.contiguous(), visible = visible_.contiguous();
  const at::Tensor weight = weight_.contiguous(), bias = bias_.to(weight.scalar_type()).contiguous();
  std::optional<at::Tensor> pos;
  if (pos_.has_value()) pos = pos_->to(weight.scalar_type()).contiguous();
  const mgnet_cube::Geom g = geometry(frames, visible, weight, pos);
  at::Tensor out = at::empty({g.B, g.Pv, g.D}, weight.options());
  if (g.N == 0) return out;
  auto [scale, shift] = affine(frames, weight, mean, std_);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = mgnet_cube::forward_launch(
      frames.data_ptr(), to_dtype(frames.scalar_type(), "frames"), visible.data_ptr<int64_t>(),
      weight.data_ptr(), bias.data_ptr(), pos.has_value() ? pos->data_ptr() : nullptr,
      to_dtype(weight.scalar_type(), "weight"), scale.data_ptr(), shift.data_ptr(), out.data_ptr(), g,
      stream);
  TORCH_CHECK(err == cudaSuccess, "masked_cube_embed_forward_cuda: kernel launch failed: ",
              cudaGetErrorString(err));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_cube_embed_backward_cuda(
    const at::Tensor& grad_, const at::Tensor& frames_, const at::Tensor& visible_,
    const at::Tensor& weight_, const std::optional<at::Tensor>& pos_,
    const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& std_) {
  check_cuda(grad_, "grad", frames_);
  check_cuda(frames_, "frames", frames_);
  check_cuda(visible_, "visible", frames_);
  check_cuda(weight_, "weight", frames_);
  const at::cuda::CUDAGuard device_guard(frames_.device());
  const at::Tensor frames = frames_.contiguous(), visible = visible_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const mgnet_cube::Geom g = geometry(frames, visible, weight, pos_);
  TORCH_CHECK(grad_.dim() == 3 && grad_.size(0) == g.B && grad_.size(1) == g.Pv && grad_.size(2) == g.D,
              "masked_cube_embed_backward_cuda: grad must be (B, Pv, D) = (", g.B, ", ", g.Pv, ", ", g.D,
              "), got ", grad_.sizes());
  const at::Tensor grad = grad_.to(weight.scalar_type()).contiguous();
  const auto acc = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = weight.options().dtype(acc);
  at::Tensor gw = at::zeros({g.D, 384}, opts);
  at::Tensor gb = at::zeros({g.D}, opts);
  at::Tensor gp = pos_.has_value() ? at::zeros({g.P, g.D}, opts) : at::Tensor();
  if (g.N > 0) {
    auto [scale, shift] = affine(frames, weight, mean, std_);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
    const cudaError_t err = mgnet_cube::backward_launch(
        grad.data_ptr(), frames.data_ptr(), to_dtype(frames.scalar_type(), "frames"),
        visible.data_ptr<int64_t>(), to_dtype(weight.scalar_type(), "weight"), scale.data_ptr(),
        shift.data_ptr(), gw.data_ptr(), gb.data_ptr(), gp.defined() ? gp.data_ptr() : nullptr, g, stream);
    TORCH_CHECK(err == cudaSuccess, "masked_cube_embed_backward_cuda: kernel launch failed: ",
                cudaGetErrorString(err));
  }
  const auto dt = weight.scalar_type();
  return {gw.view(weight.sizes()).to(dt), gb.to(dt),
          gp.defined() ? gp.to(dt) : at::empty({0}, weight.options())};
}

TORCH_LIBRARY_FRAGMENT(mgnet_C, m) {
  m.def("masked_cube_embed_forward_cuda", &masked_cube_embed_forward_cuda);
  m.def("masked_cube_embed_backward_cuda", &masked_cube_embed_backward_cuda);
}
