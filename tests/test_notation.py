"""The book's notation: math that renders outside the book, and the symbols of the 符号表 (nbs/notation.md)."""
import re

import nbformat
import pytest
import yaml

from conftest import ROOT

NBS = ROOT / "nbs"
SOURCES = sorted(NBS.glob("*.ipynb")) + sorted(NBS.glob("*.md"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def book_only_macros():
    "The MathJax macros that exist only in _config.yml (Jupyter and Colab don't know them)."
    cfg = (CONFIG.get("sphinx") or {}).get("config") or {}
    return sorted(((cfg.get("mathjax3_config") or {}).get("tex") or {}).get("macros") or {})


def cells(path):
    "(kind, source) of every cell of a notebook, or the whole text of a markdown file."
    if path.suffix == ".md": return [("markdown", path.read_text(encoding="utf-8"))]
    return [(c.cell_type, c.source) for c in nbformat.read(path, as_version=4).cells]


def macro_uses(text, names):
    "The uses of `\\name` in text, a name not followed by another letter (so `\\Rightarrow` is not `\\R`)."
    return [m.group(0) for n in names for m in re.finditer(rf"\\{re.escape(n)}(?![A-Za-z])", text)]


def test_the_config_still_defines_the_macros_we_guard():
    "If _config.yml drops its macros this test says so, instead of the guard below silently checking nothing."
    assert {"R", "E", "argmin"} <= set(book_only_macros())


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_book_only_macros(path):
    "Math in notebooks and pages uses standard LaTeX (\\mathbb{R}, \\operatorname*{arg\\,min}), never a _config.yml macro."
    names = book_only_macros()
    bad = [(i, use) for i, (_, src) in enumerate(cells(path)) for use in macro_uses(src, names)]
    assert not bad, f"{path.name}: cells use macros defined only in _config.yml (they break in Jupyter/Colab): {bad}"


def test_guard_catches_a_macro():
    names = ["R", "E", "argmin"]
    assert macro_uses(r"$\theta\in\R^d$, $\E[g]$, $\argmin_x$", names) == [r"\R", r"\E", r"\argmin"]
    assert macro_uses(r"$\Rightarrow \Re \mathbb{R} \operatorname*{arg\,min} \Epsilon$", names) == []


# Symbols of the 符号表 that must not come back in the chapters that follow it.
MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+?\$", re.S)
FORBIDDEN = {
    r"\\lambda_(?:i|1|d|\{\\max\}|\{\\min\})": "λ is the weight decay only; eigenvalues are h_i, the largest curvature is L",
    r"L_\{\\max\}": "the largest curvature is L (the loss is \\mathcal{L})",
    r"\\nabla\^?2? ?L(?![A-Za-z])|(?<![A-Za-z\\{])L\(\\theta": "the loss is \\mathcal{L}; L is the largest curvature",
    r"\\hat g": "ĝ meant two things; the minibatch gradient is \\tilde g, the decayed gradient \\bar g",
}
CHAPTERS = sorted(p for p in NBS.glob("[0-8][0-9]_*.ipynb"))   # every chapter of the main part


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapters_follow_the_notation_table(path):
    bad = []
    for i, (kind, src) in enumerate(cells(path)):
        if kind != "markdown": continue
        for math in MATH.findall(src):
            for pattern, why in FORBIDDEN.items():
                if re.search(pattern, math): bad.append((i, math[:60], why))
    assert not bad, f"{path.name}: {bad}"


def test_forbidden_patterns_bite():
    samples = {r"$\lambda_{\max}$": True, r"$2/L_{\max}$": True, r"$\nabla L(\theta)$": True, r"$L(\theta)$": True,
               r"$\hat g_t$": True, r"$\mathcal{L}(\theta)$": False, r"$2/L$": False, r"$\lambda\theta$": False,
               r"$\hat\theta_t$": False, r"$\nabla\mathcal{L}$": False}
    for text, expected in samples.items():
        hit = any(re.search(p, m) for m in MATH.findall(text) for p in FORBIDDEN)
        assert hit == expected, text


def test_notation_page_is_in_the_appendix():
    text = (NBS / "notation.md").read_text(encoding="utf-8")
    assert re.search(r"^# 符号表\s*$", text, re.M)
    appendix = [p for p in yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))["parts"] if p["caption"] == "附录"]
    files = [c["file"] for c in appendix[0]["chapters"]]
    assert "nbs/notation" in files and files.index("nbs/notation") < files.index("nbs/glossary")
    for symbol in [r"\mathcal{L}", r"\tilde g", r"\bar g", r"\tau", "`dampening`", "`weight_decay`", "`momentum_buffer`", r"\kappa", "h_i"]:
        assert symbol in text, f"符号表 lacks {symbol}"
