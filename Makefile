# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
# Each creates the project's virtualenv .venv on first use and installs the project into it.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= out

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"

# reinstall only when the dependencies change
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python pipelines/synthetic.py --config configs/synthetic.tiny.yaml --out $(OUT)
	$(BIN)/subjectforge validate $(OUT)/dip
	@echo "shards: $(OUT)/dip/shards  manifests: $(OUT)/dip/manifest  (pandas.read_parquet('$(OUT)/dip/manifest'))"

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/shard_io.py

clean:
	rm -rf $(OUT) .pytest_cache
