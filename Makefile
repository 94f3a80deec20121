# optbook: `make book` builds the rendered book, `make test` runs every check. Both install what they
# need first (Debian packages as root, a .venv, MathJax), so a fresh clone on a fresh machine needs nothing else.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY      := .venv/bin/python
BIN     := .venv/bin
# torch is optbook's only runtime dependency (settings.ini: torch>=2.1). The development venv pins the CPU
# build that this machine kind keeps on disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
# Debian packages: a CJK font for the figures' Chinese labels, Chromium and its driver for the page test,
# Node/npm to fetch MathJax from the npm registry.
DEB_PKGS := fonts-noto-cjk chromium chromium-driver
MATHJAX := _static/mathjax/tex-chtml.js
BOOK_OPTS := -W -n --keep-going
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONHASHSEED := 0

.PHONY: book test export check-export nbtest pytest bench debs venv mathjax clean

book: venv mathjax export
	@start=$$(date +%s); \
	$(BIN)/jupyter-book build . $(BOOK_OPTS); \
	echo "make book: built in $$(( $$(date +%s) - start )) s. Open file://$(CURDIR)/_build/html/index.html"

test:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory venv mathjax check-export nbtest book pytest; \
	echo "make test: all checks passed in $$(( $$(date +%s) - start )) s"

debs:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "Please install the Debian packages:$$missing (needs root)"; exit 1; fi; \
	  echo "Installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: debs .venv/.installed

.venv/.installed: settings.ini setup.py
	@echo "Setting up .venv (torch, nbdev, jupyter-book, ...)"
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -U pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

mathjax: $(MATHJAX)

# MathJax 3 from the npm registry, served from the book's own _static (no CDN at reading time).
$(MATHJAX):
	@echo "Fetching MathJax 3 from the npm registry"
	rm -rf _build/mathjax-pkg && mkdir -p _build/mathjax-pkg _static/mathjax
	cd _build/mathjax-pkg && npm pack --silent mathjax@3 >/dev/null && tar xzf mathjax-*.tgz
	cp -r _build/mathjax-pkg/package/es5/. _static/mathjax/
	test -f $@

export: venv
	$(BIN)/nbdev_export

# The package must be exactly what the notebooks export.
check-export: export
	@if [ -n "$$(git status --porcelain -- optbook)" ]; then \
	  echo "optbook/ is out of sync with nbs/: run nbdev_export and commit"; git status --porcelain -- optbook; exit 1; fi
	@echo "optbook/ is in sync with nbs/"

nbtest: venv
	$(BIN)/nbdev_test --n_workers 2

pytest: venv
	$(BIN)/pytest -q tests

bench: venv
	$(PY) tests/bench_sgd.py

clean:
	rm -rf _build
