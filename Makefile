# cvae-reg: two commands do all set-up on a fresh machine.
#   make app    create .venv, install, prepare the demo cohort if missing, serve the app on 127.0.0.1
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
	touch $(STAMP)

install: $(STAMP)

$(DATA)/testing: | $(STAMP)
	$(PY) -m cvae.cli synth --out $(DATA)

cohort: $(DATA)/testing

app: install cohort
	CVAE_DATA=$(abspath $(DATA)) $(VENV)/bin/streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) \
		--server.headless true --browser.gatherUsageStats false

browser:
	@bash .ci/ensure-chromium

test: install cohort browser
	CVAE_DATA=$(abspath $(DATA)) $(PY) -m pytest -q -m "not slow" -p no:cacheprovider

test-slow: install cohort
	CVAE_DATA=$(abspath $(DATA)) $(PY) -m pytest -q -m slow -p no:cacheprovider

bench: install cohort
	$(PY) benchmarks/bench_speed.py
	$(PY) benchmarks/app_speed.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
