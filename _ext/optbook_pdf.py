"""The PDF edition: `make pdf` (see the Makefile) builds the whole book as one PDF with Jupyter Book's LaTeX builder,
xelatex and ctex, from the notebooks that the last `make book` executed, without executing anything again.

`python _ext/optbook_pdf.py prepare` writes `_build/pdfsrc`: a copy of the book's source whose `nbs/*.ipynb` are the
executed notebooks of `_build/jupyter_execute` (outputs, figures and glue values included) and whose `_config.yml` is
the book's with execution off and the LaTeX settings below. Interactive plotly figures (HTML only) are replaced by a
note pointing to the web page, since LaTeX cannot show them.
"""
import json, pathlib, shutil, sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
SRC = BUILD / "pdfsrc"
TARGET = "optbook"   # _build/pdfsrc/_build/latex/optbook.pdf, copied to _build/pdf/optbook.pdf

PREAMBLE = r"""
\usepackage[UTF8, scheme=chinese, heading=false, fontset=none]{ctex}
\setCJKmainfont{Noto Serif CJK SC}[BoldFont={Noto Sans CJK SC Bold}]
\setCJKsansfont{Noto Sans CJK SC}
\setCJKmonofont{Noto Sans Mono CJK SC}
\setmonofont{DejaVu Sans Mono}[Scale=MatchLowercase]
\usepackage{newunicodechar}
\newfontfamily\optbookfallback{FreeSerif}
\newunicodechar{𝓛}{{\optbookfallback\upshape\symbol{"1D4DB}}}
\newunicodechar{ℓ}{{\optbookfallback\upshape\symbol{"2113}}}
\usepackage{amsmath,amssymb}
\providecommand{\argmin}{\operatorname*{arg\,min}}
\providecommand{\argmax}{\operatorname*{arg\,max}}
\providecommand{\E}{\mathbb{E}}
\providecommand{\R}{\mathbb{R}}
\providecommand{\diag}{\operatorname{diag}}
\providecommand{\sign}{\operatorname{sign}}
"""

PLOTLY_NOTE = "（此处是一幅交互图：拖动滑块可看不同超参数下的轨迹。PDF 版无法交互，请在网页版的本章查看。）"


def latex_config(cfg: dict) -> dict:
    "The book's _config.yml for the PDF: execution off, xelatex + ctex, one document with the book's title."
    cfg = dict(cfg)
    cfg["execute"] = {**cfg.get("execute", {}), "execute_notebooks": "off"}
    cfg["latex"] = {"latex_engine": "xelatex", "use_jupyterbook_latex": False,
                    "latex_documents": {"targetname": TARGET + ".tex"}}
    sphinx = dict(cfg.get("sphinx", {}))
    sphinx["local_extensions"] = {**(sphinx.get("local_extensions") or {}), "optbook_pdf": "_ext"}
    conf = dict(sphinx.get("config", {}))
    conf["latex_elements"] = {"papersize": "a4paper", "pointsize": "11pt", "babel": "", "polyglossia": "",
                              "fontenc": r"\usepackage{fontspec}", "preamble": PREAMBLE, "figure_align": "H",
                              "sphinxsetup": "verbatimwithframe=false, VerbatimColor={rgb}{0.96,0.96,0.96}",
                              # no general index: makeindex splits the UTF-8 bytes of Chinese terms (the glossary is a chapter)
                              "printindex": ""}
    conf["latex_domain_indices"] = False
    conf["latex_show_urls"] = "no"
    conf["latex_use_xindy"] = False
    sphinx["config"] = conf
    cfg["sphinx"] = sphinx
    return cfg


def static_outputs(nb: dict) -> int:
    "Replace interactive (plotly, HTML-only) outputs by a note for the PDF; returns how many were replaced."
    n = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            html = "".join(data.get("text/html", ""))
            if "plotly-graph-div" in html and not any(k.startswith("image/") for k in data):
                out["data"] = {"text/markdown": PLOTLY_NOTE, "text/plain": PLOTLY_NOTE}
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


def _proof_docname(env, node, parent_tag="section"):
    """sphinx-proof's LaTeX labels name the theorem's document, which it finds through sections that only
    sphinx-jupyterbook-latex marks (without it every label is `None:...` and each reference prints `??`); the LaTeX
    builder marks each included document with `start_of_file`, which is what this reads."""
    from sphinx import addnodes
    while node is not None:
        if isinstance(node, addnodes.start_of_file): return node["docname"]
        node = node.parent
    return env.config.root_doc


PROOF_NAMES = {"Theorem": "定理", "Lemma": "引理", "Definition": "定义", "Algorithm": "算法", "Corollary": "推论",
               "Proposition": "命题", "Remark": "注", "Example": "例", "Conjecture": "猜想", "Criterion": "判据",
               "Axiom": "公理", "Observation": "观察", "Property": "性质", "Assumption": "假设", "Notation": "记号",
               "Proof": "证明"}


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
    sphinx_proof.nodes.find_parent = _proof_docname
    app.connect("build-finished", translate_proofs)
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
