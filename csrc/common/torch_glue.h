// Pieces of the torch glue shared by every op's CPU and CUDA entry points (csrc/<op>/<op>_cpu.cpp,
// csrc/<op>/<op>_cuda.cpp): the ScalarType -> DType map, the accumulation type, device and dtype
// checks with messages that name the op and the argument, and the CPU accumulation-type dispatch.
// Each op's shape checks live beside it (csrc/<op>/<op>_args.h) and are used by both its glues.
#pragma once

#include <ATen/ATen.h>

#include "dtype.h"

namespace mgnet {

// The DType of a tensor's scalar type; anything a kernel does not take stops with a message naming
// the op and the argument. U8 is accepted only with allow_u8 (image data).
inline DType to_dtype(at::ScalarType t, const char* op, const char* name, bool allow_u8 = false) {
  switch (t) {
    case at::kByte:
      if (allow_u8) return DType::U8;
      break;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kFloat: return DType::F32;
    case at::kDouble: return DType::F64;
    default: break;
  }
  TORCH_CHECK(false, op, ": unsupported dtype ", t, " for ", name);
  return DType::F32;
}

// at::ScalarType of acc_t<T>: double for double, float otherwise.
inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// `name` must be on the same device as `ref` (named `ref_name`); with cuda, a CUDA device.
inline void check_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                         bool cuda, const char* op) {
  if (cuda) {
    TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor");
  } else {
    TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
  }
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
}

// `name` must have `ref`'s dtype.
inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                             const char* op) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
              ref_name, " has ", ref.scalar_type());
}

// The CPU kernels take float32 or float64.
inline void check_cpu_float(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64 on the CPU, got ", t.scalar_type());
}

}  // namespace mgnet

// acc scalar type (kFloat / kDouble, from mgnet::acc_type) -> C++ type NAME, like the switches of
// static_switch.h: MGNET_ACC_SWITCH(ct, acc_t, [&] { kernel<acc_t>(...); });
#define MGNET_ACC_SWITCH(ACC, NAME, ...) \
  [&] {                                  \
    if ((ACC) == at::kDouble) {          \
      using NAME = double;               \
      return __VA_ARGS__();              \
    } else {                             \
      using NAME = float;                \
      return __VA_ARGS__();              \
    }                                    \
  }()
