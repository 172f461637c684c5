# cvae-reg: two commands do all set-up on a fresh machine.
#   make app    create .venv, install, write the demo cohort's test split if missing, serve the app on 127.0.0.1
#   make test   same set-up, then the whole test suite (fast tests + browser tests)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501
DATA   ?= data/synthetic-acdc
STAMP  := $(VENV)/.installed

.PHONY: app test test-fast test-slow install cohort browser bench clean

$(STAMP): requirements.txt requirements-dev.txt requirements-bench.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt -r requirements-bench.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m compileall -q cvae  # bytecode now: with PYTHONDONTWRITEBYTECODE set, each command would compile anew
	touch $(STAMP)

install: $(STAMP)

# One split at a time, each exactly as in the whole cohort: the app and the fast tests use the test split alone, so
# `make app` and `make test` wait for it only; the training split comes with `make cohort` (the slow tests and the
# benchmarks need it, as does training). A stamp marks a split written to the end.
$(DATA)/.%-complete: | $(STAMP)
	$(PY) -m cvae.cli synth --out $(DATA) --splits $*
	touch $@

cohort: $(DATA)/.testing-complete $(DATA)/.training-complete

app: install $(DATA)/.testing-complete
	CVAE_DATA=$(abspath $(DATA)) $(VENV)/bin/streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) \
		--server.headless true --browser.gatherUsageStats false

browser:
	@bash .ci/ensure-chromium

# The test split (CPU) and Chromium (download) are made side by side; the suite runs on every core (pytest-xdist,
# one worker per core, each test module on one worker so that its fixtures are made once).
test: install
	$(MAKE) --no-print-directory -j2 $(DATA)/.testing-complete browser
	CVAE_DATA=$(abspath $(DATA)) $(PY) -m pytest -q -m "not slow" -p no:cacheprovider -n auto --dist loadfile

test-slow: install cohort
	CVAE_DATA=$(abspath $(DATA)) $(PY) -m pytest -q -m slow -p no:cacheprovider

bench: install cohort
	$(PY) benchmarks/bench_speed.py
	$(PY) benchmarks/app_speed.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
