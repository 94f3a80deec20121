"""Interactive plotly figures on the book's pages, with no CDN (loaded through `sphinx.local_extensions`).

plotly carries its JavaScript in the Python package (`plotly.offline.get_plotlyjs()`, about 4.8 MB). This
extension serves it from the book itself, as the book already serves MathJax:

- at `builder-inited` (HTML builders) it writes the library once into the site's `_static/plotly.min.js`
  (rewritten only when plotly's version changes);
- at `html-page-context` it adds that script to the pages whose body holds a plotly figure
  (`plotly-graph-div`), and only to those, with a low priority so that it loads, blocking, in the
  page's head before the figures' inline scripts run and before any require.js (plotly's UMD wrapper
  would register with require.js instead of defining `window.Plotly`);
- in `setup` it sets the environment variable `OPTBOOK_PLOTLYJS=page`, which the notebook kernels that
  myst-nb starts for the build inherit: figures from `optbook.viz.explore` then emit only `text/html`
  made with `include_plotlyjs=False` (no copy of plotly.js, no CDN, no require.js), which myst-nb
  puts on the page as is. Outside the build (Jupyter, Colab, VS Code) they display as plotly does.
"""
import hashlib, os, pathlib

STATIC_NAME = "plotly.min.js"
ENV = "OPTBOOK_PLOTLYJS"  # read by optbook.viz (keep the two in step)
MARKER = "plotly-graph-div"  # the class of the <div> that plotly's HTML output draws into


def write_plotlyjs(app):
    "Write plotly.js into the built site's _static once (again only if its content changed)."
    if app.builder.format != "html":
        return
    from plotly.offline import get_plotlyjs
    js = get_plotlyjs().encode("utf-8")
    target = pathlib.Path(app.outdir) / "_static" / STATIC_NAME
    if target.exists() and target.stat().st_size == len(js) and \
            hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(js).digest():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(js)


def add_plotlyjs(app, pagename, templatename, context, doctree):
    "Load plotly.js (from _static) on the pages that hold a plotly figure."
    if MARKER not in context.get("body", ""):
        return
    # plotly.js reads this before it loads: leave the page's own MathJax 3 configuration alone.
    app.add_js_file(None, body="window.PlotlyConfig = {MathJaxConfig: 'local'};", priority=90)
    app.add_js_file(STATIC_NAME, priority=100)


def setup(app):
    os.environ[ENV] = "page"
    app.connect("builder-inited", write_plotlyjs)
    app.connect("html-page-context", add_plotlyjs)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
