"""Every chapter runs once, as a learner would run it in Colab or Kaggle, and that run is the book build.

The build executes each notebook in the `optbook-colab` kernel (_ext/optbook_book.py): a fresh kernel per
notebook, a temporary working directory instead of nbs/, and none of the development-only packages
(nbdev, fastcore, execnb) importable. A failing cell fails the build (`raise_on_error`), so the chapters'
own checks are the cell tests; no notebook is executed a second time here. These tests check that the
build really ran that way, from what it left in _build: the kernel's record of each run, the execution
times, and the executed notebooks. One more test starts the kernel itself to check what it blocks.
"""
import json, pathlib, sys

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from conftest import ROOT

sys.path.insert(0, str(ROOT / "_ext"))
import optbook_book  # noqa: E402

BUILD = ROOT / "_build"
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
DOCS = [TOC["root"]] + [ch["file"] for part in TOC.get("parts", []) for ch in part["chapters"]]
NOTEBOOKS = [d for d in DOCS if (ROOT / f"{d}.ipynb").exists()]


def exec_times():
    path = BUILD / "exec_times.json"
    if not path.exists(): pytest.fail("_build/exec_times.json is missing: run `make book` first")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.book
def test_exec_times_list_every_notebook_of_the_toc():
    times = exec_times()
    assert not times["failed"], "the last build failed"
    assert [r["docname"] for r in times["notebooks"]] == NOTEBOOKS, "every notebook of _toc.yml, in its order"
    for r in times["notebooks"]:
        assert r["status"].startswith("ok"), f"{r['docname']}: {r['status']}"
        assert r["method"] == "force" and r["seconds"] > 0, r


@pytest.mark.book
def test_notebooks_ran_side_by_side_when_the_build_had_jobs():
    "With BOOK_JOBS > 1 (make's default on more than one CPU) some notebooks' executions overlap in time; with 1, none do."
    times = exec_times()
    spans = sorted((r["executed_at"] - r["seconds"], r["executed_at"], r["docname"]) for r in times["notebooks"]
                   if r["seconds"] and "earlier build" not in r["status"])
    overlaps = [(a[2], b[2]) for a, b in zip(spans, spans[1:]) if b[0] < a[1] - 0.5]
    if times["jobs"] > 1:
        if len(spans) <= 5:   # Sphinx reads in parallel only when more than 5 documents are to be read
            pytest.skip(f"this build executed {len(spans)} notebooks (an incremental build): too few to read in parallel")
        assert overlaps, f"the build had {times['jobs']} jobs, but its {len(spans)} notebooks ran one after another"
    else:
        assert not overlaps, f"a serial build, but these executions overlap: {overlaps}"


@pytest.mark.book
@pytest.mark.parametrize("doc", NOTEBOOKS)
def test_ran_in_the_colab_kernel(doc):
    "The kernel that executed the notebook in this build blocked the dev-only packages and ran outside the repository."
    path = BUILD / "jupyter" / "runs" / (doc.replace("/", "__") + ".json")
    assert path.exists(), f"{doc}: no record of an optbook-colab kernel (is nb_kernel_rgx_aliases in _config.yml?)"
    run = json.loads(path.read_text(encoding="utf-8"))
    assert run["docname"] == doc and run["kernel"] == optbook_book.KERNEL
    row = next(r for r in exec_times()["notebooks"] if r["docname"] == doc)
    assert row["executed_at"] - row["seconds"] - 60 <= run["started"] <= row["executed_at"], \
        f"{doc}: the kernel record is not from the execution that made the page"
    assert all(run["dev_only_blocked"][m] for m in optbook_book.DEV_ONLY), run["dev_only_blocked"]
    cwd = pathlib.Path(run["cwd"]).resolve()
    assert ROOT not in [cwd, *cwd.parents], f"{doc} ran in {cwd}, inside the repository (want run_in_temp)"
    # optbook came from the wheel the build installed, not from the checkout (as a learner's pip install gives it)
    site = (BUILD / "colab" / "site").resolve()
    assert run["optbook_wheel_site"] == str(site), run.get("optbook_wheel_site")
    origin = pathlib.Path(run["optbook_origin"]).resolve()
    assert site in origin.parents and (ROOT / "optbook") not in origin.parents, origin


# The chapters that need a package Colab does not preinstall, and what they install (import names of NOT_ON_COLAB).
INSTALLS = {"nbs/06_sign": ("lion_pytorch",), "nbs/10_search": ("optuna",)}


@pytest.mark.book
@pytest.mark.parametrize("doc", NOTEBOOKS)
def test_packages_colab_lacks_are_installed_by_the_notebook_itself(doc):
    "Optuna (and the rest of NOT_ON_COLAB) was not importable when the kernel started; a chapter that uses it installed it in its first cell."
    run = json.loads((BUILD / "jupyter" / "runs" / (doc.replace("/", "__") + ".json")).read_text(encoding="utf-8"))
    assert run["not_on_colab_hidden"] == {m: True for m in optbook_book.NOT_ON_COLAB}, run["not_on_colab_hidden"]
    wanted = INSTALLS.get(doc, ())
    if not wanted:
        assert run["pip_installs"] == [] and run["looked_up_while_hidden"] == [], \
            f"{doc} looked up or installed a package Colab lacks: {run['looked_up_while_hidden']}, {run['pip_installs']}"
        return
    unhidden = {m: i for i in run["pip_installs"] for m in i["unhidden"]}
    first = optbook_book.clean_notebook(nbformat.read(ROOT / f"{doc}.ipynb", as_version=4))
    first = next(c.source for c in first.cells if c.cell_type == "code")
    for mod in wanted:
        assert mod in unhidden, f"{doc}: {mod} was never installed by the notebook: {run['pip_installs']}"
        assert unhidden[mod]["cell"] == first, f"{doc}: {mod} was installed by another cell than the first: {unhidden[mod]}"
        assert unhidden[mod]["returncode"] == 0, unhidden[mod]
    assert set(run["looked_up_while_hidden"]) <= set(wanted), run["looked_up_while_hidden"]


@pytest.mark.book
@pytest.mark.parametrize("doc", NOTEBOOKS)
def test_executed_notebook_is_clean(doc):
    """Every code cell ran, as Colab's "Run all" runs them, and nothing went to stderr or raised."""
    nb = nbformat.read(BUILD / "jupyter_execute" / f"{doc}.ipynb", as_version=4)
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code" or not c.source.strip(): continue
        assert c.execution_count is not None, f"{doc}, code cell {i} did not run"
        bad = [o.get("text", o.get("ename", ""))[:200] for o in c.outputs
               if o.output_type == "error" or o.get("name") == "stderr"]
        assert not bad, f"{doc}, code cell {i}: {bad}"


@pytest.mark.book
@pytest.mark.parametrize("doc", NOTEBOOKS)
def test_downloadable_notebook_keeps_its_kernel(doc):
    "The kernel alias is the build's business: the .ipynb a reader downloads from the page still names python3."
    nb = nbformat.read(BUILD / "html" / "_sources" / f"{doc}.ipynb", as_version=4)
    assert nb.metadata.kernelspec.name == nbformat.read(ROOT / f"{doc}.ipynb", as_version=4).metadata.kernelspec.name


def test_colab_kernel_blocks_dev_packages(tmp_path, monkeypatch):
    "Start the optbook-colab kernel as the build does and look around inside it: what it blocks, and pip lifting a block."
    monkeypatch.setenv("JUPYTER_PATH", "")
    monkeypatch.setenv("OPTBOOK_DOCNAME", "nbs/probe")
    optbook_book.install_kernel(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    checks = [
        *[f"try:\n    import {m}\nexcept ModuleNotFoundError as e:\n    assert 'development-only' in str(e)\n"
          f"else:\n    raise AssertionError('{m} is importable')" for m in optbook_book.DEV_ONLY],
        "import os, sys, importlib.util\nassert os.getcwd() == " + repr(str(work)),
        "assert not any(p.rstrip('/').endswith('_ext') for p in sys.path), sys.path",
        "assert importlib.util.find_spec('optbook_book') is None",
        "import torch, optbook, matplotlib  # what the chapters need is there",
        "assert os.environ['IPYTHONDIR'].endswith('ipython')",
        # what Colab does not preinstall is absent, as there: find_spec says None, import fails ...
        *[f"assert importlib.util.find_spec('{m}') is None\ntry:\n    import {m}\nexcept ModuleNotFoundError:\n    pass\n"
          f"else:\n    raise AssertionError('{m} is importable')" for m in optbook_book.NOT_ON_COLAB],
        # ... until the notebook installs it with pip (run for real, offline); then it imports, and nothing else does
        "import subprocess\nsubprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', 'optuna'])",
        "import optuna\nassert importlib.util.find_spec('optuna') is not None\n"
        "assert importlib.util.find_spec('lion_pytorch') is None and importlib.util.find_spec('psycopg2') is None",
        "done = subprocess.run([sys.executable, '-m', 'pip', 'install', 'psycopg2-binary'], capture_output=True, text=True, check=True)\n"
        "assert 'already satisfied' in done.stdout\nimport psycopg2",
        "try:\n    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', 'no-such-package-optbook'])\n"
        "except subprocess.CalledProcessError:\n    pass\nelse:\n    raise AssertionError('pip offline cannot install a missing package')",
        "assert subprocess.run(['true']).returncode == 0   # other commands are untouched",
    ]
    # first, the namespace as a chapter finds it: nothing of the launcher (sys, the blocker) leaks into it
    cells = ["print(sorted(k for k in dir() if not k.startswith('_')))"] + checks
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name=optbook_book.KERNEL, resources={"metadata": {"path": str(work)}}).execute()
    assert set(eval(nb.cells[0].outputs[0]["text"])) <= {"In", "Out", "exit", "get_ipython", "open", "quit"}
    record = json.loads((tmp_path / "jupyter" / "runs" / "nbs__probe.json").read_text(encoding="utf-8"))
    assert record["cwd"] == str(work) and all(record["dev_only_blocked"].values())
    assert record["not_on_colab_hidden"] == {m: True for m in optbook_book.NOT_ON_COLAB}
    assert record["looked_up_while_hidden"] == list(optbook_book.NOT_ON_COLAB)
    pip = {tuple(i["requirements"]): i for i in record["pip_installs"]}
    cell = lambda text: next(i for i, c in enumerate(nb.cells) if text in c.source)
    assert pip[("optuna",)]["unhidden"] == ["optuna"] and pip[("optuna",)]["returncode"] == 0
    assert pip[("optuna",)]["cell"] == nb.cells[cell("'-q', 'optuna'")].source and pip[("optuna",)]["ran"][-1] == "--no-index"
    assert pip[("psycopg2-binary",)]["unhidden"] == ["psycopg2"]
    assert pip[("no-such-package-optbook",)]["returncode"] != 0 and pip[("no-such-package-optbook",)]["unhidden"] == []
    assert not any(o.get("name") == "stderr" for c in nb.cells[:cell("'-q', 'optuna'") + 1] for o in c.outputs), \
        "pip wrote to stderr: the book would fail the chapter"


def test_colab_kernel_imports_optbook_from_the_wheel_site(tmp_path, monkeypatch):
    "With a wheel installed under BUILD/colab/site, the kernel imports that optbook, not the editable checkout."
    monkeypatch.setenv("JUPYTER_PATH", "")
    monkeypatch.setenv("OPTBOOK_DOCNAME", "nbs/probe_wheel")
    fake = tmp_path / "colab" / "site" / "optbook"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("FROM_WHEEL_SITE = True\n", encoding="utf-8")
    optbook_book.install_kernel(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import optbook\nassert optbook.FROM_WHEEL_SITE, optbook.__file__\nprint(optbook.__file__)")])
    NotebookClient(nb, timeout=120, kernel_name=optbook_book.KERNEL, resources={"metadata": {"path": str(work)}}).execute()
    assert nb.cells[0].outputs[0]["text"].strip() == str(fake / "__init__.py")
    record = json.loads((tmp_path / "jupyter" / "runs" / "nbs__probe_wheel.json").read_text(encoding="utf-8"))
    assert record["optbook_origin"] == str(fake / "__init__.py") and record["optbook_wheel_site"] == str(fake.parent)


def test_pip_install_requirements_reads_names_not_option_values():
    cmd = [sys.executable, "-m", "pip", "install", "-q", "-i", "http://mirror/simple", "Lion_PyTorch>=0.2",
           "optbook @ git+https://github.com/optbook/optbook@v0.1.0", "psycopg2-binary[extra]", "-r", "reqs.txt"]
    assert optbook_book.pip_install_requirements(cmd) == ["lion-pytorch", "optbook", "psycopg2-binary"]
    assert optbook_book.pip_install_requirements(["pip", "install", "optuna"]) is None      # not this interpreter's pip
    assert optbook_book.pip_install_requirements("pip install optuna") is None
    assert optbook_book.pip_install_requirements([sys.executable, "-m", "pip", "uninstall", "optuna"]) is None
