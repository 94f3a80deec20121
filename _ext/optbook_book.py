"""Sphinx glue for the optbook book (loaded through `sphinx.local_extensions` in _config.yml).

`read_nbdev` is registered as myst-nb's reader for `.ipynb` (`nb_custom_formats`). It turns nbdev's
cell directives into what MyST-NB understands, so no `#| ...` line ever reaches a page:

- `#| hide` and cells holding only directives (`#| default_exp core`) get the `remove-cell` tag: they
  still execute, but nothing of them is shown;
- `#| echo: false` becomes `remove-input`, `#| output: false` becomes `remove-output`;
- every directive line is stripped from the source that is shown.
"""
import re
import nbformat

_DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(.*?)\s*$")
_TAGS = {"hide": "remove-cell", "echo: false": "remove-input", "output: false": "remove-output"}


def _directives(source: str):
    "Split a code cell's leading `#|` lines from the rest of its source."
    lines = source.splitlines()
    found = []
    while lines and _DIRECTIVE.match(lines[0]):
        found.append(_DIRECTIVE.match(lines[0]).group(1).lower())
        lines.pop(0)
    return found, "\n".join(lines)


def clean_notebook(nb):
    "Map nbdev directives to MyST-NB tags and strip them from every code cell, in place."
    for cell in nb.cells:
        if cell.cell_type != "code": continue
        found, rest = _directives(cell.source)
        if not found: continue
        tags = cell.metadata.setdefault("tags", [])
        for d in found:
            tag = _TAGS.get(d) or _TAGS.get(d.replace(":", ": ").replace("  ", " "))
            if tag and tag not in tags: tags.append(tag)
        if not rest.strip() and "remove-cell" not in tags: tags.append("remove-cell")
        cell.source = rest
    return nb


def read_nbdev(text: str, **kwargs):
    "myst-nb reader: a notebook with nbdev directives turned into tags."
    return clean_notebook(nbformat.reads(text, as_version=4))


def setup(app):
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
