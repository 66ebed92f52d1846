// masked_cube_embed argument checks shared by the CPU glue (cube_embed_cpu.cpp) and the CUDA glue
// (cube_embed_cuda.cpp): devices and shapes, with messages that name the op and the argument; they
// return the geometry. What only one backend needs stays in its glue (the CPU's range check of
// `visible`, which would synchronise a GPU; CUDA's frames dtype rule).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "../common/torch_glue.h"
#include "cube_embed_geom.h"

namespace mgnet_cube {

// frames (B, 3, T, H, W) with T % 2 == 0 and H, W multiples of 8, visible int64 (B, Pv), weight
// (D, 3, 2, 8, 8), pos (P, D), mean / std 3 entries; `others` on frames' device (CUDA with cuda).
inline Geom check_args(const char* op, bool cuda, const at::Tensor& frames, const at::Tensor& visible,
                       const at::Tensor& weight, const std::optional<at::Tensor>& pos,
                       const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& std_,
                       std::initializer_list<std::pair<const char*, const at::Tensor*>> others = {}) {
  mgnet::check_device(frames, "frames", frames, "frames", cuda, op);
  mgnet::check_device(visible, "visible", frames, "frames", cuda, op);
  mgnet::check_device(weight, "weight", frames, "frames", cuda, op);
  if (pos.has_value()) mgnet::check_device(*pos, "pos", frames, "frames", cuda, op);
  for (const auto& [name, t] : others) mgnet::check_device(*t, name, frames, "frames", cuda, op);
  TORCH_CHECK(frames.dim() == 5 && frames.size(1) == 3 && frames.size(2) % 2 == 0 && frames.size(3) % 8 == 0 &&
                  frames.size(4) % 8 == 0,
              op, ": frames must be (B, 3, T, H, W) with T % 2 == 0, H % 8 == 0, W % 8 == 0, got ", frames.sizes());
  TORCH_CHECK(visible.dim() == 2 && visible.size(0) == frames.size(0) && visible.scalar_type() == at::kLong, op,
              ": visible must be int64 (B, Pv), got ", visible.scalar_type(), " ", visible.sizes());
  TORCH_CHECK(weight.dim() == 5 && weight.size(1) == 3 && weight.size(2) == 2 && weight.size(3) == 8 &&
                  weight.size(4) == 8,
              op, ": weight must be (D, 3, 2, 8, 8), got ", weight.sizes());
  Geom g;
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
    TORCH_CHECK(pos->dim() == 2 && pos->size(0) == g.P && pos->size(1) == g.D, op, ": pos must be (P, D) = (", g.P,
                ", ", g.D, "), got ", pos->sizes());
  if (mean.has_value()) TORCH_CHECK(mean->numel() == 3, op, ": mean must have 3 entries");
  if (std_.has_value()) TORCH_CHECK(std_->numel() == 3, op, ": std must have 3 entries");
  return g;
}

// the backward's grad: (B, Pv, D)
inline void check_grad(const char* op, const at::Tensor& grad, const Geom& g) {
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == g.B && grad.size(1) == g.Pv && grad.size(2) == g.D, op,
              ": grad must be (B, Pv, D) = (", g.B, ", ", g.Pv, ", ", g.D, "), got ", grad.sizes());
}

}  // namespace mgnet_cube
