// memory_address argument checks shared by the CPU glue (memory_cpu.cpp) and the CUDA glue
// (memory_cuda.cpp): devices, dtypes and shapes, with messages that name the op and the argument.
// What only one backend needs stays in its glue (the CPU's float32/float64, CUDA's int32 sizes).
#pragma once

#include <ATen/ATen.h>

#include "../common/torch_glue.h"

namespace mgnet_memory {

// q (N, C) and mem (S, C), S >= 1, of one dtype on one device (a CUDA device with cuda, else the CPU).
inline void check_forward_args(const char* op, bool cuda, const at::Tensor& q, const at::Tensor& mem) {
  mgnet::check_device(q, "q", q, "q", cuda, op);
  mgnet::check_device(mem, "mem", q, "q", cuda, op);
  mgnet::check_same_dtype(mem, "mem", q, "q", op);
  TORCH_CHECK(q.dim() == 2 && mem.dim() == 2, op, ": q must be (N, C) and mem (S, C), got ", q.sizes(), " and ",
              mem.sizes());
  TORCH_CHECK(q.size(1) == mem.size(1), op, ": mem must have C=", q.size(1), " columns, got ", mem.sizes());
  TORCH_CHECK(mem.size(0) >= 1, op, ": mem must have at least one slot");
}

// The forward's checks, and grad_weights / weights (N, S), grad_read (N, C) on q's device in q's dtype.
inline void check_backward_args(const char* op, bool cuda, const at::Tensor& grad_weights, const at::Tensor& grad_read,
                                const at::Tensor& q, const at::Tensor& mem, const at::Tensor& weights) {
  check_forward_args(op, cuda, q, mem);
  const std::pair<const char*, const at::Tensor*> rest[] = {
      {"grad_weights", &grad_weights}, {"grad_read", &grad_read}, {"weights", &weights}};
  for (const auto& [name, t] : rest) {
    mgnet::check_device(*t, name, q, "q", cuda, op);
    mgnet::check_same_dtype(*t, name, q, "q", op);
  }
  const int64_t N = q.size(0), S = mem.size(0);
  TORCH_CHECK(grad_weights.sizes() == at::IntArrayRef({N, S}) && weights.sizes() == at::IntArrayRef({N, S}), op,
              ": grad_weights and weights must be (N, S) = (", N, ", ", S, ")");
  TORCH_CHECK(grad_read.sizes() == q.sizes(), op, ": grad_read must have q's shape ", q.sizes());
}

}  // namespace mgnet_memory
