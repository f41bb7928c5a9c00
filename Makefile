# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install the project with every extra.
# torch is pinned by constraints.txt so a CPU machine gets the CPU wheel.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all]'
	touch $(STAMP)

test: $(STAMP)
	@command -v chromium >/dev/null || echo "note: the report test needs Chromium: apt-get install -y --no-install-recommends chromium"
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m pipelines.demo --out demo-output

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo-output build *.egg-info
