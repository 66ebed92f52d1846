// CUDA side of the torch glue (csrc/<op>/<op>_cuda.cpp): the launch-status check.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

namespace mgnet {

// A launcher's cudaError_t: anything but cudaSuccess stops with the op, what was launched and why.
inline void check_launch(cudaError_t err, const char* op, const char* what = "kernel") {
  TORCH_CHECK(err == cudaSuccess, op, ": ", what, " launch failed: ", cudaGetErrorString(err));
}

}  // namespace mgnet
