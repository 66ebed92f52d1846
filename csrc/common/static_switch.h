// Compile-time switches over run-time values, in the style of causal-conv1d's csrc/static_switch.h:
// each macro takes the run-time value, the name of the compile-time constant (or type) it binds, and
// a lambda that uses it, e.g.
//
//   MGNET_BOOL_SWITCH(has_bias, HAS_BIAS, [&] { kernel<T, HAS_BIAS><<<...>>>(...); });
//   return MGNET_FLOAT_SWITCH(dtype, T, [&] { return launch_typed<T>(...); });
//
// The lambda's body is instantiated once per case, so the kernel sees a constant.
#pragma once

#include "dtype.h"

// bool -> constexpr bool NAME
#define MGNET_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                    \
    if (COND) {                            \
      constexpr bool NAME = true;          \
      return __VA_ARGS__();                \
    } else {                               \
      constexpr bool NAME = false;         \
      return __VA_ARGS__();                \
    }                                      \
  }()

// 1 <= N <= 4 -> constexpr int NAME (values outside clamp to 1 and 4; the callers' tiles are
// min(4, rows left) rows)
#define MGNET_UPTO4_SWITCH(N, NAME, ...)                   \
  [&] {                                                    \
    switch (N) {                                           \
      case 4: { constexpr int NAME = 4; return __VA_ARGS__(); } \
      case 3: { constexpr int NAME = 3; return __VA_ARGS__(); } \
      case 2: { constexpr int NAME = 2; return __VA_ARGS__(); } \
      default: { constexpr int NAME = 1; return __VA_ARGS__(); } \
    }                                                      \
  }()

// odd kernel size -> constexpr int NAME: 3, 5 and 7 get their own (fully unrolled) instance, any
// other size NAME = 0 (the run-time loop)
#define MGNET_KSIZE_SWITCH(K, NAME, ...)                   \
  [&] {                                                    \
    switch (K) {                                           \
      case 3: { constexpr int NAME = 3; return __VA_ARGS__(); } \
      case 5: { constexpr int NAME = 5; return __VA_ARGS__(); } \
      case 7: { constexpr int NAME = 7; return __VA_ARGS__(); } \
      default: { constexpr int NAME = 0; return __VA_ARGS__(); } \
    }                                                      \
  }()

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// mgnet::DType of a floating-point tensor -> element type NAME (__half, __nv_bfloat16, float,
// double), for the CUDA launchers; the lambda returns a cudaError_t, and a type the op does not take
// (U8) returns cudaErrorInvalidValue.
#define MGNET_FLOAT_SWITCH(DT, NAME, ...)                                                \
  [&]() -> cudaError_t {                                                                 \
    switch (DT) {                                                                        \
      case ::mgnet::DType::F16: { using NAME = __half; return __VA_ARGS__(); }           \
      case ::mgnet::DType::BF16: { using NAME = __nv_bfloat16; return __VA_ARGS__(); }   \
      case ::mgnet::DType::F32: { using NAME = float; return __VA_ARGS__(); }            \
      case ::mgnet::DType::F64: { using NAME = double; return __VA_ARGS__(); }           \
      default: return cudaErrorInvalidValue;                                             \
    }                                                                                    \
  }()
#endif
