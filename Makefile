# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
CHROMIUM := /usr/bin/chromium

.PHONY: setup setup-dev run test bench clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	# one cv2, the headless build: insightface pulled in the GUI build (libGL, X11), whose files
	# share the cv2 folder; removing it takes those files, so the headless wheel is reinstalled
	$(PIP) uninstall -q -y opencv-python
	$(PIP) install -q --no-deps --force-reinstall $$(grep '^opencv-python-headless==' requirements.txt)
	touch $@

$(DEVSTAMP): $(STAMP) requirements-dev.txt requirements-ref.txt requirements-ray.txt
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q -r requirements-ray.txt
	$(PIP) install -q --no-deps -r requirements-ref.txt
	touch $@

setup: $(STAMP)

# Browser tests drive Debian's Chromium; Playwright's own browser download cannot work here.
# `make test` sets LIPSYNC_REQUIRE_REFERENCES=1: a missing reference package, Playwright or
# Chromium fails its tests instead of skipping them (tests/required.py); bare pytest skips.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || echo "chromium install failed: browser tests will fail under make test"; \
	else echo "not root: install Debian's chromium for the browser tests"; fi

setup-dev: $(DEVSTAMP) $(CHROMIUM)

run: setup
	$(PY) app.py

test: setup-dev
	LIPSYNC_REQUIRE_REFERENCES=1 $(PY) -m pytest -q tests

bench: setup
	$(PY) bench/overhead_vs_ffmpeg.py
	-$(PY) bench/ray_scaling.py  # needs requirements-ray.txt
	$(PY) bench/memory_vs_length.py

clean:
	rm -rf $(VENV) .pytest_cache
