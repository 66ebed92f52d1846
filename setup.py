"""Build script for the mgnet._C extension.

Switches (environment variables):
  MGNET_SKIP_EXT=1      install pure Python (every op then runs on the eager / Triton backends)
  MGNET_BUILD_CUDA=0|1  force the CUDA kernels off / on (default: on when torch has CUDA and nvcc is found)
  MGNET_CPU_ARCH=...    value for -march= of the C++ CPU kernels (default: native; "" leaves it out)
  MGNET_CUDA_ARCHS=...  TORCH_CUDA_ARCH_LIST for the CUDA kernels (default: "9.0" plus what torch has)

Layout: csrc/<op>/<op>_cpu.cpp are the C++ CPU kernels (always built); csrc/<op>/*.cu hold the CUDA
kernels (CUDA headers only, a launcher taking a stream) and csrc/<op>/<op>_cuda.cpp the torch glue.
Each file registers its functions into the `mgnet_C` torch.library namespace, so ops are found as
torch.ops.mgnet_C.<name> once mgnet._C is imported.
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _extensions():
    if os.environ.get("MGNET_SKIP_EXT", "0") == "1":
        print("mgnet: MGNET_SKIP_EXT=1, building no extension (pure Python install)")
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cpu_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
                       + glob.glob(os.path.join(ROOT, "csrc", "*", "*_cpu.cpp")))
    cuda_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "*", "*.cu"))
                        + glob.glob(os.path.join(ROOT, "csrc", "*", "*_cuda.cpp")))

    flag = os.environ.get("MGNET_BUILD_CUDA")
    if flag is None:
        build_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    else:
        build_cuda = flag == "1"
        if build_cuda and CUDA_HOME is None:
            raise RuntimeError("MGNET_BUILD_CUDA=1 but no CUDA toolkit (nvcc) was found; set CUDA_HOME")
    arch = os.environ.get("MGNET_CPU_ARCH", "native")
    cxx = ["-O3", "-fopenmp", "-std=c++17", "-ffp-contract=fast"]
    if arch:
        cxx.append(f"-march={arch}")
    ldflags = ["-fopenmp"]
    macros = []
    if build_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("MGNET_CUDA_ARCHS", "9.0"))
        macros.append(("MGNET_WITH_CUDA", "1"))
        ext = CUDAExtension(
            "mgnet._C",
            cpu_sources + cuda_sources,
            define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-std=c++17", "-lineinfo"]},
            extra_link_args=ldflags,
        )
    else:
        ext = CppExtension("mgnet._C", cpu_sources, define_macros=macros,
                           extra_compile_args={"cxx": cxx}, extra_link_args=ldflags)
    print(f"mgnet: building mgnet._C with {len(cpu_sources)} C++ sources"
          + (f" and {len(cuda_sources)} CUDA sources" if build_cuda else " (CUDA kernels off)"))
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
