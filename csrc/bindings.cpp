// mgnet._C: the Python module that carries the C++ and CUDA kernels.
// Each op's kernels register themselves in the `mgnet_C` torch.library namespace from their own
// file (csrc/<op>/<op>_cpu.cpp, csrc/<op>/<op>_cuda.cpp), so this file only has to exist and tell
// Python what was built.
#include <torch/extension.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "mgnet fused kernels (ops live in torch.ops.mgnet_C)";
#ifdef MGNET_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#ifdef _OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
}
