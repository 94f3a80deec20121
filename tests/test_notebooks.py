"""The notebooks as files: the install cell, the version, clean sources, and the page reader."""
import importlib.metadata, re, sys, types

import nbformat
import pytest

import optbook
from conftest import ROOT, settings

sys.path.insert(0, str(ROOT / "_ext"))
import optbook_book  # noqa: E402

NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))
VERSION = settings()["version"]
REPO = settings()["git_url"]


def code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_versions_agree():
    assert optbook.__version__ == VERSION
    assert importlib.metadata.version("optbook") == VERSION


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_installs_this_version(path):
    first = code_cells(path)[0].source
    assert not re.search(r"^\s*(import|from)\s+(torch|optbook|matplotlib|sympy|numpy)\b", first, re.M), \
        "the install cell must come before any other import"
    assert f'importlib.metadata.version("optbook") == "{VERSION}"' in first
    assert f"optbook @ git+{REPO}@v{VERSION}" in first, "the install cell must install the version the book is built from"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_runs_pip_only_when_needed(path, monkeypatch):
    "Execute the install cell with pip stubbed: it installs when optbook is missing or another version, else nothing."
    src = code_cells(path)[0].source
    calls = []
    class Done:
        def __init__(self, code): self.returncode = code
    answers = []   # the return codes pip gives, in order (the repository first, then the book's site)
    def run(cmd, **kw):
        calls.append(cmd)
        return Done(answers.pop(0) if answers else 0)
    fake_subprocess = types.SimpleNamespace(check_call=lambda cmd: calls.append(cmd), run=run)
    monkeypatch.setitem(sys.modules, "subprocess", fake_subprocess)
    exec(src, {})
    assert calls == [], "optbook is installed at the right version: the cell must not reinstall it"
    for installed in [None, "0.0.1"]:
        def version(name, installed=installed):
            if installed is None: raise importlib.metadata.PackageNotFoundError(name)
            return installed
        monkeypatch.setattr(importlib.metadata, "version", version)
        calls.clear(); exec(src, {})
        assert calls and calls[-1][:4] == [sys.executable, "-m", "pip", "install"]
        assert calls[-1][-1] == f"optbook @ git+{REPO}@v{VERSION}", "the repository first"
        calls.clear(); answers[:] = [1, 0]; exec(src, {})   # the repository unreachable: the wheel on the book's site
        assert [c[-1] for c in calls[-2:]] == [f"optbook @ git+{REPO}@v{VERSION}",
                                                f"optbook @ {settings()['doc_host']}{settings()['doc_baseurl']}/_static/optbook-{VERSION}-py3-none-any.whl"]
        calls.clear(); answers[:] = [1, 1]
        with pytest.raises(SystemExit, match="没能安装"): exec(src, {})
        assert not any("torch" in part for cmd in calls for part in cmd), "never reinstall torch over Colab's"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    dirty = [i for i, c in enumerate(code_cells(path)) if c.outputs or c.execution_count]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; the book executes the notebooks itself"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_reader_strips_every_directive(path):
    nb = optbook_book.clean_notebook(nbformat.read(path, as_version=4))
    for c in nb.cells:
        if c.cell_type == "code":
            assert not re.search(r"^\s*#\s*\|", c.source, re.M), c.source[:80]
            if not c.source.strip(): assert "remove-cell" in c.metadata.get("tags", [])


def test_reader_maps_directives_to_tags():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("#| hide\nx = 1"),
        nbformat.v4.new_code_cell("#| export\ndef f(): pass"),
        nbformat.v4.new_code_cell("#|echo: false\nplot()"),
        nbformat.v4.new_code_cell("#| default_exp core"),
        nbformat.v4.new_code_cell("y = 2  # not a directive: #| inside a line"),
    ])
    cells = optbook_book.clean_notebook(nb).cells
    assert cells[0].metadata["tags"] == ["remove-cell"] and cells[0].source == "x = 1"
    assert cells[1].source == "def f(): pass" and "remove-cell" not in cells[1].metadata.get("tags", [])
    assert cells[2].metadata["tags"] == ["remove-input"] and cells[2].source == "plot()"
    assert cells[3].metadata["tags"] == ["remove-cell"]
    assert cells[4].source.startswith("y = 2")


def test_every_notebook_is_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    missing = [p.stem for p in NOTEBOOKS if f"nbs/{p.stem}" not in toc]
    assert not missing, f"notebooks missing from _toc.yml: {missing}"


def test_chinese_soft_breaks_are_joined_but_not_code_math_or_headings():
    text = "\n".join([
        "## 标题", "紧跟标题的段落，", "第二行。", "",
        ":::{prf:theorem} 定理", "内容第一行，", "第二行。", ":::",
        "- 列表项，", "  续行。",
        "$$", "a，", "b", "$$",
        "```python", "x = 1  # 注释，", "y = 2", "```",
        "汉字结尾", "English start"])
    got = optbook_book.join_cjk_lines(text).split("\n")
    assert got[:3] == ["## 标题", "紧跟标题的段落，第二行。", ""]
    assert got[3:6] == [":::{prf:theorem} 定理", "内容第一行，第二行。", ":::"]
    assert got[6] == "- 列表项，续行。"
    assert got[7:11] == ["$$", "a，", "b", "$$"]
    assert got[11:15] == ["```python", "x = 1  # 注释，", "y = 2", "```"]
    assert got[15:] == ["汉字结尾", "English start"]
    assert optbook_book.join_cjk_lines("改进——\n**动量法**与\n*强调*") == "改进——**动量法**与*强调*"
    assert optbook_book.join_cjk_lines("汉字\n* 列表项") == "汉字\n* 列表项"


def nb_of(*sources):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])


def test_reader_accepts_the_nbdev_vocabulary_the_book_supports():
    nb = nb_of("#|export core\ndef f(): pass", "#| exporti\ndef _g(): pass", "#| exports\nh = 1",
               "#|eval:true\nfast()", "#| include: false\nsetup()", "#| code-fold: true\nhelper()",
               "#| echo:false\n#| output: true\nfig()", "\n#| hide\n\n%%time\nx = 1", "#| default_exp sgd")
    cells = optbook_book.clean_notebook(nb, "t.ipynb").cells
    tags = [c.metadata.get("tags", []) for c in cells]
    assert tags == [[], [], [], [], ["remove-cell"], ["hide-input"], ["remove-input"],
                    ["remove-cell"], ["remove-cell"]]
    assert cells[7].source == "%%time\nx = 1", "a cell magic in the directive region stays in the code"
    assert not any(re.search(r"^\s*#\s*\|", c.source, re.M) for c in cells)


def test_eval_false_is_refused_because_colab_runs_every_cell():
    """Colab's "Run all" ignores `#| eval: false`; the book, which is the Colab check, refuses it and says what to do."""
    with pytest.raises(ValueError) as e:
        optbook_book.clean_notebook(nb_of("#| eval: false\nconnect()"), "nbs/99_demo.ipynb")
    assert "Run all" in str(e.value) and "safe to run" in str(e.value) and "code cell 0" in str(e.value)


@pytest.mark.parametrize("path", sorted((ROOT / "nbs").glob("*.ipynb")), ids=lambda p: p.name)
def test_no_cell_is_kept_from_running(path):
    "No notebook skips a cell: neither the directive nor a `skip-execution` tag set by hand (Colab would run it)."
    nb = nbformat.read(path, as_version=4)
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code": continue
        assert "skip-execution" not in c.metadata.get("tags", []), f"{path.name}, cell {i}: tagged skip-execution"
        assert not re.search(r"^\s*#\s*\|\s*eval\s*:\s*false", c.source, re.M | re.I), f"{path.name}, cell {i}: `#| eval: false`"


@pytest.mark.parametrize("source, says", [
    ("#| foo bar\nx = 1", "`#| foo bar`"),
    ("#| slow\nx = 1", "smaller"),
    ("#| eval: false\nx = 1", "Run all"),
    ("#| notest\nx = 1", "executes every cell"),
    ("#| hide_input\nx = 1", "`#| echo: false`"),
    ("#| echo: fenced\nx = 1", "`#| echo: fenced`"),
    ("#| filter_stream foo\nx = 1", "filter_stream"),
    ("x = 1\n#| hide", "after the code has begun"),
])
def test_unsupported_directive_is_an_error_naming_notebook_cell_and_line(source, says):
    nb = nb_of("#| hide\nimport os", source)
    with pytest.raises(ValueError) as e:
        optbook_book.clean_notebook(nb, "nbs/99_demo.ipynb")
    assert "nbs/99_demo.ipynb, code cell 1" in str(e.value) and says in str(e.value)
    warned = []
    optbook_book.clean_notebook(nb_of(source), "nbs/99_demo.ipynb", warn=warned.append)
    assert len(warned) == 1 and "#|" not in optbook_book.clean_notebook(
        nb_of(source), "x", warn=lambda m: None).cells[0].source, "the line is still kept off the page"


def test_unsupported_directive_fails_a_sphinx_build_with_w(tmp_path, capsys):
    "Through Sphinx, an unsupported directive is a warning with the notebook's path, which -W makes fatal."
    from sphinx.cmd.build import build_main
    src = tmp_path / "src"
    (src / "nbs").mkdir(parents=True)
    (src / "conf.py").write_text(
        f"import sys; sys.path.insert(0, {str(ROOT / '_ext')!r})\n"
        "extensions = ['myst_nb', 'optbook_book']\n"
        "nb_custom_formats = {'.ipynb': ['optbook_book.read_nbdev', {}, False]}\n"
        "nb_execution_mode = 'off'\n", encoding="utf-8")
    (src / "index.md").write_text("# Demo\n\n```{toctree}\nnbs/demo\n```\n", encoding="utf-8")
    nb = nb_of("#| export\ndef f(): pass", "#| frobnicate\nf()")
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("# Demo notebook"))
    nbformat.write(nb, src / "nbs" / "demo.ipynb")
    assert build_main(["-W", "-q", "-b", "html", str(src), str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "nbs/demo.ipynb" in err and "code cell 2" in err and "`#| frobnicate`" in err, err


NOTEBOOK_ONLY_IN_BOOK = optbook_book.BOOK_ONLY


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_book_only_imports_have_a_fallback(path):
    "myst_nb is importable in the book's kernel (for glue) but not on Colab: import it only under except ImportError."
    import ast
    for i, c in enumerate(code_cells(path)):
        src = "\n".join(ln for ln in c.source.splitlines() if not ln.lstrip().startswith(("%", "!")))
        tree = ast.parse(src)
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                    h.type is None or any(n in ast.dump(h.type) for n in ["ImportError", "ModuleNotFoundError"])
                    for h in node.handlers):
                guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.split(".")[0] in NOTEBOOK_ONLY_IN_BOOK:
                    assert id(node) in guarded, f"{path.name}, code cell {i}: `import {name}` needs a fallback on ImportError"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_packages_colab_lacks_are_installed_by_the_first_cell(path, monkeypatch):
    "A notebook that imports a package Colab does not preinstall (optbook_book.NOT_ON_COLAB) installs it in its first cell, only when missing, never touching torch."
    import ast, importlib.util
    cells = code_cells(path)
    used = set()
    for c in cells[1:]:
        tree = ast.parse("\n".join(ln for ln in c.source.splitlines() if not ln.lstrip().startswith(("%", "!"))))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            used |= {n.split(".")[0] for n in names} & set(optbook_book.NOT_ON_COLAB)
    calls = []
    monkeypatch.setitem(sys.modules, "subprocess", types.SimpleNamespace(check_call=lambda cmd: calls.append(cmd)))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in optbook_book.NOT_ON_COLAB else real_find_spec(name, *a))
    exec(cells[0].source, {})                     # as on Colab: none of NOT_ON_COLAB is there
    installed = {optbook_book.pip_install_requirements(cmd)[0] for cmd in calls}
    for mod in used:
        dists = {d.lower() for d in optbook_book.NOT_ON_COLAB[mod]}
        assert installed & dists, f"{path.name} imports {mod} but its first cell does not install it"
    assert "torch" not in {n for cmd in calls for n in optbook_book.pip_install_requirements(cmd)}, \
        "never reinstall torch over Colab's"   # (a name, not a substring: lion-pytorch is fine)
    assert len(installed) == len(calls) and not installed - {"plotly"} - {d for m in used for d in optbook_book.NOT_ON_COLAB[m]}, \
        f"{path.name}'s first cell installs {installed}, more than the notebook imports"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_control_characters(path):
    "A Python string written without r'' turns \\beta into a backspace and 'eta': MathJax then fails on the page."
    bad = [(i, repr(c.source[max(0, m.start() - 15):m.start() + 15]))
           for i, c in enumerate(nbformat.read(path, as_version=4).cells)
           for m in re.finditer(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", c.source)]
    assert not bad, f"{path.name}: control characters in cells {bad}"
