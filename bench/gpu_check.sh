#!/usr/bin/env bash
# The one script to run on a GPU machine (no internet; torch, triton, pytest, pytest-benchmark,
# einops and numpy preinstalled; hydra/omegaconf/decord/nvtx may be absent):
#
#   bash bench/gpu_check.sh OUTDIR            # build in place, CUDA + Triton tests, CUDA benchmarks
#   bash bench/gpu_check.sh --dry-run OUTDIR  # the same flow on CPU, no build: checks the script itself
#
# Steps (each under its own timeout, all under one overall deadline, 8 minutes by default):
#   1. env       nvidia-smi, torch / triton / CUDA versions              -> OUTDIR/env.txt
#   2. build     `python setup.py build_ext --inplace` (CUDA kernels on)  -> OUTDIR/build.log
#   3. import    mgnet.ops + mgnet.kernels importable, backends per op     -> OUTDIR/import.log
#   4. tests     pytest tests/ops -k "cuda or triton"                      -> OUTDIR/tests.log
#   5. bench     pytest bench/ op files (+ bench/test_model.py when its imports work), CUDA
#                shapes only (MGNET_BENCH_DEVICE=cuda)                    -> OUTDIR/bench.log and
#                the report OUTDIR/bench-gpu-*.{json,md}
#   summary      one line per step: status, exit code, seconds            -> OUTDIR/summary.txt
# At most 8 files land in OUTDIR. The exit code is 0 only when every step passed.
#
# mgnet.kernels maps to the top-level kernels/ folder through pyproject's package-dir; for the
# in-place build the script links mgnet/kernels -> ../kernels for the run and removes the link
# afterwards (only if it created it). Knobs (environment): PYTHON (default python3),
# GPU_CHECK_BUDGET_S (overall seconds, default 470), GPU_CHECK_K (a pytest -k filter for both
# pytest steps), MAX_JOBS (parallel compile jobs, default: the number of cores).
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
if [[ $# -ne 1 || "$1" == -* ]]; then
    echo "usage: bash bench/gpu_check.sh [--dry-run] OUTDIR" >&2
    exit 2
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$1" || { echo "gpu_check: cannot create OUTDIR $1" >&2; exit 2; }
OUT="$(cd "$1" && pwd)"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || { echo "gpu_check: PYTHON=$PY not found" >&2; exit 2; }
BUDGET="${GPU_CHECK_BUDGET_S:-470}"
DEADLINE=$((SECONDS + BUDGET))
K_FILTER="${GPU_CHECK_K:-}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"   # the in-place tree, before any installed copy
export PYTHONDONTWRITEBYTECODE=1
export MGNET_BENCH_OUT="$OUT"
if (( DRY )); then
    export MGNET_BENCH_DEVICE=cpu
else
    export MGNET_BENCH_DEVICE=cuda
    export MGNET_BUILD_CUDA=1
    export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
fi
cd "$REPO" || exit 2

SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0
note() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }

# step NAME CAP_SECONDS LOGFILE CMD...: run CMD with the smaller of CAP and the time left before the
# deadline; output goes to LOGFILE (and the terminal); the result line goes to the summary.
step() {
    local name="$1" cap="$2" log="$3"; shift 3
    local left=$((DEADLINE - SECONDS - 5))
    local lim=$(( cap < left ? cap : left ))
    if (( lim < 10 )); then
        note "$(printf '%-8s SKIPPED  (overall budget of %ss used up)' "$name" "$BUDGET")"
        FAILED=1
        return 1
    fi
    local t0=$SECONDS rc
    {
        echo "### $name: $*"
        echo "### limit ${lim}s, started $(date -u +%H:%M:%SZ)"
    } >>"$log"
    # SIGINT first: pytest then still runs its session-finish hooks (the bench report is written
    # with the cases that finished); SIGKILL 20 s later if it does not stop
    timeout -s INT -k 20 "$lim" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    local status=ok
    if (( rc == 124 || rc == 137 )); then status=TIMEOUT; elif (( rc != 0 )); then status=FAILED; fi
    note "$(printf '%-8s %-8s rc=%-3s %4ss  (log: %s)' "$name" "$status" "$rc" "$((SECONDS - t0))" "$(basename "$log")")"
    [[ $status == ok ]] || FAILED=1
    return "$rc"
}

LINKED=0
cleanup() {
    if (( LINKED )) && [[ -L "$REPO/mgnet/kernels" ]]; then rm -f "$REPO/mgnet/kernels"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note "gpu_check $( ((DRY)) && echo '(dry run, CPU) ' )repo=$REPO out=$OUT budget=${BUDGET}s $(date -u +%FT%TZ)"

# 1. environment -----------------------------------------------------------------------------
{
    echo "## nvidia-smi"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi 2>&1
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1
    else
        echo "nvidia-smi not found"
    fi
    echo "## git"; git -C "$REPO" log -1 --format='%H %s' 2>&1; git -C "$REPO" status --short 2>&1 | head -20
    echo "## host"; uname -a; nproc
} >"$OUT/env.txt" 2>&1
step env 60 "$OUT/env.txt" "$PY" -c '
import importlib, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
for m in ("triton", "pytest", "pytest_benchmark", "einops", "numpy", "hydra", "omegaconf", "decord", "nvtx"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as exc:
        print(m, "MISSING", type(exc).__name__)
'
if (( ! DRY )); then
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
        { note "no CUDA device visible to torch: use --dry-run on a machine without a GPU"; exit 1; }
fi

# 2. build the extension in place ---------------------------------------------------------------
if (( DRY )); then
    note "build    skipped (dry run uses the existing build)"
else
    step build 240 "$OUT/build.log" "$PY" setup.py build_ext --inplace
fi

# 3. make mgnet.kernels importable from the tree, report what each op will run on ---------------
if [[ ! -e "$REPO/mgnet/kernels" ]]; then
    ln -s ../kernels "$REPO/mgnet/kernels" && LINKED=1
fi
# hydra, omegaconf, decord and nvtx may be missing on the GPU machine: the ops and the model must
# import without them, so this step hides them (a module that raises ImportError when imported)
HIDE="$(mktemp -d)"
for m in hydra omegaconf decord nvtx; do
    echo "raise ImportError('$m hidden by bench/gpu_check.sh: not installed on the GPU machine')" >"$HIDE/$m.py"
done
step import 60 "$OUT/import.log" env PYTHONPATH="$HIDE:$PYTHONPATH" "$PY" -c '
import importlib, torch, mgnet.ops as ops, mgnet.kernels
from mgnet.ops import _dispatch, backends
print("mgnet.ops from", ops.__file__)
print("mgnet._C:", _dispatch.extension_error() or "loaded", "| cuda kernels built:", _dispatch.cuda_built())
print("kernel rows not registered (mgnet.ops.backends.KERNELS):", backends.load_errors or "none")
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
for op in ("lka3d", "lsta", "memory_address", "masked_cube_embed"):
    auto = ops.resolve(op, dev, "auto")
    print(f"{op:18s} registered={_dispatch.registered(op)} available on {dev.type}={ops.available_backends(op, dev)} auto={auto}")
for mod in ("mgnet.models.config", "mgnet.models.mgnet"):  # without hydra / omegaconf / decord / nvtx
    importlib.import_module(mod)
    print("imported", mod, "without hydra, omegaconf, decord, nvtx")
'
rm -rf "$HIDE"

# 4. CUDA and Triton tests ----------------------------------------------------------------------
TEST_ARGS=(-q -ra -p no:cacheprovider)
[[ -n "$K_FILTER" ]] && TEST_ARGS+=(-k "$K_FILTER")
# on the GPU machine only the CUDA and Triton cases (the CPU ones run in CI); -k GPU_CHECK_K overrides
OPS_K=()
if (( ! DRY )) && [[ -z "$K_FILTER" ]]; then OPS_K=(-k "cuda or triton"); fi
step tests 150 "$OUT/tests.log" "$PY" -m pytest tests/ops "${TEST_ARGS[@]}" "${OPS_K[@]}"

# 5. benchmarks (CUDA shapes) -------------------------------------------------------------------
BENCH_FILES=()
for f in bench/test_lka3d.py bench/test_memory.py bench/test_cube_embed.py; do
    [[ -f $f ]] && BENCH_FILES+=("$f") || note "bench    $f missing"
done
if "$PY" -c 'import mgnet.models.mgnet, mgnet.models.config' >>"$OUT/bench.log" 2>&1; then
    BENCH_FILES+=(bench/test_model.py)
else
    note "bench    bench/test_model.py left out: the model does not import here (see bench.log)"
fi
if (( ${#BENCH_FILES[@]} )); then
    step bench 300 "$OUT/bench.log" "$PY" -m pytest "${BENCH_FILES[@]}" "${TEST_ARGS[@]}" \
        --benchmark-columns=min,median,rounds --benchmark-sort=name
else
    note "bench    FAILED   no benchmark file to run"; FAILED=1
fi
REPORT=$(ls -t "$OUT"/bench-*.md 2>/dev/null | head -1)
note "report   ${REPORT:-none written}"
note "total    $((SECONDS))s; $( ((FAILED)) && echo 'SOME STEPS FAILED' || echo 'all steps passed')"
exit "$FAILED"
