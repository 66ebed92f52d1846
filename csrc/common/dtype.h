// Element types shared by every op's CPU glue, CUDA glue and CUDA launchers.
//
// Plain C++ (no torch, no CUDA): the launchers in csrc/<op>/*.cu include it with CUDA headers only.
// The glue maps an at::ScalarType to a DType with mgnet::to_dtype (torch_glue.h); a launcher maps a
// DType back to a C++ element type with MGNET_FLOAT_SWITCH (static_switch.h).
#pragma once

namespace mgnet {

// The element types a kernel may take; U8 only for image data (masked_cube_embed's frames).
enum class DType : int { U8 = 0, F16 = 1, BF16 = 2, F32 = 3, F64 = 4 };

// Accumulation type: double for double, float for every narrower type (fp16 and bf16 accumulate in
// float on both CPU and GPU).
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;

}  // namespace mgnet
