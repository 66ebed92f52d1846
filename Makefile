# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.mgnet-installed
TORCH_CPU_VERSION ?= 2.13.0
TRITON_VERSION    ?= 3.6.0
SOURCES := pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null)
PYTEST_ARGS ?=
# The pose extra (mediapipe 0.10.21) pins numpy<2 and protobuf<5, so the test venv runs on
# numpy 1.26 like a user's `pip install -e ".[pose]"`; EXTRAS=test keeps numpy 2 (pose tests skip).
EXTRAS ?= test,pose,deploy,tensorboard

.PHONY: install demo test bench gpu-check clean chromium

$(STAMP): $(SOURCES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	@# A CUDA torch already in the venv is kept; otherwise the CPU build (local wheel, fast).
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==$(TORCH_CPU_VERSION)
	@if [ "$$(uname -s)" = Linux ]; then $(PY) -c "import triton" 2>/dev/null || $(PIP) install -q triton==$(TRITON_VERSION); fi
	$(PIP) install -q --no-build-isolation -e ".[$(EXTRAS)]"
	$(PY) -c "import mgnet, mgnet.ops, mgnet.kernels; from mgnet.ops import _dispatch as d; d.load_extension(); print('mgnet installed; mgnet._C:', d.extension_error() or 'built')"
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mgnet demo

# headless Chromium opens the HTML report in tests/test_report.py; installed once here, not by the test
chromium:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || { \
	  echo "make test: installing headless Chromium (apt-get) for tests/test_report.py"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "make test: could not install Chromium with apt-get; install it (apt-get install chromium) or the HTML report tests fail"; }

test: $(STAMP) chromium
	$(PY) -m pytest tests -q -ra $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pytest bench -q

gpu-check:
	bash bench/gpu_check.sh $(or $(OUT),bench/results/gpu-$(shell date +%Y%m%d))

clean:
	rm -rf build *.egg-info mgnet/_C*.so
