"""Sphinx glue for the optbook book (loaded through `sphinx.local_extensions` in _config.yml).

Four jobs:

1. `read_nbdev` is registered as myst-nb's reader for `.ipynb` (`nb_custom_formats`). It turns nbdev's
   cell directives into what MyST-NB understands, so no `#| ...` line ever reaches a page (`DIRECTIVES`
   below is the whole vocabulary the book accepts):

   - `#| hide`, `#| include: false` and cells holding only directives (`#| default_exp core`) get the
     `remove-cell` tag: they still execute, but nothing of them is shown;
   - `#| echo: false` becomes `remove-input`, `#| output: false` becomes `remove-output`,
     `#| code-fold: true` becomes `hide-input` (folded, one click to open);
   - `#| eval: false` is refused: Colab's "Run all" ignores nbdev's directives and runs every cell, so
     the book runs every cell too, and a cell that cannot run on Colab is a defect to fix in its code;
   - `#| export`, `exports`, `exporti` (with or without a module) are for `nbdev_export` and change
     nothing on the page;
   - any other directive, or a `#|` line after the code has begun (nbdev ignores it, the page would
     show it), is an error that names the notebook, the cell and the line: a Sphinx warning under the
     build (`-W` makes it fatal), a `ValueError` elsewhere.

   It also joins the soft line breaks of Chinese prose in markdown cells (`join_cjk_lines`): a browser
   renders a newline between two Chinese characters as a visible space, which Chinese typography has not.

2. Every notebook of the build runs once, Colab-style, in the `optbook-colab` kernel that this
   extension writes into `_build/jupyter/kernels` (found through `JUPYTER_PATH`; `_config.yml` maps
   every notebook's kernel to it with `nb_kernel_rgx_aliases`, and runs it in a temporary directory
   with `execute: run_in_temp`). The kernel is this venv's Python started through `colab_kernel`
   (`python optbook_book.py kernel -f CONNECTION_FILE`): before ipykernel starts it makes the
   development-only packages (`DEV_ONLY`) unimportable, as they are on Colab (`myst_nb` stays, for
   `glue`, see `BOOK_ONLY`), hides the packages Colab does not preinstall (`NOT_ON_COLAB`: Optuna,
   lion-pytorch, psycopg2) until the notebook itself installs them with `pip` through `subprocess` (the
   kernel runs that pip command for real, offline, and then lifts the block), drops the repository from
   sys.path, imports optbook from the wheel that `make book` built and installed into `_build/colab/site`
   (`OPTBOOK_WHEEL_SITE`; the editable install's finder is removed), takes a fresh IPython profile, and writes a record of itself (notebook, working directory,
   what it blocked, what the notebook installed and in which cell) to `_build/jupyter/runs/`, which
   tests/test_colab_run.py checks. Every code cell runs (`#| eval: false` is refused), as in Colab's
   "Run all". That one execution is the book's output, the notebooks' cell tests and the Colab check at once.

3. At `build-finished` it writes `_build/exec_times.json`, each chapter's execution time and status
   from myst-nb's execution data; `python _ext/optbook_book.py exec-table` prints it (make does). It also
   copies the wheel the chapters ran against into the site's `_static/` (`publish_wheel`), the install cells' fallback.

4. `python optbook_book.py build -j N ARGS` is `jupyter-book build ARGS` with N notebooks executing at a time (`build`;
   make's BOOK_JOBS). The Sphinx parts above are parallel-safe: the kernel's document name travels in the reading
   process's environment, and the execution data is merged back by myst-nb.
"""
import json, os, pathlib, re, sys, time

KERNEL = "optbook-colab"
DEV_ONLY = ("nbdev", "fastcore", "execnb")  # on the development machine only, never on Colab: blocked in the kernel
# myst_nb is also absent on Colab, but the book's kernel must import it: `myst_nb.glue` is how a chapter puts a
# computed number into its prose, and the one execution is the one that makes the page. A chapter may import it
# only under `try: ... except ImportError:` with a fallback (tests/test_notebooks.py checks that statically).
BOOK_ONLY = ("myst_nb",)

_DIRECTIVE = re.compile(r"^\s*#\s*\|(.*)$")
_MAGIC = re.compile(r"^\s*%%\w+")

# The book's whole directive vocabulary: (name, first argument or None for any) -> MyST-NB tag or None.
DIRECTIVES = {
    ("hide", None): "remove-cell", ("include:", "false"): "remove-cell", ("include:", "true"): None,
    ("default_exp", None): "remove-cell",
    ("export", None): None, ("exports", None): None, ("exporti", None): None,
    ("echo:", "false"): "remove-input", ("echo:", "true"): None,
    ("output:", "false"): "remove-output", ("output:", "true"): None,
    ("eval:", "true"): None,   # `eval: false` is refused (see _ADVICE): Colab's "Run all" would run the cell anyway
    ("code-fold:", "true"): "hide-input", ("code-fold:", "show"): None, ("code-fold:", "false"): None,
}
# Directives nbdev or Quarto know but the book does not honour, with what to write instead.
_ADVICE = {
    "notest": "the book build is the notebooks' test run and executes every cell, as Colab's \"Run all\" does",
    "slow": "the book build is the notebooks' test run and executes every cell, as Colab's \"Run all\" does; "
            "make the demo smaller on the CPU (and larger only when a GPU is there)",
    "eval:": "Colab's \"Run all\" ignores nbdev's directives and runs every cell, and so does the book: make the cell "
             "safe to run instead (guard it in code, for example act only when an environment variable names what it "
             "needs, and otherwise print what it would do), or show the code in a markdown code block",
    "hide_input": "that is nbdev 1; write `#| echo: false`",
    "hide_output": "that is nbdev 1; write `#| output: false`",
    "filter_stream": "the book shows streams as they are; print less instead",
    "exec_doc": "the book has no show_doc pages; nothing to execute for docs",
    "output:": "only `output: false` or `output: true`",
}


def _parse(line: str):
    "One `#|` line as nbdev reads it: (name, args), with `key: value` normalised to ('key:', ['value'])."
    body = _DIRECTIVE.match(line).group(1).strip()
    if body.endswith(":"): body = body[:-1]
    body = body.replace(":", ": ")
    parts = body.split()
    return (parts[0], parts[1:]) if parts else None


def _directives(source: str):
    """Split a code cell into its leading directive region and the rest, as nbdev does.

    The region holds `#|` lines, blank lines and cell magics (`%%time`); the magics stay in the code.
    Returns (directives as (line, name, args), the code without directive lines, stray `#|` lines after it)."""
    lines = source.splitlines()
    found, kept, i = [], [], 0
    while i < len(lines) and (not lines[i].strip() or _DIRECTIVE.match(lines[i]) or _MAGIC.match(lines[i])):
        if _DIRECTIVE.match(lines[i]):
            parsed = _parse(lines[i])
            if parsed: found.append((lines[i].strip(), *parsed))
        elif lines[i].strip(): kept.append(lines[i])
        i += 1
    rest = lines[i:]
    stray = [ln.strip() for ln in rest if _DIRECTIVE.match(ln)]
    return found, "\n".join(kept + rest), stray


def directive_tag(name: str, args):
    "The MyST-NB tag for a directive (None when it needs none); KeyError when the book does not support it."
    key = (name, " ".join(args).lower()) if name.endswith(":") else (name, None)
    if key not in DIRECTIVES: raise KeyError(name)
    return DIRECTIVES[key]


_CJK = "\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_ENDS_CJK = re.compile(f"[{_CJK}]$")
_STARTS_CJK = re.compile(f"^(\\*\\*|\\*(?!\\s)|_)?[{_CJK}]")  # also **粗体** and *强调*
_CJK_PUNCT_END = re.compile("[\uff0c\u3002\uff1b\uff1a\u3001\uff01\uff1f\uff09\u300d\u300f\u300b\u201d\u2019\u2014\u2026]$")  # incl. —— and ……
# a line that starts a block of its own: never glue it onto the line before
_BLOCK_START = re.compile(r"^\s*([-*+]\s|\d+[.)]\s|#|>|\||:::|```|~~~|\$\$|:\w|\{|<)")
# a line that must stay whole: headings, fences and directive openings, directive options
_KEEP_WHOLE = re.compile(r"^\s*(#|:::|```|~~~|\$\$|:\w)")


def join_cjk_lines(text: str) -> str:
    "Join soft line breaks inside Chinese prose, leaving code fences, display math and block starts alone."
    out, fence, math = [], None, False
    for line in text.split("\n"):
        stripped = line.strip()
        fence_mark = re.match(r"^(`{3,}|~{3,})(.*)$", stripped)
        if fence is None and fence_mark:
            # a fence opening a directive ({prf:theorem}, {exercise}) holds prose; any other holds code
            fence = ("prose" if fence_mark.group(2).strip().startswith("{") else "code", fence_mark.group(1))
            out.append(line); continue
        if fence is not None and stripped.startswith(fence[1]) and not stripped[len(fence[1]):].strip():
            fence = None; out.append(line); continue
        if stripped.startswith("$$"):
            math = not math if stripped.count("$$") == 1 else math
            out.append(line); continue
        in_code = fence is not None and fence[0] == "code"
        prev = out[-1].rstrip() if out else ""
        glue = (not in_code and not math and prev and stripped and not _BLOCK_START.match(line)
                and not _KEEP_WHOLE.match(out[-1])
                and (_CJK_PUNCT_END.search(prev) or (_ENDS_CJK.search(prev) and _STARTS_CJK.match(stripped))))
        if glue: out[-1] = prev + stripped
        else: out.append(line)
    return "\n".join(out)


def clean_notebook(nb, name: str = "notebook", warn=None):
    """Map nbdev directives to MyST-NB tags and strip them from every code cell, in place; join Chinese lines.

    Each directive the book does not support is reported, with `name` and the cell's number, through
    `warn(message)`; without `warn`, all of them together raise a ValueError."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown": cell.source = join_cjk_lines(cell.source)
        if cell.cell_type != "code": continue
        found, rest, stray = _directives(cell.source)
        first = rest.strip().splitlines()[0][:40] if rest.strip() else ""
        where = f"{name}, code cell {i}" + (f" ({first!r} …)" if first else "")
        for line in stray:
            problems.append(f"{where}: `{line}` comes after the code has begun, where nbdev does not read it "
                            f"and the page would show it; move it to the top of the cell")
        if not found and not stray: continue
        tags = cell.metadata.setdefault("tags", [])
        for line, d, args in found:
            try:
                tag = directive_tag(d, args)
            except KeyError:
                advice = _ADVICE.get(d, "the book supports " + ", ".join(sorted(
                    "`" + k[0] + (" " + k[1] if k[1] else "") + "`" for k in DIRECTIVES)))
                problems.append(f"{where}: the book does not support the nbdev directive `{line}`: {advice}")
                continue
            if tag and tag not in tags: tags.append(tag)
        if not rest.strip() and "remove-cell" not in tags: tags.append("remove-cell")
        cell.source = "\n".join(ln for ln in rest.splitlines() if not _DIRECTIVE.match(ln))
    if problems:
        if warn is None: raise ValueError("\n".join(problems))
        for p in problems: warn(p)
    return nb


_current = {"docname": None, "path": None}  # the document Sphinx is reading in this process


def read_nbdev(text: str, **kwargs):
    "myst-nb reader: a notebook with nbdev directives turned into tags; unsupported ones are Sphinx warnings."
    import nbformat
    from sphinx.util import logging
    logger = logging.getLogger(__name__)
    doc, path = _current["docname"], _current["path"]
    warn = lambda msg: logger.warning(msg, location=(doc, None) if doc else None, type="optbook", subtype="directive")
    return clean_notebook(nbformat.reads(text, as_version=4), name=path or "notebook", warn=warn)


# ---------------------------------------------------------------- the Colab-style kernel

def kernel_dirs(build: pathlib.Path):
    "Where the build keeps its kernelspec (found through JUPYTER_PATH), the IPython profile and the run records."
    root = pathlib.Path(build) / "jupyter"
    return root, root / "kernels" / KERNEL, root / "ipython", root / "runs"


def install_kernel(build: pathlib.Path) -> pathlib.Path:
    "Write the `optbook-colab` kernelspec under `build`/jupyter and put that folder first on JUPYTER_PATH."
    root, spec, ipython, runs = kernel_dirs(build)
    for d in (spec, ipython, runs): d.mkdir(parents=True, exist_ok=True)
    site = (pathlib.Path(build) / "colab" / "site").resolve()   # the wheel `make book` installs (Makefile: colab-wheel)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(pathlib.Path(__file__).resolve()), "kernel", "-f", "{connection_file}"],
        "display_name": "Python 3 (optbook, as on Colab)",
        "language": "python",
        "env": {"IPYTHONDIR": str(ipython), "OPTBOOK_KERNEL_RUNS": str(runs),
                **({"OPTBOOK_WHEEL_SITE": str(site)} if site.is_dir() else {})},
        "metadata": {"debugger": False},
    }, indent=1), encoding="utf-8")
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != str(root)]
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root)] + paths)
    return spec


class _DevOnly:
    "A meta-path finder that makes the development-only packages unimportable, as they are on Colab."
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in DEV_ONLY:
            raise ModuleNotFoundError(f"No module named {name!r} (development-only; absent on Colab)", name=name)
        return None


# Packages Colab does not preinstall (import name -> the pip distributions that provide it). In the book's kernel they
# are absent, as on Colab, until the notebook itself installs one of those distributions with pip (see `_PipOnColab`):
# a chapter that needs one must install it in its first cell, and tests/test_colab_run.py checks that it did and that
# no other chapter so much as looked one up.
NOT_ON_COLAB = {"optuna": ("optuna",), "lion_pytorch": ("lion-pytorch",), "psycopg2": ("psycopg2", "psycopg2-binary")}


def _dist_name(name: str) -> str:
    "A distribution name normalized as pip compares them (PEP 503)."
    return re.sub(r"[-_.]+", "-", name).lower()


class _NotOnColab:
    """The kernel's view of the packages Colab lacks: which are still hidden, which were looked up while hidden.

    Hiding is done by `_Gated` wrappers around the meta-path finders present at start (PathFinder finds site-packages),
    so that `importlib.util.find_spec(name)` returns None and `import name` raises ModuleNotFoundError, exactly what a
    notebook meets on Colab. A raising finder (like `_DevOnly`) would not do: find_spec would raise instead of saying
    None, and the install cell's `find_spec(...) is None` test would crash. The metadata stays visible
    (`importlib.metadata.version` still answers); only imports are hidden."""
    def __init__(self, hidden, on_change=lambda: None):
        self.hidden, self.looked_up, self.on_change = set(hidden), [], on_change

    def hides(self, name: str) -> bool:
        top = name.partition(".")[0]
        if top not in self.hidden: return False
        if top not in self.looked_up:
            self.looked_up.append(top)
            self.on_change()
        return True

    def lift(self, dists) -> list:
        "Unhide the import names that the distributions `dists` provide; returns them."
        wanted = {_dist_name(d) for d in dists}
        lifted = sorted(m for m in self.hidden if wanted & {_dist_name(d) for d in NOT_ON_COLAB[m]})
        self.hidden -= set(lifted)
        if lifted:
            import importlib
            importlib.invalidate_caches()
        return lifted


class _Gated:
    "A meta-path finder that answers None for what `gate` hides and defers to the wrapped finder for everything else."
    def __init__(self, finder, gate: _NotOnColab): self._finder, self._gate = finder, gate
    def find_spec(self, name, path=None, target=None):
        if self._gate.hides(name): return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find is not None else None
    def __getattr__(self, attr): return getattr(self._finder, attr)   # find_distributions, invalidate_caches, ...
    def __repr__(self): return f"_Gated({self._finder!r})"


# pip options that take a value in the next argument (so the value is not read as a requirement)
_PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i", "--index-url",
                      "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix", "--root", "--src",
                      "--upgrade-strategy", "--platform", "--python-version", "--implementation", "--abi",
                      "--no-binary", "--only-binary", "--progress-bar", "--log", "--cache-dir", "--proxy", "--retries",
                      "--timeout", "--trusted-host", "--config-settings", "-C", "--report", "--exists-action"}


def pip_install_requirements(cmd):
    "The distribution names that `cmd`, a `[sys.executable, '-m', 'pip', 'install', ...]` list, installs; None for any other command."
    if isinstance(cmd, (str, bytes)) or not isinstance(cmd, (list, tuple)) or len(cmd) < 4: return None
    if [str(c) for c in cmd[:4]] != [sys.executable, "-m", "pip", "install"]: return None
    names, args = [], [str(c) for c in cmd[4:]]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _PIP_VALUE_OPTIONS: i += 2; continue
        if not arg.startswith("-"):
            names.append(_dist_name(re.split(r"[\s\[<>=!~;@]", arg.strip(), maxsplit=1)[0]))
        i += 1
    return names


class _PipOnColab:
    """The kernel's `subprocess.check_call` and `subprocess.run` for `[sys.executable, "-m", "pip", "install", ...]`.

    The notebook's own pip command runs for real, with `--no-index` added: a requirement that is already satisfied
    (everything a chapter installs is a dev requirement of this venv) is reported as such without pip contacting any
    index, with or without `--no-index` (checked by running pip against an unreachable index URL), and `--no-index` makes
    sure the book build never downloads: a requirement the venv lacks fails the cell instead. The pip version check and
    the root-user warning are switched off so that pip writes nothing to stderr. When pip succeeds, the packages it
    named are lifted from the `_NotOnColab` gate; each call is logged (command, the calling cell's source, exit code, what it unhid)
    in the run record. Any other command goes to the real function untouched."""
    def __init__(self, gate: _NotOnColab, log: list, on_change=lambda: None):
        import subprocess
        self.gate, self.log, self.on_change, self.subprocess = gate, log, on_change, subprocess
        self.real_run, self.real_check_call = subprocess.run, subprocess.check_call

    def install(self):
        self.subprocess.run, self.subprocess.check_call = self.run, self.check_call

    def _pip(self, cmd, names, capture: bool):
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore"}
        ran = [str(c) for c in cmd] + ["--no-index"]
        done = self.real_run(ran, env=env, capture_output=True, text=True)
        if not capture:                                  # what pip printed goes where the notebook shows it
            sys.stdout.write(done.stdout); sys.stderr.write(done.stderr)
        lifted = self.gate.lift(names) if done.returncode == 0 else []
        try:                                             # the source of the cell that called pip: the execute request's code
            from IPython import get_ipython
            cell = get_ipython().kernel.get_parent()["content"]["code"]
        except Exception:
            cell = None
        self.log.append({"command": [str(c) for c in cmd], "ran": ran, "cell": cell, "returncode": done.returncode,
                         "requirements": names, "unhidden": lifted})
        self.on_change()
        return self.subprocess.CompletedProcess(cmd, done.returncode, done.stdout if capture else None,
                                                done.stderr if capture else None)

    def check_call(self, cmd, *args, **kwargs):
        names = pip_install_requirements(cmd)
        if names is None: return self.real_check_call(cmd, *args, **kwargs)
        done = self._pip(cmd, names, capture=False)
        if done.returncode: raise self.subprocess.CalledProcessError(done.returncode, cmd)
        return 0

    def run(self, cmd, *args, **kwargs):
        names = pip_install_requirements(cmd)
        if names is None: return self.real_run(cmd, *args, **kwargs)
        capture = bool(kwargs.get("capture_output")) or kwargs.get("stdout") is not None
        done = self._pip(cmd, names, capture=capture)
        if kwargs.get("check") and done.returncode:
            raise self.subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
        return done


def colab_kernel(argv):
    """Start ipykernel as Colab would give it: no dev-only packages, none of NOT_ON_COLAB until the notebook installs
    it with pip, no repository on sys.path, a fresh profile; the run record says what was blocked and installed."""
    here = str(pathlib.Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and pathlib.Path(p).resolve() != pathlib.Path(here)]
    wheel_site = os.environ.get("OPTBOOK_WHEEL_SITE")
    if wheel_site:   # optbook as a learner gets it, from the built wheel, not from the editable checkout
        sys.path.insert(0, wheel_site)
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                            and "__editable__" not in getattr(type(f), "__module__", "")]
    runs = os.environ.get("OPTBOOK_KERNEL_RUNS")
    doc = os.environ.get("OPTBOOK_DOCNAME") or f"unknown-{os.getpid()}"
    out = pathlib.Path(runs) / (doc.replace("/", "__") + ".json") if runs else None
    record = {}
    def save():
        if out is not None: out.write_text(json.dumps(record, indent=1), encoding="utf-8")
    gate = _NotOnColab(NOT_ON_COLAB, on_change=save)
    sys.meta_path[:] = [_Gated(f, gate) for f in sys.meta_path]
    sys.meta_path.insert(0, _DevOnly())
    blocked = {}
    for mod in DEV_ONLY:
        try: __import__(mod); blocked[mod] = False
        except ModuleNotFoundError: blocked[mod] = True
    import importlib.util
    hidden = {mod: importlib.util.find_spec(mod) is None for mod in NOT_ON_COLAB}
    spec = importlib.util.find_spec("optbook")              # where `import optbook` will load from (nothing imported yet)
    optbook_origin = spec.origin if spec is not None else None
    gate.looked_up.clear()                               # the probe above is ours, not the notebook's
    installs = []
    _PipOnColab(gate, installs, on_change=save).install()
    record.update({"docname": doc, "kernel": KERNEL, "cwd": os.getcwd(), "python": sys.executable,
                   "pid": os.getpid(), "started": time.time(), "dev_only_blocked": blocked,
                   "not_on_colab_hidden": hidden, "looked_up_while_hidden": gate.looked_up, "pip_installs": installs,
                   "optbook_wheel_site": wheel_site, "optbook_origin": optbook_origin})
    save()
    from ipykernel.kernelapp import launch_new_instance
    launch_new_instance(argv=argv)


# ---------------------------------------------------------------- execution times

def _source_read(app, docname, source):
    "Remember which document this process reads, for warnings and for the kernel's run record."
    _current["docname"], _current["path"] = docname, str(app.env.doc2path(docname, False))
    os.environ["OPTBOOK_DOCNAME"] = docname


def _before_read(app, env, docnames):
    "Forget the run records of the documents about to be read again."
    runs = kernel_dirs(pathlib.Path(app.outdir).parent)[3]
    for doc in docnames:
        (runs / (doc.replace("/", "__") + ".json")).unlink(missing_ok=True)


def _notebooks(app):
    "The book's notebooks in reading order (the _toc.yml walk), as docnames."
    site_map = getattr(app.env, "external_site_map", None)
    order = []
    def walk(doc):
        if doc in order or site_map is None or doc not in site_map: return
        order.append(doc)
        for tree in site_map[doc].subtrees:
            for item in tree.items:
                if isinstance(item, str): walk(item)
    if site_map is not None: walk(site_map.root.docname)
    order += sorted(set(app.env.found_docs) - set(order))
    return [d for d in order if str(app.env.doc2path(d, False)).endswith(".ipynb")]


def write_exec_times(app, exception):
    "Write _build/exec_times.json: each notebook's execution time and status in this build."
    if app.env is None: return
    from myst_nb.sphinx_ import NbMetadataCollector
    data = NbMetadataCollector.get_doc_data(app.env)
    started = getattr(app, "_optbook_started", 0)
    rows = []
    for doc in _notebooks(app):
        ex = data.get(doc, {}).get("exec_data")
        if not ex:  # with raise_on_error the build stops at the failing notebook, the one being read
            seconds = None
            status = ("failed" if exception and doc == _current["docname"] else
                      "not run (the build stopped)" if exception else "not executed")
        else:
            seconds = round(ex["runtime"], 2)
            status = ("ok" if ex["succeeded"] else f"failed: {ex['error']}")
            if ex["mtime"] < started: status += " (earlier build)"
        rows.append({"docname": doc, "seconds": seconds, "status": status,
                     "method": (ex or {}).get("method"), "executed_at": (ex or {}).get("mtime")})
    out = pathlib.Path(app.outdir).parent / "exec_times.json"
    out.write_text(json.dumps({"build_started": started, "build_finished": time.time(), "jobs": app.parallel,
                               "failed": bool(exception), "notebooks": rows}, indent=1), encoding="utf-8")


# make test must stay under 15 minutes on CI's 2-core CPU with about 12 chapters, each executed once. The
# venv, the unit tests and the page tests take 2-4 minutes and the appendices well under a minute together,
# which leaves about a minute per chapter: the table flags a chapter over it.
CHAPTER_BUDGET_S = 60


def exec_table(path="_build/exec_times.json") -> str:
    "The execution times as a table for the terminal."
    d = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    rows = d["notebooks"]
    w = max([len(r["docname"]) for r in rows] + [7])
    lines = [f"{'chapter':<{w}}  {'seconds':>8}  status", f"{'-' * w}  {'-' * 8}  {'-' * 6}"]
    for r in rows:
        s = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        over = "  (over the per-chapter budget of %d s)" % CHAPTER_BUDGET_S if (r["seconds"] or 0) > CHAPTER_BUDGET_S else ""
        lines.append(f"{r['docname']:<{w}}  {s:>8}  {r['status']}{over}")
    total = sum(r["seconds"] or 0 for r in rows)
    lines.append(f"{'total':<{w}}  {total:>8.1f}  (execution, summed over notebooks; the build took "
                 f"{d['build_finished'] - d['build_started']:.0f} s)")
    return "\n".join(lines)


MATHJAX_DIR = "_mathjax"  # MathJax 3's es5 folder, fetched by the Makefile from the npm registry (git ignores it)


def copy_mathjax(app):
    """Copy MathJax into the built site's `_static/mathjax` (where `mathjax_path` points).

    It is kept out of the source `_static` on purpose: Jupyter Book 1 adds every `.js` file under the static paths
    to every page, which would load all ~70 MathJax bundles and components as scripts on each page."""
    if app.builder.format != "html" or not str(app.config.mathjax_path or "").startswith("mathjax/"): return
    src = pathlib.Path(app.srcdir) / MATHJAX_DIR
    if not (src / "tex-chtml.js").is_file():
        from sphinx.errors import ExtensionError
        raise ExtensionError(f"MathJax is missing from {src}: run `make mathjax` (it fetches mathjax@3 from npm)")
    import shutil
    shutil.copytree(src, pathlib.Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True)


def publish_wheel(app, exception):
    """Serve the wheel the chapters ran against from the site itself, `_static/optbook-VERSION-py3-none-any.whl`: the
    book and the package it was built with are published together, and a chapter's install cell falls back to it."""
    if exception is not None or app.builder.format != "html": return
    wheels = sorted((pathlib.Path(app.srcdir) / "_build" / "colab" / "dist").glob("optbook-*.whl"))
    if not wheels: return   # a build outside `make book` (no colab-wheel step); tests/test_release.py checks the real one
    import shutil
    shutil.copy2(wheels[-1], pathlib.Path(app.outdir) / "_static" / wheels[-1].name)


COMMENTS_JS = """
document.addEventListener("DOMContentLoaded", function () {
  var cfg = %s;
  var host = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
  var box = document.createElement("div");
  box.className = "optbook-comments";
  var script = document.createElement("script");
  script.src = "https://utteranc.es/client.js";
  script.async = true;
  script.crossOrigin = "anonymous";
  Object.keys(cfg).forEach(function (k) { script.setAttribute(k, cfg[k]); });
  box.appendChild(script);
  host.appendChild(box);
});
"""


def add_comments(app):
    """The utterances comment box at the end of every page, configured by `optbook_comments` in _config.yml.

    Jupyter Book's own `html.comments` (sphinx-comments 0.0.3) looks for `div.section`, which Sphinx 7 no longer
    writes (sections are `<section>` elements), so its box never appeared and each page logged a TypeError."""
    cfg = app.config.optbook_comments
    if cfg and app.builder.format == "html":
        app.add_js_file(None, body=COMMENTS_JS % json.dumps(cfg, ensure_ascii=False))


def dedupe_scripts(app, pagename, templatename, context, doctree):
    """Drop repeated scripts from a page: inline scripts added before the build (sphinx-thebe's, sphinx-togglebutton's,
    ours) reach the page twice, once with filename None and once with '', and the second `const THEBE_JS_URL` is a
    SyntaxError in the reader's console."""
    seen, kept = set(), []
    for js in context.get("script_files", []):
        attrs = {k: v for k, v in (getattr(js, "attributes", None) or {}).items() if k != "priority"}
        key = (str(getattr(js, "filename", js) or ""), tuple(sorted(attrs.items())))  # inline ones come as None and ''
        if key not in seen:
            seen.add(key); kept.append(js)
    if "script_files" in context: context["script_files"][:] = kept


def _builder_inited(app):
    app._optbook_started = time.time()
    install_kernel(pathlib.Path(app.outdir).parent)
    copy_mathjax(app)
    add_comments(app)


def setup(app):
    app.add_config_value("optbook_comments", {}, "html")
    app.connect("html-page-context", dedupe_scripts)
    app.connect("builder-inited", _builder_inited)
    app.connect("env-before-read-docs", _before_read)
    app.connect("source-read", _source_read)
    app.connect("build-finished", write_exec_times)
    app.connect("build-finished", publish_wheel)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}


# ---------------------------------------------------------------- the build, BOOK_JOBS notebooks at a time

def build(argv, jobs: int):
    """`jupyter-book build ARGV` with Sphinx reading `jobs` documents at a time, each in its own forked process.

    Jupyter Book 1's command line has no `-j`, but its `build_sphinx` takes `jobs` and passes it to Sphinx, whose
    parallel reading runs each process's documents through myst-nb, so their notebooks execute side by side (every
    extension of the book declares itself parallel-safe; the execution data is merged back by myst-nb). Sphinx
    groups the documents into a few contiguous batches; here every document is its own batch (for reading and for
    writing), so that a process that is done takes the next notebook instead of waiting behind a batch that holds two
    long chapters."""
    import functools
    import sphinx.builders, jupyter_book.sphinx, sphinx_multitoc_numbering, sphinx_jupyterbook_latex
    from jupyter_book.cli.main import main
    if jobs > 1:
        jupyter_book.sphinx.build_sphinx = functools.partial(jupyter_book.sphinx.build_sphinx, jobs=jobs)
        sphinx.builders.make_chunks = lambda arguments, nproc, maxbatch=10: [[a] for a in arguments]
        # Two extensions that Jupyter Book adds declare nothing, so Sphinx would read serially: sphinx-multitoc-numbering
        # only replaces how the toctree collector numbers sections (once, in the main process, after the reading), and
        # sphinx-jupyterbook-latex only adds nodes and transforms that act for the LaTeX builder. Neither keeps state
        # between documents, so both are declared parallel-safe here.
        for module in (sphinx_multitoc_numbering, sphinx_jupyterbook_latex):
            def setup(app, setup=module.setup):
                return {**(setup(app) or {}), "parallel_read_safe": True, "parallel_write_safe": True}
            module.setup = setup
        # sphinx-proof keeps its theorems in env.proof_list, which its own env-merge-info handler merges; its domain
        # holds no data of its own, but lacks the merge_domaindata that Sphinx calls after every parallel read.
        import sphinx_proof.domain
        sphinx_proof.domain.ProofDomain.merge_domaindata = lambda self, docnames, otherdata: None
        # one intra-op thread per kernel: `jobs` kernels on as many cores; torch's default (a thread per core in every
        # kernel) would put `jobs` threads on each core, and its threads wait for each other at every operation
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(["build", *argv], prog_name="jupyter-book")


if __name__ == "__main__":
    if sys.argv[1:2] == ["kernel"]:
        colab_kernel(sys.argv[2:])
    elif sys.argv[1:2] == ["build"]:
        jobs, rest = (sys.argv[3:4], sys.argv[4:]) if sys.argv[2:3] == ["-j"] else (["1"], sys.argv[2:])
        if not (jobs and jobs[0].isdigit() and int(jobs[0]) >= 1):
            sys.exit(f"optbook_book.py build: -j needs a whole number of jobs >= 1 (make's BOOK_JOBS), got {jobs[0] if jobs else 'nothing'!r}")
        build(rest, int(jobs[0]))
    elif sys.argv[1:2] == ["exec-table"]:
        print(exec_table(*sys.argv[2:3]))
    else:
        sys.exit("usage: optbook_book.py kernel -f CONNECTION_FILE | exec-table [_build/exec_times.json] | build [-j N] ARGS")
