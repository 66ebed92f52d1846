"""The CUDA kernels (csrc/*/*.cu, CUDA headers only) must compile with `nvcc -c` even on machines
without a GPU, as CI's does: a syntax or type error in a kernel is caught before a GPU sees it."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CU_FILES = sorted(glob.glob(os.path.join(ROOT, "csrc", "*", "*.cu")))
NVCC = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                if os.environ.get("CUDA_HOME") else None)


def test_every_op_has_cuda_sources():
    ops = {os.path.basename(os.path.dirname(p)) for p in CU_FILES}
    assert {"lka3d", "memory", "cube_embed"} <= ops, f"CUDA sources found for {sorted(ops)}"


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed on this machine")
@pytest.mark.parametrize("path", CU_FILES, ids=[os.path.relpath(p, ROOT) for p in CU_FILES])
def test_nvcc_compiles(path, tmp_path):
    out = tmp_path / (os.path.basename(path) + ".o")
    cmd = [NVCC, "-c", path, "-o", str(out), "-std=c++17", "-O3", "-arch=sm_90",
           "-I", os.path.join(ROOT, "csrc")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"nvcc failed on {path}:\n{res.stderr[-4000:]}"
    assert out.stat().st_size > 0
