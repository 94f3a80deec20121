"""Run every chapter as a learner would in Colab or Kaggle: a fresh kernel, another working directory,
and none of the development-only packages (nbdev, fastcore, execnb, myst_nb) importable.

The book build runs the notebooks with the full development environment; this catches a chapter that
quietly depends on it.
"""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

DEV_ONLY = ["nbdev", "fastcore", "execnb", "myst_nb"]
BLOCKER = f"""
import sys, importlib.abc
class _DevOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {DEV_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (development-only; absent on Colab)")
sys.meta_path.insert(0, _DevOnly())
"""
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_without_dev_packages(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(BLOCKER))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    stderr = [o.get("text", "")[:200] for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not stderr, f"{path.name} wrote to stderr: {stderr}"
