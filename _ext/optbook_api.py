"""The book's API cross-references (loaded through `sphinx.local_extensions` in _config.yml).

`optbook.doc.show_doc` (chapters) and `optbook.doc.api_page` (the appendix "API 参考") render the documentation as
Markdown in the notebooks' outputs, which run in the book's Colab-like kernel. What a kernel cannot do is make Sphinx
labels, so this extension does, from the package's source alone (no import of optbook or torch):

- at `doctree-read` of a chapter, it puts a label at the code cell that defines each public name of the module the
  chapter exports (the module's `__all__`; the chapter is named in the module's nbdev header line): `api-optbook.adam.adam`
  for `optbook.adam.Adam`, and also `api-optbook.adam` when the name is in `optbook.__all__` (labels are lowercase in
  Sphinx). A name whose defining cell is not found (a hidden cell) gets its label at the top of the chapter.
  Chapters and the API page can link to them with `{ref}`;
- it links inline code in the prose that names a public API, `Adam`, `optbook.Adam`, `optbook.compare.sweep`,
  `adam_update(...)`, to that label (bare names only when they are in `optbook.__all__` or are unambiguous and not
  common words); code blocks, titles and the API entries' own headings stay as they are;
- a link whose label is not in this build (a chapter left out) falls back to the plain code, with no warning;
- every page offers the PDF edition (`make pdf`) for download: a link under the navigation to `_static/optbook.pdf`,
  which `make pdf` copies into the site (and a later `make book` copies again from `_build/pdf/`).
"""
import ast, pathlib, re

from docutils import nodes
from sphinx import addnodes

PKG = "optbook"
REFTYPE = "optbook-api"


def api_index(root):
    """From optbook/*.py: {module: (notebook stem, [public names])} and the names of `optbook.__all__`."""
    pkg = pathlib.Path(root) / PKG
    modules, top = {}, []
    for f in sorted(pkg.glob("*.py")):
        text = f.read_text(encoding="utf-8")
        names = []
        try:
            for node in ast.parse(text).body:
                if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                    names = list(ast.literal_eval(node.value))
        except (SyntaxError, ValueError):
            continue
        if f.stem == "__init__": top = names; continue
        m = re.search(r"File to edit: \.\./nbs/([\w.-]+)\.ipynb", text.split("\n", 1)[0])
        if m and names and not f.stem.startswith("_"): modules[f"{PKG}.{f.stem}"] = (m.group(1), names)
    return modules, top


def label_of(module, name, names=()):
    """The label of `module.name`: `api-optbook.adam.adam` (Sphinx lowercases labels). When another public name of the
    module differs only in case (`Sweep` and `sweep`), the one with capitals gets `-class` (CamelCase) or `-const`."""
    label = f"api-{module}.{name}".lower()
    if name != name.lower() and any(n != name and n.lower() == name.lower() for n in names):
        label += "-const" if name.upper() == name else "-class"
    return label


def module_label(module):
    "The label of the chapter that exports `module` (at the top of its page)."
    return f"api-module-{module}".lower()


def name_map(modules, top):
    """Inline code text -> label: `optbook.mod.name`, `mod.name`, `optbook.Name` (top-level), and bare names that are
    top-level or unambiguous and look like API (an underscore or a capital letter)."""
    out, bare = {}, {}
    for mod, (_, names) in modules.items():
        short = mod.split(".", 1)[1]
        for n in names:
            out[f"{mod}.{n}"] = out[f"{short}.{n}"] = label_of(mod, n, names)
            bare.setdefault(n, []).append(label_of(mod, n, names))
    for mod in modules: out[mod] = module_label(mod)     # `optbook.adam`: the chapter that exports the module
    for n in top:
        if n in bare: out[f"{PKG}.{n}"] = out[n] = bare[n][0]
    for n, labels in bare.items():
        if n not in out and len(labels) == 1 and ("_" in n or any(c.isupper() for c in n)) and len(n) > 3:
            out[n] = labels[0]
    return out


def _defined(source):
    "Top-level names a code cell defines (def, class, assignment)."
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    try: tree = ast.parse("\n".join(lines))
    except SyntaxError: return []
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): out.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                if isinstance(t, ast.Name): out.append(t.id)
    return out


def _code_cells(doctree):
    for node in doctree.findall(nodes.container):
        if node.get("nb_element") == "cell_code":
            src = next((b.astext() for b in node.findall(nodes.literal_block)
                        if b.parent is not None and b.parent.get("nb_element") == "cell_code_source"), None)
            yield node, src


def add_labels(app, doctree):
    "Label the cell that defines each public name of the module this chapter exports."
    env, docname = app.env, app.env.docname
    modules, top = env.optbook_api
    stem = pathlib.PurePosixPath(docname).name
    wanted, mods = {}, []
    for mod, (nb, names) in modules.items():
        if nb == stem:
            mods.append(mod)
            for n in names:
                wanted[n] = [label_of(mod, n, names)] + ([f"api-{PKG}.{n}".lower()] if n in top else [])
    if not wanted: return
    std = env.get_domain("std")
    placed = set()
    def place(parent, index, name):
        labels = wanted[name]
        ids = [nodes.make_id(lb) for lb in labels]
        target = nodes.target("", "", ids=ids, names=labels)
        parent.insert(index, target)
        for lb, i in zip(labels, ids):
            std.labels[lb] = (docname, i, name)
            std.anonlabels[lb] = (docname, i)
        placed.add(name)
    for cell, src in list(_code_cells(doctree)):
        if src is None: continue
        for n in _defined(src):
            if n in wanted and n not in placed:
                place(cell.parent, cell.parent.index(cell), n)
    first = next(iter(doctree.findall(nodes.section)), None)
    for n in wanted:
        if n not in placed and first is not None: place(first, 0, n)
    if first is not None and first.children:
        title = first[0].astext() if isinstance(first[0], nodes.title) else docname
        for mod in mods:
            lb = module_label(mod)
            first.insert(1, nodes.target("", "", ids=[nodes.make_id(lb)], names=[lb]))
            std.labels[lb] = (docname, nodes.make_id(lb), title)
            std.anonlabels[lb] = (docname, nodes.make_id(lb))


def _skip(node):
    p = node.parent
    while p is not None:
        if isinstance(p, (nodes.reference, nodes.title, nodes.rubric, addnodes.pending_xref, nodes.literal_block,
                          nodes.FixedTextElement)):
            return True
        if isinstance(p, nodes.container) and ("optbook-api" in p.get("classes", []) and False): return True
        p = p.parent
    return False


def add_links(app, doctree):
    "Turn inline code naming a public API into a link to its label."
    names = app.env.optbook_api_names
    for lit in list(doctree.findall(nodes.literal)):
        text = lit.astext().strip()
        key = re.sub(r"\(.*\)$", "", text)
        label = names.get(key)
        if label is None or _skip(lit): continue
        ref = addnodes.pending_xref("", refdomain="std", reftype=REFTYPE, reftarget=label, refexplicit=True,
                                    refwarn=False, refdoc=app.env.docname)
        lit.replace_self(ref)
        ref += lit


def resolve(app, env, node, contnode):
    "Resolve our links through the labels; a label not in this build leaves the plain code (no warning)."
    if node.get("reftype") != REFTYPE: return None
    std = env.get_domain("std")
    target = std.anonlabels.get(node["reftarget"])
    if not target: return contnode
    from sphinx.util.nodes import make_refnode
    docname, labelid = target
    return make_refnode(app.builder, node["refdoc"], docname, labelid, contnode, node["reftarget"])


PDF_NAME = "optbook.pdf"
PDF_JS = """
document.addEventListener("DOMContentLoaded", function () {
  var root = document.documentElement.dataset.content_root;
  if (root === undefined) root = (window.DOCUMENTATION_OPTIONS || {}).URL_ROOT || "";
  var host = document.querySelector(".bd-sidebar-primary .sidebar-primary-items__start")
          || document.querySelector(".bd-sidebar-primary") || document.querySelector("main") || document.body;
  var box = document.createElement("p"), a = document.createElement("a");
  box.className = "optbook-pdf";
  a.href = root + "_static/%s"; a.textContent = "下载本书 PDF 版"; a.setAttribute("download", "%s");
  box.appendChild(a); host.appendChild(box);
});
""" % (PDF_NAME, PDF_NAME)


def publish_pdf(app, exception):
    "Copy the last `make pdf`'s PDF into the site, so a rebuilt site keeps offering it."
    if exception is not None or app.builder.format != "html": return
    pdf = pathlib.Path(app.srcdir) / "_build" / "pdf" / PDF_NAME
    if pdf.is_file():
        import shutil
        shutil.copy2(pdf, pathlib.Path(app.outdir) / "_static" / PDF_NAME)


def _inited(app):
    if app.builder.format == "html": app.add_js_file(None, body=PDF_JS)
    root = pathlib.Path(app.srcdir)
    if not (root / PKG).is_dir(): root = pathlib.Path(__file__).resolve().parents[1]
    app.env.optbook_api = api_index(root)
    app.env.optbook_api_names = name_map(*app.env.optbook_api)


def setup(app):
    app.connect("builder-inited", _inited)
    app.connect("doctree-read", add_labels)
    app.connect("doctree-read", add_links)
    app.connect("missing-reference", resolve)
    app.connect("build-finished", publish_pdf)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
