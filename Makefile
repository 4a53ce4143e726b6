# make test : create .venv if needed, install the package with test extras, run the suite (one worker per core)
# make demo : train tiny networks on data/, translate, evaluate -> results/demo/
# make compare: the demo plus the comparison methods, scored alike -> results/compare/
# make compare-realistic: make compare on the realistic set (MNI152 anatomy), generated into results/realistic/
# make bench: CPU/GPU benchmarks (benchmarks/)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, pinned, so pip never swaps it for another build;
# override with `make TORCH_SPEC='torch==2.x.y' ...` to match your CUDA.
TORCH_SPEC ?= torch==2.13.0
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv test demo bench compare compare-realistic visdom clean

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# one pytest-xdist worker per core (whole files per worker, so module fixtures are built once)
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

test: venv
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile tests

demo: venv
	$(PY) scripts/demo.py --out results/demo

bench: venv
	$(PY) benchmarks/bench_translate.py --tiny
	$(PY) benchmarks/bench_train.py --tiny
	$(PY) benchmarks/bench_data.py --n_slices 20 --min_seconds 0.5 --steps 3

compare: venv
	$(PY) scripts/demo.py --plan compare --out results/compare

compare-realistic: venv
	$(PY) scripts/make_realistic.py --out results/realistic
	$(PY) scripts/demo.py --plan compare --data_dir results/realistic/brats --classifier_steps 2000 --out results/compare-realistic

# a local Visdom server on 127.0.0.1:8850 (open http://127.0.0.1:8850)
visdom: venv
	$(PY) -m guided_diffusion.util.visdom_server --port 8850

clean:
	rm -rf $(VENV) results/demo results/compare results/realistic results/compare-realistic
