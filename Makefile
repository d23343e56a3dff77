# Everything installs from the package registries into .venv; nothing is downloaded at run time.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build that installs from local disk here.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,onnx,web]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/metauas segment --prompt src/metauas/examples/prompt.png --query src/metauas/examples/query.png --out demo_out --overwrite
	@echo "Heatmaps written to demo_out/"

test: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/speed.py --json

clean:
	rm -rf $(VENV) demo_out .pytest_cache
