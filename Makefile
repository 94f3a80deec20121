# optbook: `make book` builds the rendered book, `make test` runs every check, `make unit` the fast ones.
# All install what they need first (Debian packages as root, a .venv, MathJax), so a fresh clone on a fresh
# machine needs nothing else.
#
# Each notebook executes once per `make test`: in the book build, in the `optbook-colab` kernel that
# _ext/optbook_book.py sets up (a fresh kernel, a temporary working directory, nbdev/fastcore/execnb not
# importable, as on Colab). A failing cell fails the build (raise_on_error), so that run is at the same time
# the page's output, the notebooks' cell tests and the Colab check; tests/test_colab_run.py then checks from
# _build that it ran that way. After each build the per-chapter execution times are printed. The notebooks
# execute BOOK_JOBS at a time (one per CPU): on this 2-core machine the full build took 464 s against 796-849 s serially.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY      := .venv/bin/python
BIN     := .venv/bin
# torch is optbook's only runtime dependency (settings.ini: torch>=2.6). The development venv pins the CPU
# build that this machine kind keeps on disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
# Debian packages: a CJK font for the figures' Chinese labels, Chromium and its driver for the page test,
# Node/npm to fetch MathJax from the npm registry, and the PostgreSQL server that the test of Optuna's
# shared storage starts (chapter 10; it runs the server as the package's `postgres` user, never as root).
DEB_PKGS := fonts-noto-cjk chromium chromium-driver postgresql
# The PDF edition only (`make pdf`, not `make test`): XeLaTeX with ctex/xeCJK and the LaTeX packages Sphinx's LaTeX
# writer uses, latexmk, the Latin, monospace and fallback fonts, and pdftotext for tests/test_pdf.py.
DEB_PDF := texlive-xetex texlive-lang-chinese texlive-latex-extra texlive-fonts-recommended texlive-plain-generic \
           latexmk lmodern fonts-freefont-otf fonts-dejavu-core fonts-noto-cjk poppler-utils
MATHJAX := _mathjax/tex-chtml.js
BOOK_OPTS := -W -n --keep-going
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONHASHSEED := 0

.PHONY: test-floor colab-run book test unit booktest export colab-wheel check-export nbtest pytest bench debs venv mathjax clean pdf

# BOOK_ALL=--all re-reads (so re-executes) every page; plain `make book` rebuilds the changed pages only.
BOOK_ALL ?=
# BOOK_JOBS notebooks execute at a time, one per CPU by default: `jupyter-book build` through _ext/optbook_book.py's
# `build`, which gives Sphinx the -j that Jupyter Book 1's command line lacks (each kernel then keeps to one thread).
# BOOK_JOBS=1 is the plain serial build.
BOOK_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
book: venv mathjax export colab-wheel
	@start=$$(date +%s); rm -f _build/exec_times.json; status=0; \
	$(PY) _ext/optbook_book.py build -j $(BOOK_JOBS) . $(BOOK_OPTS) $(BOOK_ALL) || status=$$?; \
	if [ -f _build/exec_times.json ]; then echo; $(PY) _ext/optbook_book.py exec-table; echo; fi; \
	if [ $$status != 0 ]; then echo "make book: the build failed (see above)"; exit $$status; fi; \
	echo "make book: built in $$(( $$(date +%s) - start )) s. Open file://$(CURDIR)/_build/html/index.html"

# Everything, each once: the fast tests first (fail early), then the book (every notebook executed, once),
# then the tests of what the build produced.
test:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory venv mathjax check-export unit; \
	$(MAKE) --no-print-directory book BOOK_ALL=--all; \
	$(MAKE) --no-print-directory booktest; \
	echo "make test: all checks passed in $$(( $$(date +%s) - start )) s"

# The unit tests: everything that needs neither the built book nor a chapter's execution (seconds, not minutes), spread
# over TEST_WORKERS processes by pytest-xdist (default: one per CPU; most tests keep one core busy: on 2 cores here
# 184 s against 486 s one by one). Each worker keeps to one torch thread (OMP_NUM_THREADS=1 unless set): with torch's
# default of a thread per core in every worker, the threads of two workers on two cores wait for each other at every
# operation (measured here, same 3252 tests: 206 s against 275 s).
TEST_WORKERS ?= auto
unit: venv export
	@start=$$(date +%s); \
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/pytest -q -n $(TEST_WORKERS) -m "not book" tests; \
	echo "make unit: passed in $$(( $$(date +%s) - start )) s"

# The tests of the built book (pages in headless Chromium, the Colab-style run records, execution times).
booktest: venv
	$(BIN)/pytest -q -m book tests

# The whole book as one PDF (_build/pdf/optbook.pdf, also served as _build/html/_static/optbook.pdf), built with Jupyter
# Book's LaTeX builder and xelatex from the notebooks the last `make book` executed (_ext/optbook_pdf.py: execution off,
# so nothing runs twice; run `make book` first, or this target does), then checked by tests/test_pdf.py.
pdf: venv
	@$(MAKE) --no-print-directory debs DEB_PKGS="$(DEB_PDF)"
	@test -d _build/jupyter_execute/nbs || $(MAKE) --no-print-directory book
	@start=$$(date +%s); \
	$(PY) _ext/optbook_pdf.py prepare >/dev/null; \
	$(BIN)/jupyter-book build _build/pdfsrc --builder pdflatex >_build/pdf.log 2>&1 || { tail -40 _build/pdf.log; \
	  grep -A5 '^!' _build/pdfsrc/_build/latex/optbook.log | head -40 || true; echo "make pdf: the build failed (_build/pdf.log)"; exit 1; }; \
	mkdir -p _build/pdf && cp _build/pdfsrc/_build/latex/optbook.pdf _build/pdfsrc/_build/latex/optbook.log _build/pdf/; \
	if [ -d _build/html/_static ]; then cp _build/pdf/optbook.pdf _build/html/_static/optbook.pdf; fi; \
	echo "make pdf: $$(pdfinfo _build/pdf/optbook.pdf | awk '/^Pages/ {print $$2}') pages in $$(( $$(date +%s) - start )) s: _build/pdf/optbook.pdf"
	OPTBOOK_PDF_REQUIRED=1 $(BIN)/pytest -q tests/test_pdf.py

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
	$(PY) -m pip install -q $(TORCH)   # unquoted: TORCH may carry pip options (the release workflow adds a CPU index)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

mathjax: $(MATHJAX)

# MathJax 3 from the npm registry, served from the built site's _static/mathjax (no CDN at reading time).
# It lives in _mathjax, not in the source _static: Jupyter Book adds every .js under _static to every page.
# (_static/mathjax is where earlier versions put it: removed so that no page loads its ~70 scripts.)
$(MATHJAX):
	@echo "Fetching MathJax 3 from the npm registry"
	rm -rf _build/mathjax-pkg _static/mathjax && mkdir -p _build/mathjax-pkg _mathjax
	cd _build/mathjax-pkg && npm pack --silent mathjax@3 >/dev/null && tar xzf mathjax-*.tgz
	cp -r _build/mathjax-pkg/package/es5/. _mathjax/
	test -f $@

export: venv
	$(BIN)/nbdev_export

# The chapters run against optbook as a learner installs it: a wheel built from this tree, installed (without its
# dependencies, which the venv has) into _build/colab/site, which the book's kernel puts first on sys.path in place
# of the editable checkout (_ext/optbook_book.py, OPTBOOK_WHEEL_SITE). A file missing from the wheel fails the chapter.
colab-wheel: venv export
	@rm -rf _build/colab && mkdir -p _build/colab
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w _build/colab/dist . >/dev/null
	$(PY) -m pip install -q --no-deps --no-compile --target _build/colab/site _build/colab/dist/optbook-*.whl

# The package must be exactly what the notebooks export.
check-export: export
	@if [ -n "$$(git status --porcelain -- optbook)" ]; then \
	  echo "optbook/ is out of sync with nbs/: run nbdev_export and commit"; git status --porcelain -- optbook; exit 1; fi
	@echo "optbook/ is in sync with nbs/"

# Not part of `make test` (the book build runs the cells): the notebooks' cells through nbdev alone, no book.
nbtest: venv
	$(BIN)/nbdev_test --n_workers 2

# All of tests/ at once, against the last build.
pytest: venv
	$(BIN)/pytest -q tests

# The benchmark of the book's performance appendix (not a test): BENCH_OPTS="--quick" or "--device cuda", ...
BENCH_OPTS ?=
# The torch floor, tested: the optimizer tests (the registry, each chapter's optimizer tests, the core, the protocol)
# on the oldest torch settings.ini allows and on Colab's, each in its own venv (.venv-torch-VERSION) with the default
# PyPI build and its CUDA libraries (torch imports them even on a CPU; no multi-GB download is repeated once the venv
# exists). optbook itself comes from this tree (PYTHONPATH). The compiled rules and the fused path (tests/test_fused.py)
# are tested too: torch's compiler changes between versions, and fused=True once failed on Colab's torch 2.11 only
# (about 2.5 min more per version on 2 cores). Spread over TEST_WORKERS processes with one torch thread each, as `make
# unit` is. One by one, on a slow day of this 2-core machine (CI's make test took 1545 s, against 619 s the day before),
# torch 2.6.0's tests took 831 s and 2.11.0's 633 s, and CI had run 62 min before colab-run began: near CI's limit of
# 90. Not part of `make test`; CI runs it after (.ci/run).
FLOOR_TORCH ?= 2.6.0 2.11.0
FLOOR_TESTS := tests/test_core.py tests/test_registry.py tests/test_sgd.py tests/test_adaptive.py tests/test_adam.py \
               tests/test_shampoo.py tests/test_sign.py tests/test_muon.py tests/test_lbfgs.py tests/test_compare.py \
               tests/test_fused.py
# Disk: each venv holds about 5.3 GB (torch 1.6 GB, its CUDA libraries 2.9 GB, triton 0.7 GB), and pip also holds the
# downloaded wheels while it installs: installing torch 2.6.0 took 8.1 GB at its peak (measured with df, 2026-12-07).
# FLOOR_FREE_GB is checked before each install, so that a full disk stops the target with a message that says so, not
# with pip's "No space left on device" half-way. FLOOR_KEEP=0 (CI) deletes each venv once its tests have run, so that
# only one is on disk at a time; pip keeps no cache of the wheels (--no-cache-dir).
FLOOR_KEEP ?= 1
FLOOR_FREE_GB ?= 9
test-floor:
	@for v in $(FLOOR_TORCH); do \
	  venv=.venv-torch-$$v; start=$$(date +%s); \
	  if [ ! -f $$venv/.installed ]; then \
	    rm -rf $$venv; free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	    if [ "$$free" -lt $(FLOOR_FREE_GB) ]; then \
	      echo "make test-floor: installing torch $$v with its CUDA libraries needs about $(FLOOR_FREE_GB) GB free in $(CURDIR)," \
	           "and only $$free GB are free. Free some space (earlier .venv-torch-* folders can go) and rerun."; exit 1; fi; \
	    echo "Setting up $$venv (torch==$$v from PyPI; $$free GB free)"; python3 -m venv $$venv; \
	    $$venv/bin/pip install -q --no-cache-dir "torch==$$v" numpy pytest pytest-xdist hypothesis tqdm; \
	    $$venv/bin/pip install -q --no-cache-dir --no-deps lion-pytorch; touch $$venv/.installed; fi; \
	  $$venv/bin/python -c "import xdist" 2>/dev/null || $$venv/bin/pip install -q --no-cache-dir pytest-xdist; \
	  echo "torch $$v:"; status=0; \
	  PYTHONPATH=$(CURDIR) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $$venv/bin/python -m pytest -q -p no:cacheprovider \
	    -n $(TEST_WORKERS) $(FLOOR_TESTS) || status=$$?; \
	  if [ "$(FLOOR_KEEP)" = 0 ]; then rm -rf $$venv; fi; \
	  if [ $$status != 0 ]; then echo "make test-floor: torch $$v failed"; exit $$status; fi; \
	  echo "make test-floor: torch $$v passed in $$(( $$(date +%s) - start )) s"; \
	done

# "Run all" as on Colab, on Colab's torch: every notebook's code cells in order, each notebook in a fresh process
# (tests/gpu_notebooks.py: it skips the install cell and takes optbook from this tree, PYTHONPATH), in a venv with
# Colab's torch from PyPI (CPU here; its CUDA libraries are installed but unused) and the packages Colab preinstalls,
# plus the three that the chapters' install cells add (plotly, lion-pytorch, optuna); in a temporary folder, as the
# book runs them (run_in_temp), so that nothing a chapter writes lands in the checkout. It catches what the book's build
# cannot: a torch API that the build's torch has and Colab's lacks, or a cell that assumes the build's front end
# (plotly's renderer on Colab is "colab", which shows HTML only; a check of 91_viz once assumed Jupyter's). Not part of
# `make test` (about 5 min to install, 7 to run on 2 cores); CI runs it with COLAB_KEEP=0, which deletes the venv
# (about 6 GB) afterwards.
COLAB_TORCH ?= 2.11.0
COLAB_PKGS := numpy scipy pandas matplotlib sympy scikit-learn tqdm ipywidgets ipython plotly lion-pytorch optuna
COLAB_KEEP ?= 1
colab-run:
	@venv=.venv-colab; start=$$(date +%s); \
	if [ ! -f $$venv/.installed ] || [ "$$(cat $$venv/.installed)" != "$(COLAB_TORCH)" ]; then \
	  rm -rf $$venv; free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  if [ "$$free" -lt $(FLOOR_FREE_GB) ]; then \
	    echo "make colab-run: installing torch $(COLAB_TORCH) with its CUDA libraries needs about $(FLOOR_FREE_GB) GB free in" \
	         "$(CURDIR), and only $$free GB are free. Free some space (.venv-torch-* folders can go) and rerun."; exit 1; fi; \
	  echo "Setting up $$venv (torch==$(COLAB_TORCH) from PyPI and Colab's packages; $$free GB free)"; python3 -m venv $$venv; \
	  $$venv/bin/pip install -q --no-cache-dir "torch==$(COLAB_TORCH)" $(COLAB_PKGS) || exit 1; \
	  echo $(COLAB_TORCH) > $$venv/.installed; fi; \
	status=0; run=$$(mktemp -d); cd $$run && PYTHONPATH=$(CURDIR) MPLBACKEND=Agg $(CURDIR)/$$venv/bin/python $(CURDIR)/tests/gpu_notebooks.py \
	  --timeout 600 $(addprefix $(CURDIR)/,$(wildcard nbs/*.ipynb)) || status=$$?; cd $(CURDIR) && rm -rf $$run; \
	if [ "$(COLAB_KEEP)" = 0 ]; then rm -rf $$venv; fi; \
	if [ $$status != 0 ]; then echo "make colab-run: a notebook failed on torch $(COLAB_TORCH) (see above)"; exit $$status; fi; \
	echo "make colab-run: every notebook ran on torch $(COLAB_TORCH) in $$(( $$(date +%s) - start )) s"

# heavyball==3.2.0: a peer of the benchmark only (its compiled AdamW, the version whose figures the performance issue
# quotes), installed here and nowhere else: no test or chapter imports it. --no-deps with its one other dependency,
# opt-einsum, so that pip never replaces the venv's CPU torch (heavyball asks for torch<3 and numpy>=2.3.4, which
# the venv has).
bench: venv export
	@$(PY) -c "import heavyball" 2>/dev/null || $(PY) -m pip install -q --no-deps heavyball==3.2.0 "opt-einsum>=3.4"
	$(PY) tests/bench.py $(BENCH_OPTS)
	@# the appendix page reads the CSV, which Sphinx does not track: mark the page changed, so that the next
	@# `make book` executes it again with the new figures (otherwise it keeps the earlier build's)
	@touch nbs/94_perf.ipynb

clean:
	rm -rf _build
