# The two commands the README starts with:
#   make demo   set up (first run only) and run the main job: a local emulated cluster on the default model
#   make test   set up (first run only) and run the test suite
# Everything is installed into .venv; models exported once are cached under ~/.cache/edgepart.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgepart-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || \
	  { (apt-get update -qq && apt-get install -y -qq iproute2) >/dev/null 2>&1 || echo "note: iproute2 (ip, tc) not installed; namespace tests will say so"; }
	test -x $(PY) || python3 -m venv $(VENV)
	# the one install script, which the device image (Dockerfile) runs too
	scripts/install.sh $(PY) packager,models,camera,litert,dev --editable
	touch $(STAMP)

demo: setup
	$(VENV)/bin/edgepart demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) bench/bench_pipeline_plan.py

clean:
	rm -rf $(VENV) build *.egg-info
