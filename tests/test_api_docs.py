"""The API documentation: the renderer `optbook.doc` (unit tests) and, in the built book, the API page and the chapters'
`show_doc` entries (`book` marker: they read _build/html after `make book`)."""
import importlib, inspect, pathlib, re, sys

import pytest

import optbook
import optbook.compare, optbook.landscapes
from optbook import doc

ROOT = pathlib.Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SUBMODULES = ("gradfree", "search", "attack", "viz", "digits", "core", "compare")


def public_names():
    "Every documented name: {shown name: (object, module)} for optbook.__all__ and each submodule's __all__."
    out = {f"optbook.{n}": (getattr(optbook, n), None) for n in optbook.__all__}
    for mod in doc.api_modules():
        for n in mod.__all__:
            obj = getattr(mod, n)
            if not (n in optbook.__all__ and getattr(optbook, n) is obj):
                out[f"{mod.__name__}.{n}"] = (obj, mod.__name__)
    return out


# ------------------------------------------------------------------ the renderer (no book needed)

def test_param_comments_are_the_docments_comments():
    notes = doc.param_comments(optbook.Adam.__init__)
    assert notes["lr"] == "η: learning rate"
    assert notes["decoupled_weight_decay"].startswith("AdamW")     # the last one, after `):`
    assert "params" in notes and "self" not in notes
    from optbook.compare import Trace
    assert doc.field_comments(Trace)["final"].startswith("𝓛 at the final parameters")


def test_signature_and_table_show_inspects_defaults():
    for obj in (optbook.Adam, optbook.SGD, optbook.Muon, optbook.LBFGS, optbook.compare.sweep):
        table = doc.param_table(obj)
        sig = doc.signature_text(obj, obj.__name__, width=10**6)
        for p in inspect.signature(obj).parameters.values():
            if p.default is not p.empty:
                assert f"{p.name}={p.default!r}" in sig, (obj, p.name)
                assert f"| `{p.name}` | `{p.default!r}` |" in table, (obj, p.name)


def test_doc_markdown_is_myst_with_math_and_state_table():
    text = doc.show_doc(optbook.Adam)._repr_markdown_()
    assert text.startswith("::::::{container} optbook-api") and text.rstrip().endswith("::::::")
    assert "```{rubric} optbook.Adam\n" in text and "class Adam(" in text
    assert "\\begin{align*}" in text and "| `exp_avg` | $m$ |" in text
    assert "0x" not in doc.doc_markdown(optbook.landscapes.LANDSCAPES, "optbook.landscapes.LANDSCAPES")


def test_api_page_lists_every_public_name_once():
    page = doc.api_page().text
    names = public_names()
    for name in names:
        assert page.count(f"```{{rubric}} {name}\n") == 1, name
    assert {m.__name__.split(".")[1] for m in doc.api_modules()} >= set(SUBMODULES)


def test_labels_are_unique():
    sys.path.insert(0, str(ROOT / "_ext"))
    try:
        import optbook_api
    finally:
        sys.path.pop(0)
    modules, top = optbook_api.api_index(ROOT)
    labels = [optbook_api.label_of(m, n, ns) for m, (_, ns) in modules.items() for n in dict.fromkeys(ns)]
    assert len(labels) == len(set(labels))
    links = optbook_api.name_map(modules, top)
    assert links["Adam"] == links["optbook.Adam"] == "api-optbook.adam.adam"
    assert links["compare.sweep"] == "api-optbook.compare.sweep" and "compare" not in links   # a bare common word
    assert links["compare.Sweep"] == "api-optbook.compare.sweep-class"                        # differs only in case


# ------------------------------------------------------------------ the built book

def _soup(path):
    bs4 = pytest.importorskip("bs4")
    return bs4.BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def _entries(soup):
    "{shown name: the entry's <div>} of a page"
    return {div.select_one("p.optbook-api-name").get_text().strip(): div
            for div in soup.select("div.optbook-api") if div.select_one("p.optbook-api-name")}


def _raw_tex(div):
    "TeX left as text in an entry (outside math, code and pre): `$...$`, `\\(`, `\\[`, `\\begin{`."
    import copy
    d = copy.copy(div)
    for el in d.select(".math, pre, code, mjx-container, script"): el.decompose()
    text = d.get_text()
    return re.findall(r"\$[^$\n]*\$|\\\(|\\\[|\\begin\{", text)


@pytest.mark.book
def test_api_page_has_every_entry_with_signature_defaults_and_chapter_link():
    page = HTML / "nbs" / "95_api.html"
    assert page.exists(), "run `make book` first"
    soup = _soup(page)
    assert soup.find("script", src=re.compile(r"mathjax/tex-chtml\.js")), "MathJax is not loaded"
    entries = _entries(soup)
    problems = []
    for name, (obj, _) in public_names().items():
        div = entries.get(name)
        if div is None: problems.append(f"{name}: no entry"); continue
        pre = div.select_one("pre")
        short = name.rsplit(".", 1)[1]
        if pre is None or short not in pre.get_text(): problems.append(f"{name}: no signature"); continue
        try: params = inspect.signature(obj).parameters.values() if callable(obj) else []
        except (TypeError, ValueError): params = []
        sig = pre.get_text()
        rows = {tr.select("td")[0].get_text().strip(): tr.select("td")[1].get_text().strip()
                for tr in div.select("table tbody tr") if len(tr.select("td")) >= 2}
        for p in params:
            if p.default is p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD): continue
            shown = doc._fmt_default(p.default)
            if f"{p.name}={shown}" not in re.sub(r"\s+", " ", sig).replace("( ", "("):
                if f"{p.name}={shown}" not in sig: problems.append(f"{name}: signature lacks {p.name}={shown}")
            if rows.get(p.name) != shown: problems.append(f"{name}: table shows {rows.get(p.name)!r} for {p.name}, not {shown!r}")
        link = div.find("a", href=re.compile(r"^[^#]*#api-"))   # another page, or this one (optbook.doc)
        if link is None: problems.append(f"{name}: no link to its chapter (is the chapter in _toc.yml?)")
        raw = _raw_tex(div)
        if raw: problems.append(f"{name}: raw TeX {raw[:3]}")
    assert not problems, "\n".join(problems[:40])


@pytest.mark.book
def test_chapter_entries_render_math_and_are_anchored():
    pages = sorted((HTML / "nbs").glob("*.html"))
    assert pages, "run `make book` first"
    problems, anchored = [], 0
    for page in pages:
        html = page.read_text(encoding="utf-8")
        if "optbook-api" not in html and 'id="api-' not in html: continue
        soup = _soup(page)
        for name, div in _entries(soup).items():
            raw = _raw_tex(div)
            if raw: problems.append(f"{page.name} {name}: raw TeX {raw[:3]}")
            if not div.select_one("pre"): problems.append(f"{page.name} {name}: no signature")
        anchored += len(soup.select('[id^="api-optbook-"]'))
    assert not problems, "\n".join(problems[:40])
    assert anchored >= len(public_names())   # every public name has an anchor in its chapter
