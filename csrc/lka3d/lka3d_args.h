// lka3d / lsta argument checks shared by the CPU glue (lka3d_cpu.cpp) and the CUDA glue
// (lka3d_cuda.cpp), with messages that name the op and the argument. What only one backend needs
// stays in its glue (the CPU's dtype and contiguity rules; CUDA's int32 volume).
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <utility>

#include "../common/torch_glue.h"

namespace mgnet_lka3d {

using NamedTensors = std::initializer_list<std::pair<const char*, const at::Tensor*>>;

// `x` (named x_name) 5-D, and every tensor of `ts` on its device (a CUDA device with cuda, else the CPU).
inline void check_devices(const char* op, bool cuda, const at::Tensor& x, const char* x_name, NamedTensors ts) {
  mgnet::check_device(x, x_name, x, x_name, cuda, op);
  TORCH_CHECK(x.dim() == 5, op, ": ", x_name, " must be 5-D, got ", x.sizes());
  for (const auto& [name, t] : ts) mgnet::check_device(*t, name, x, x_name, cuda, op);
}

// w0 (C, 1, k0, k0, k0), w1 (C, 1, k1, k1, k1) with odd kernel sizes, wp (C, C, 1, 1, 1), biases (C,),
// dilation >= 1.
inline void check_weights(const char* op, int64_t C, const at::Tensor& w0, const at::Tensor& b0, const at::Tensor& w1,
                          const at::Tensor& b1, const at::Tensor& wp, const at::Tensor& bp, int64_t dilation) {
  TORCH_CHECK(w0.dim() == 5 && w0.size(0) == C && w0.size(1) == 1 && w0.size(2) == w0.size(4) &&
                  w0.size(3) == w0.size(4) && w0.size(4) % 2 == 1,
              op, ": w0 must be (C, 1, k0, k0, k0) with k0 odd, got ", w0.sizes());
  TORCH_CHECK(w1.dim() == 5 && w1.size(0) == C && w1.size(1) == 1 && w1.size(2) == w1.size(4) &&
                  w1.size(3) == w1.size(4) && w1.size(4) % 2 == 1,
              op, ": w1 must be (C, 1, k1, k1, k1) with k1 odd, got ", w1.sizes());
  TORCH_CHECK(wp.numel() == C * C, op, ": wp must be (C, C, 1, 1, 1), got ", wp.sizes());
  TORCH_CHECK(b0.numel() == C && b1.numel() == C && bp.numel() == C, op, ": biases must be (C,)");
  TORCH_CHECK(dilation >= 1, op, ": dilation must be >= 1, got ", dilation);
}

}  // namespace mgnet_lka3d
