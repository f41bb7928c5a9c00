# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install the project with every extra.
# torch is pinned by constraints.txt so a CPU machine gets the CPU wheel.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv system lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all]'
	touch $(STAMP)

# System packages the suite needs (the report test renders in headless Chromium; the
# pixmo collect test drives it through chromedriver): installed from Debian's packages
# when missing and root, else one line and stop.
SYSTEM_PACKAGES := chromium chromium-driver

system:
	@{ command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } && \
	command -v chromedriver >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	else \
	  echo "make test needs Chromium and chromedriver; as root: apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES)" >&2; \
	  exit 1; \
	fi

test: $(STAMP) system
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m pipelines.demo --out demo-output

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo-output build *.egg-info
