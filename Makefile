# minimoe - the two commands a reader needs are `make demo` and `make test`; both set everything up first.
#
#   make test              create/reuse .venv, install torch if missing, build + install minimoe, run the tests
#   make demo              same setup, then run minimoe on its built-in model (trained on Shakespeare)
#   make test TORCH=2.14.1 pick the torch version (default: whatever pip resolves for "torch")
#   make build             rebuild the native extension in place after editing csrc/ (incremental, ninja)
#   make bench             run the benchmark scripts (tables + JSON under benchmarks/results/)
#   make docs              build the documentation site (mkdocs --strict)
#   make clean             remove build products (keeps .venv)
#   make neon-tools        install the AArch64 cross compiler and qemu (Debian/Ubuntu, root) so that
#                          tests/test_neon.py runs the NEON tier here instead of skipping

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?=
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
TORCH_SPEC := $(if $(TORCH),torch==$(TORCH),torch)
PYTEST_ARGS ?=

INSTALLED := $(VENV)/.minimoe-installed
NATIVE_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)
EXTENSION := $(VENV)/.minimoe-extension

.PHONY: setup build test demo bench docs clean neon-tools

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first (setup.py imports it to build the extension), then minimoe in editable mode with the test
# dependencies. --no-build-isolation: an isolated build environment would not see the installed torch.
$(INSTALLED): $(PY) setup.py
	@$(PY) -c "import sys, torch; want = '$(TORCH)'; sys.exit(0 if not want or torch.__version__.split('+')[0] == want else 1)" 2>/dev/null \
		|| $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -q setuptools wheel ninja pybind11 numpy
	MINIMOE_SKIP_EXTENSION=1 $(PIP) install -q --no-build-isolation -e ".[dev]"
	@touch $(INSTALLED)

# The extension is built in place (build/ keeps ninja's state), after the package install above skipped it:
# one compile on a fresh machine, then only what changed in csrc/.
$(EXTENSION): $(INSTALLED) $(NATIVE_SOURCES)
	$(PY) setup.py -q build_ext --inplace
	@touch $(EXTENSION)

setup: $(EXTENSION)

build: setup

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) -m minimoe info
	$(PY) -m minimoe generate "My lord, the king" --max-new-tokens 80 --temperature 0.8 --top-k 40 --seed 0
	$(PY) -m minimoe route "Now is the winter of our discontent"

bench: setup
	$(PY) benchmarks/kernel_cpu.py
	$(PY) benchmarks/tokenizer_speed.py

docs: setup
	$(VENV)/bin/mkdocs build --strict   # mkdocs-material + mkdocstrings come with the dev extra

clean:
	rm -rf build dist *.egg-info minimoe/_C*.so site $(EXTENSION)

# The NEON tier's tests cross-compile csrc/cpu/awq_gemm_neon.cpp and run it under user-mode qemu.
neon-tools:
	apt-get install -y --no-install-recommends g++-aarch64-linux-gnu qemu-user \
		|| (apt-get update && apt-get install -y --no-install-recommends g++-aarch64-linux-gnu qemu-user)
