"""optbook.viz as a user's process meets it: importing it changes nothing on the system, and its plotly
part is optional.

Each check runs in a fresh interpreter, because what matters happens at import time.
"""
import json, os, pathlib, subprocess, sys, textwrap

import pytest

from conftest import ROOT

# Pretend to be Colab: Linux, root, no CJK font that matplotlib can find, and an `apt-get` on PATH.
# The fake apt-get records its arguments and fails, so nothing is ever installed.
FRESH_COLAB = """
import json, os, sys, warnings
os.geteuid = lambda: 0
from matplotlib import font_manager
font_manager.fontManager.ttflist = [f for f in font_manager.fontManager.ttflist if f.name.startswith("DejaVu")]
font_manager.findSystemFonts = lambda *a, **k: []
"""


def python(code, tmp_path, **env):
    "Run `code` in a fresh interpreter with a recording fake `apt-get` first on PATH; return (result, apt-get calls)."
    bin_dir, log = tmp_path / "bin", tmp_path / "apt-get.log"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "apt-get"
    fake.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexit 1\n')
    fake.chmod(0o755)
    full_env = {k: v for k, v in os.environ.items() if k != "OPTBOOK_PLOTLYJS"}  # set only where a test asks
    full_env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(ROOT), MPLBACKEND="Agg", **env)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env=full_env, cwd=tmp_path, timeout=300)
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="setup_cjk_font installs with apt-get on Linux only")


def test_import_installs_nothing_and_stays_quiet(tmp_path):
    result, calls = python(FRESH_COLAB + """
import optbook.viz as viz
print(repr(viz.CJK_FONT))
print("plotly" in sys.modules)
""", tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls == [], f"importing optbook.viz ran apt-get: {calls}"
    assert result.stderr == "", f"importing optbook.viz wrote to stderr: {result.stderr!r}"
    font, plotly_loaded = result.stdout.split()
    assert font == "None", "no CJK font was findable, so none can be registered"
    assert plotly_loaded == "False", "importing optbook.viz must not import plotly"


def test_explicit_setup_installs_the_font(tmp_path):
    "The chapters' explicit call keeps its Colab behaviour: apt-get install fonts-noto-cjk, then one warning when that fails."
    result, calls = python(FRESH_COLAB + """
import optbook.viz as viz
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    family = viz.setup_cjk_font()
print(json.dumps([family, [str(w.message) for w in caught]]))
""", tmp_path)
    assert result.returncode == 0, result.stderr
    assert any(c.startswith("install") and "fonts-noto-cjk" in c for c in calls), calls
    family, messages = json.loads(result.stdout.splitlines()[-1])
    assert family is None and len(messages) == 1 and "no CJK font found" in messages[0]


def test_import_registers_an_installed_font(tmp_path):
    "Where a CJK font is installed (the book's machines), importing still finds it, without apt-get."
    from matplotlib import font_manager
    if not any("CJK" in f.name for f in font_manager.fontManager.ttflist):
        pytest.skip("no CJK font installed here")
    result, calls = python("import optbook.viz as viz; print(viz.CJK_FONT)", tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert calls == [] and result.stdout.strip() != "None"


def test_explore_without_plotly_says_how_to_install(tmp_path):
    result, _ = python("""
import sys, importlib.abc
class NoPlotly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "plotly": raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoPlotly())
import torch
from optbook import viz
from optbook.landscapes import quadratic
try:
    viz.explore(quadratic(), lambda η: torch.zeros(3, 2), {"η": [0.1]})
except ImportError as e:
    print("ImportError:", e)
""", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ImportError:" in result.stdout and "pip install plotly" in result.stdout, result.stdout


def test_book_html_needs_no_cdn_and_no_requirejs(tmp_path):
    "With the book build's environment, the figure's output is HTML that relies on the page's plotly.js."
    pytest.importorskip("plotly")
    result, _ = python("""
import json, torch
from IPython.core.interactiveshell import InteractiveShell
from IPython.display import display
from IPython.utils.capture import capture_output
from optbook import viz
from optbook.landscapes import quadratic, trajectory
q = quadratic(10.0)
fig = viz.explore(q, lambda η, β: trajectory(q, lambda ps: torch.optim.SGD(ps, lr=η, momentum=β), 20),
                  {"η": [0.05, 0.1], "β": [0.0, 0.5, 0.9]})
InteractiveShell.instance()
with capture_output() as cap: display(fig)          # what a kernel sends for a figure shown in a cell
print(json.dumps([sorted(o.data) for o in cap.outputs]))
print(json.dumps(fig._repr_mimebundle_()["text/html"]))
""", tmp_path, OPTBOOK_PLOTLYJS="page")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    kinds, html = [json.loads(line) for line in result.stdout.splitlines()[-2:]]
    assert kinds == [["text/html", "text/plain"]], kinds
    assert "Plotly.newPlot" in html and "plotly-graph-div" in html
    for bad in ["cdn.plot.ly", "cdn.jsdelivr", "<script src", "require(", "requirejs", "MathJax"]:
        assert bad not in html, f"{bad!r} in the book's HTML output"


def test_sphinx_extension_serves_plotlyjs(tmp_path):
    "The extension writes plotly.js once into _static and adds it only to pages with a figure."
    pytest.importorskip("plotly")
    import types
    sys.path.insert(0, str(ROOT / "_ext"))
    try:
        import optbook_plotly
    finally:
        sys.path.remove(str(ROOT / "_ext"))
    added, connected = [], {}
    app = types.SimpleNamespace(builder=types.SimpleNamespace(format="html"), outdir=str(tmp_path),
                                add_js_file=lambda name, **kw: added.append((name, kw)),
                                connect=lambda event, fn: connected.setdefault(event, fn))
    saved = os.environ.get("OPTBOOK_PLOTLYJS")
    try:
        optbook_plotly.setup(app)
        assert os.environ["OPTBOOK_PLOTLYJS"] == "page"
    finally:
        if saved is None: os.environ.pop("OPTBOOK_PLOTLYJS", None)
        else: os.environ["OPTBOOK_PLOTLYJS"] = saved
    connected["builder-inited"](app)
    js = tmp_path / "_static" / "plotly.min.js"
    from plotly.offline import get_plotlyjs
    assert js.read_text(encoding="utf-8") == get_plotlyjs()
    mtime = js.stat().st_mtime_ns
    connected["builder-inited"](app)
    assert js.stat().st_mtime_ns == mtime, "plotly.js is rewritten only when it changed"
    connected["html-page-context"](app, "nbs/02_sgd", "page.html", {"body": "<p>no figure</p>"}, None)
    assert added == []
    connected["html-page-context"](app, "nbs/91_viz", "page.html", {"body": '<div class="plotly-graph-div"></div>'}, None)
    assert ("plotly.min.js", {"priority": 100}) in added


def test_animation_uses_the_books_font_awesome_in_the_build(monkeypatch):
    "matplotlib's player links Font Awesome 4 from a CDN; on the book page (offline) the theme's own Font Awesome serves it."
    import torch
    from optbook import landscapes, viz
    q = landscapes.quadratic(kappa=5.0)
    path = landscapes.trajectory(q, lambda ps: torch.optim.SGD(ps, lr=0.1), 5)
    monkeypatch.delenv("OPTBOOK_PLOTLYJS", raising=False)
    assert "font-awesome" in viz.animate(q, {"GD": path}, frames=3).data       # Jupyter, Colab: as matplotlib makes it
    monkeypatch.setenv("OPTBOOK_PLOTLYJS", "page")
    html = viz.animate(q, {"GD": path}, frames=3).data
    assert "font-awesome" not in html and "fa-play" in html                      # the book: no CDN link, same buttons
