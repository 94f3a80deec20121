"""The PDF edition: `make pdf` (see the Makefile) builds the whole book as one PDF with Jupyter Book's LaTeX builder,
xelatex and ctex, from the notebooks that the last `make book` executed, without executing anything again.

`python _ext/optbook_pdf.py prepare` writes `_build/pdfsrc`: a copy of the book's source whose `nbs/*.ipynb` are the
executed notebooks of `_build/jupyter_execute` (outputs, figures and glue values included) and whose `_config.yml` is
the book's with execution off and the LaTeX settings below. Interactive plotly figures (HTML only; LaTeX cannot show
them) get a static rendition: small multiples of the slider's settings (`small_multiples`).
"""
import json, pathlib, re, shutil, sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
SRC = BUILD / "pdfsrc"
TARGET = "optbook"   # _build/pdfsrc/_build/latex/optbook.pdf, copied to _build/pdf/optbook.pdf

PREAMBLE = r"""
\usepackage[UTF8, scheme=chinese, heading=true, fontset=none]{ctex}
\setCJKmainfont{Noto Serif CJK SC}[BoldFont={Noto Sans CJK SC Bold}]
\setCJKsansfont{Noto Sans CJK SC}
\setCJKmonofont{Noto Sans Mono CJK SC}
\setmonofont{DejaVu Sans Mono}[Scale=MatchLowercase]
\usepackage{newunicodechar}
\newfontfamily\optbookfallback{Latin Modern Math}
%(fallbacks)s
\usepackage{amsmath,amssymb}
\providecommand{\argmin}{\operatorname*{arg\,min}}
\providecommand{\argmax}{\operatorname*{arg\,max}}
\providecommand{\E}{\mathbb{E}}
\providecommand{\R}{\mathbb{R}}
\providecommand{\diag}{\operatorname{diag}}
\providecommand{\sign}{\operatorname{sign}}
% sphinx-jupyterbook-latex retitles the contents through babel, which this build does not load (ctex does the job)
\providecommand{\addto}[2]{}
\AtBeginDocument{\renewcommand{\contentsname}{目录}}
% the running head in Chinese (Sphinx's is `Chapter 1. Title`)
\makeatletter\AtBeginDocument{\renewcommand{\chaptermark}[1]{\markboth{\CTEXthechapter\quad #1}{}}}\makeatother
"""

# Characters the text and code fonts lack (the log's "Missing character" lines): typeset from Latin Modern Math.
# Script and bold-script capitals (𝓛, 𝒯, ...), ℓ, ⪯ ⪰ (Loewner order).
FALLBACK = "ℓ⪯⪰" + "".join(chr(c) for c in range(0x1D49C, 0x1D504))
PREAMBLE = PREAMBLE.replace("%(fallbacks)s", "\n".join(
    '\\newunicodechar{%s}{{\\optbookfallback\\upshape\\symbol{"%X}}}' % (ch, ord(ch)) for ch in FALLBACK))

PLOTLY_NOTE = "（此处是一幅交互图：拖动滑块可看不同超参数下的轨迹。PDF 版无法交互，请在网页版的本章查看。）"


def latex_config(cfg: dict) -> dict:
    "The book's _config.yml for the PDF: execution off, xelatex + ctex, one document with the book's title."
    cfg = dict(cfg)
    cfg["execute"] = {**cfg.get("execute", {}), "execute_notebooks": "off"}
    cfg["latex"] = {"latex_engine": "xelatex", "use_jupyterbook_latex": True,
                    "latex_documents": {"targetname": TARGET + ".tex"}}
    sphinx = dict(cfg.get("sphinx", {}))
    sphinx["local_extensions"] = {**(sphinx.get("local_extensions") or {}), "optbook_pdf": "_ext"}
    conf = dict(sphinx.get("config", {}))
    conf["latex_elements"] = {"papersize": "a4paper", "pointsize": "11pt", "babel": "", "polyglossia": "",
                              "fontenc": r"\usepackage{fontspec}", "fncychap": "", "preamble": PREAMBLE, "figure_align": "H",
                              "sphinxsetup": "verbatimwithframe=false, VerbatimColor={rgb}{0.96,0.96,0.96}",
                              # no general index: makeindex splits the UTF-8 bytes of Chinese terms (the glossary is a chapter)
                              "printindex": ""}
    conf["latex_domain_indices"] = False
    conf["latex_show_urls"] = "no"
    conf["latex_use_xindy"] = False
    sphinx["config"] = conf
    cfg["sphinx"] = sphinx
    return cfg


def _plotly_figure(html: str):
    "The (data, layout) of the first `Plotly.newPlot(id, data, layout, ...)` call in a plotly HTML output."
    dec, i = json.JSONDecoder(), html.index("Plotly.newPlot(") + len("Plotly.newPlot(")
    args = []
    for _ in range(3):
        while html[i] in " \n\t\r,": i += 1
        value, i = dec.raw_decode(html, i)
        args.append(value)
    return args[1], args[2]


def _array(v):
    "A plotly array: a list, or plotly 6's typed array {'dtype', 'bdata' (base64), 'shape'}."
    import base64
    import numpy as np
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        if shape: a = a.reshape([int(x) for x in str(shape).split(",")])
        return a
    return np.asarray(v, dtype=float)


def small_multiples(html: str, panels: int = 6) -> bytes:
    """A static PNG of an `optbook.viz.explore` figure: the trajectory on the contours for up to `panels` of the
    slider settings (spread over all of them), and their suboptimality gaps together in a last panel."""
    import io
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optbook.viz import setup_cjk_font
    setup_cjk_font()
    data, layout = _plotly_figure(html)
    contour = next(t for t in data if t.get("type") == "contour")
    marks = [t for t in data if t.get("type") == "scatter" and t.get("mode") == "markers"]
    paths = [t for t in data if t.get("type") == "scatter" and t.get("mode") == "lines+markers"]
    gaps = {t.get("name"): t for t in data if t.get("type") == "scatter" and t.get("xaxis") == "x2"}
    pick = sorted(set(np.linspace(0, len(paths) - 1, min(panels, len(paths))).round().astype(int)))
    cols = 4 if len(pick) + 1 > 3 else len(pick) + 1
    rows = -(-(len(pick) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    X, Y, Z = _array(contour["x"]), _array(contour["y"]), _array(contour["z"])
    xr, yr = layout.get("xaxis", {}).get("range"), layout.get("yaxis", {}).get("range")
    for ax, k in zip(axes.flat, pick):
        t = paths[k]
        ax.contour(X, Y, Z, levels=25, cmap="viridis", linewidths=0.6)
        for m in marks:
            ax.plot(_array(m["x"]), _array(m["y"]), "*" if "极小" in (m.get("name") or "") else "o",
                    color="gold" if "极小" in (m.get("name") or "") else "black", ms=8)
        P = np.stack([_array(t["x"]), _array(t["y"])], 1) if len(t.get("x") or []) else np.zeros((0, 2))
        ax.plot(P[:, 0], P[:, 1], ".-", color="C3", lw=1.2, ms=3)
        if xr: ax.set_xlim(xr)
        if yr: ax.set_ylim(yr)
        ax.set_title(t.get("name", ""), fontsize=9)
        ax.set_xticks([]); ax.set_yticks([])
    ax = axes.flat[len(pick)]
    for k in pick:
        g = gaps.get(paths[k].get("name"))
        if g is not None and len(g.get("y") or []):
            y = _array(g["y"])
            ax.semilogy(np.arange(len(y)), np.where(y > 0, y, np.nan), lw=1.2, label=paths[k].get("name"))
    ax.set_title("次优间隙 f(θₜ) − f*", fontsize=9); ax.set_xlabel("迭代步数 t", fontsize=8)
    ax.legend(fontsize=6)
    for extra in list(axes.flat)[len(pick) + 1:]: extra.axis("off")
    title = (layout.get("title") or {}).get("text") or ""
    fig.suptitle(f"{title}（交互图的静态版：{len(pick)} 组滑块取值，共 {len(paths)} 组）", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


HTML_NOTE = "（此处在网页版中是一段交互内容，PDF 版从略。）"


def static_outputs(nb: dict) -> int:
    """Give interactive (plotly, HTML-only) outputs a static rendition for the PDF: small multiples of the slider's
    settings (`small_multiples`), or a note pointing to the web page if the figure cannot be read. Returns the count."""
    import base64
    n = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            html = "".join(data.get("text/html", ""))
            if "plotly-graph-div" in html and not any(k.startswith("image/") for k in data):
                try:
                    png = base64.b64encode(small_multiples(html)).decode("ascii")
                    out["data"] = {"image/png": png, "text/plain": "<plotly figure>"}
                except Exception as err:   # a figure not made by viz.explore: say where to see it
                    print(f"static rendition failed ({type(err).__name__}: {err}); a note instead", file=sys.stderr)
                    out["data"] = {"text/markdown": PLOTLY_NOTE, "text/plain": PLOTLY_NOTE}
                out.setdefault("metadata", {})
                n += 1
            elif html and not any(k.startswith("image/") for k in data) and \
                    "".join(data.get("text/plain", "")).startswith("<IPython.core.display.HTML"):
                # an animation (matplotlib's to_jshtml: its frames are PNGs in the page): its last frame
                frames = re.findall(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=\\\n]+)", html)
                if frames:
                    kind, b64 = frames[-1]
                    out["data"] = {f"image/{kind}": re.sub(r"[^A-Za-z0-9+/=]", "", b64),
                                   "text/plain": "<animation: last frame>"}
                else:
                    out["data"] = {"text/markdown": HTML_NOTE, "text/plain": HTML_NOTE}
                n += 1
    return n


_ENVS = {"align*": "aligned", "align": "aligned", "gather*": "gathered", "gather": "gathered",
         "alignat*": "alignedat", "alignat": "alignedat"}


def fix_math(app, doctree, docname):
    """LaTeX builder only: a display whose body is an `align*` (or `gather`) environment, which MathJax takes as is,
    becomes `aligned` (`gathered`): Sphinx wraps every display in `equation` + `split`, where `align*` is an error."""
    if app.builder.format != "latex": return
    import re
    from docutils import nodes
    for node in doctree.findall(nodes.math_block):
        text = node.astext()
        new = re.sub(r"\\(begin|end)\{(align\*?|gather\*?|alignat\*?)\}", lambda m: f"\\{m.group(1)}{{{_ENVS[m.group(2)]}}}", text)
        if new != text: node.children = [nodes.Text(new)]


_GREEK = dict(alpha="α", beta="β", gamma="γ", delta="δ", epsilon="ϵ", varepsilon="ε", zeta="ζ", eta="η", theta="θ",
              iota="ι", kappa="κ", lambda_="λ", mu="μ", nu="ν", xi="ξ", pi="π", rho="ρ", sigma="σ", tau="τ",
              phi="ϕ", varphi="φ", chi="χ", psi="ψ", omega="ω", Gamma="Γ", Delta="Δ", Theta="Θ", Lambda="Λ",
              Sigma="Σ", Phi="Φ", Psi="Ψ", Omega="Ω", nabla="∇", infty="∞", ell="ℓ", cdot="·", times="×",
              leftarrow="←", to="→", approx="≈", le="≤", ge="≥", sqrt="√")


def pdf_text(tex: str) -> str:
    "A plain-text stand-in for inline math in a heading, for the PDF's bookmarks (`\\texorpdfstring`)."
    import re
    out = re.sub(r"\\mathcal\{L\}", "𝓛", tex)
    out = re.sub(r"\\([A-Za-z]+)", lambda m: _GREEK.get(m.group(1), _GREEK.get(m.group(1) + "_", "")), out)
    return re.sub(r"[{}\\$%#&~]", "", out).strip()


def fix_title_math(app, doctree, docname):
    """LaTeX builder only: inline math in a heading goes into the PDF's bookmarks too, where unicode-math's symbols are
    errors (`Improper alphabetic constant`): wrap it in `\\texorpdfstring` with a plain-text stand-in."""
    if app.builder.format != "latex": return
    from docutils import nodes
    for math in list(doctree.findall(nodes.math)):
        p = math.parent
        while p is not None and not isinstance(p, nodes.title): p = p.parent
        if p is None: continue
        tex = math.astext()
        math.replace_self(nodes.raw("", "\\texorpdfstring{\\(%s\\)}{%s}" % (tex, pdf_text(tex)), format="latex"))


def _proof_docname(env, node, parent_tag="section"):
    """sphinx-proof's LaTeX labels name the theorem's document, which it finds through the sections that
    sphinx-jupyterbook-latex marks; where that fails (the label would be `None:...` and each reference print `??`),
    the document is the nearest `start_of_file` node the LaTeX builder wraps each included document in."""
    from sphinx import addnodes
    while node is not None:
        if isinstance(node, addnodes.start_of_file): return node["docname"]
        node = node.parent
    return env.config.root_doc


PROOF_NAMES = {"Theorem": "定理", "Lemma": "引理", "Definition": "定义", "Algorithm": "算法", "Corollary": "推论",
               "Proposition": "命题", "Remark": "注", "Example": "例", "Conjecture": "猜想", "Criterion": "判据",
               "Axiom": "公理", "Observation": "观察", "Property": "性质", "Assumption": "假设", "Notation": "记号",
               "Proof": "证明"}


BBM_SHIM = r"""\ProvidesPackage{bbm}[2024/01/01 optbook shim for mathbbm]
\providecommand{\mathbbm}[1]{\mathbb{#1}}
"""


def bbm_shim(app, exception):
    """sphinx-jupyterbook-latex's class loads `bbm` (in texlive-fonts-extra, about 1 GB, for `\mathbbm` alone):
    a two-line package in the LaTeX folder stands in for it (the book writes `\mathbb`)."""
    if exception is None and app.builder.format == "latex":
        (pathlib.Path(app.outdir) / "bbm.sty").write_text(BBM_SHIM, encoding="utf-8")


def translate_proofs(app, exception):
    """sphinx-proof writes its box titles in English in LaTeX (`Theorem 1 (...)`; HTML translates them): translate them
    in the written .tex, before latexmk runs."""
    if exception is not None or app.builder.format != "latex": return
    import re
    for tex in pathlib.Path(app.outdir).glob("*.tex"):
        text = tex.read_text(encoding="utf-8")
        new = re.sub(r"(\\begin\{sphinxadmonition\}\{note\}\{)(%s)\b" % "|".join(PROOF_NAMES),
                     lambda m: m.group(1) + PROOF_NAMES[m.group(2)], text)
        if new != text: tex.write_text(new, encoding="utf-8")


def setup(app):
    "Loaded only by the PDF's configuration (latex_config)."
    import sphinx_proof.nodes
    original = sphinx_proof.nodes.find_parent
    sphinx_proof.nodes.find_parent = lambda env, node, tag: original(env, node, tag) or _proof_docname(env, node, tag)
    app.connect("build-finished", translate_proofs)
    app.connect("build-finished", bbm_shim)
    app.connect("doctree-resolved", fix_title_math)
    app.connect("doctree-resolved", fix_math)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}


def prepare(root=ROOT, executed=None, out=None):
    "Write the PDF's source tree (see the module docstring); returns its path."
    import yaml
    root = pathlib.Path(root)
    executed = pathlib.Path(executed or root / "_build" / "jupyter_execute")
    out = pathlib.Path(out or root / "_build" / "pdfsrc")
    if not (executed / "nbs").is_dir():
        sys.exit(f"no executed notebooks in {executed}: run `make book` first (the PDF is built from its outputs)")
    shutil.rmtree(out, ignore_errors=True)
    (out / "nbs").mkdir(parents=True)
    for name in ("_toc.yml", "references.bib"):
        shutil.copy2(root / name, out / name)
    shutil.copytree(root / "_ext", out / "_ext", ignore=shutil.ignore_patterns("__pycache__"))
    (out / "optbook").symlink_to((root / "optbook").resolve())   # optbook_api reads the package's __all__
    cfg = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    (out / "_config.yml").write_text(yaml.safe_dump(latex_config(cfg), allow_unicode=True, sort_keys=False),
                                     encoding="utf-8")
    missing = []
    for src in sorted((root / "nbs").iterdir()):
        if src.suffix == ".ipynb":
            done = executed / "nbs" / src.name
            if not done.exists(): missing.append(src.name); done = src
            nb = json.loads(done.read_text(encoding="utf-8"))
            static_outputs(nb)
            (out / "nbs" / src.name).write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
        elif src.is_file():
            shutil.copy2(src, out / "nbs" / src.name)
    for extra in ("glue.json",):
        for g in (executed / "nbs").glob(f"*.{extra}"): shutil.copy2(g, out / "nbs" / g.name)
    if missing: print("not executed in the last build (their outputs are missing from the PDF):", ", ".join(missing))
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["prepare"]:
        print(prepare(*sys.argv[2:5]))
    else:
        sys.exit("usage: optbook_pdf.py prepare [ROOT [EXECUTED [OUT]]]")
