// Device-side conversions between the storage types of mgnet::DType and their accumulation type
// (dtype.h): to_acc(v) widens (half / bfloat16 / uint8 -> float; to_acc<A>(v) then to A),
// from_acc<T>(a) rounds to nearest.
// CUDA headers only: included by the launchers (csrc/<op>/*.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "dtype.h"

namespace mgnet {

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(uint8_t v) { return static_cast<float>(v); }

// widened to a given type A: to_acc<double>(uint8 frame value)
template <typename A, typename T>
__device__ __forceinline__ A to_acc(T v) {
  return static_cast<A>(to_acc(v));
}

template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) {
  if constexpr (std::is_same<T, __half>::value) {
    return __float2half_rn(static_cast<float>(v));
  } else if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

}  // namespace mgnet
