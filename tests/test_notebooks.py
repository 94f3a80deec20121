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
    fake_subprocess = types.SimpleNamespace(check_call=lambda cmd: calls.append(cmd))
    monkeypatch.setitem(sys.modules, "subprocess", fake_subprocess)
    exec(src, {})
    assert calls == [], "optbook is installed at the right version: the cell must not reinstall it"
    for installed in [None, "0.0.1"]:
        def version(name, installed=installed):
            if installed is None: raise importlib.metadata.PackageNotFoundError(name)
            return installed
        monkeypatch.setattr(importlib.metadata, "version", version)
        exec(src, {})
        assert calls and calls[-1][:4] == [sys.executable, "-m", "pip", "install"]
        assert calls[-1][-1] == f"optbook @ git+{REPO}@v{VERSION}"
        assert not any("torch" in part for part in calls[-1]), "never reinstall torch over Colab's"


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
