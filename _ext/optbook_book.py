"""Sphinx glue for the optbook book (loaded through `sphinx.local_extensions` in _config.yml).

`read_nbdev` is registered as myst-nb's reader for `.ipynb` (`nb_custom_formats`). It turns nbdev's
cell directives into what MyST-NB understands, so no `#| ...` line ever reaches a page:

- `#| hide` and cells holding only directives (`#| default_exp core`) get the `remove-cell` tag: they
  still execute, but nothing of them is shown;
- `#| echo: false` becomes `remove-input`, `#| output: false` becomes `remove-output`;
- every directive line is stripped from the source that is shown.

It also joins the soft line breaks of Chinese prose in markdown cells (`join_cjk_lines`): a browser
renders a newline between two Chinese characters as a visible space, which Chinese typography has not.
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


_CJK = "\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_ENDS_CJK = re.compile(f"[{_CJK}]$")
_STARTS_CJK = re.compile(f"^(\\*\\*|\\*(?!\\s)|_)?[{_CJK}]")  # also **粗体** and *强调*
_CJK_PUNCT_END = re.compile("[\uff0c\u3002\uff1b\uff1a\u3001\uff01\uff1f\uff09\u300d\u300f\u300b\u201d\u2019\u2014\u2026]$")  # incl. —— and ……
# a line that starts a block of its own: never glue it onto the line before
_BLOCK_START = re.compile(r"^\s*([-*+]\s|\d+[.)]\s|#|>|\||:::|```|~~~|\$\$|:\w|\{|<)")
# a line that must stay whole: headings, fences and directive openings, directive options
_KEEP_WHOLE = re.compile(r"^\s*(#|:::|```|~~~|\$\$|:\w)")


def join_cjk_lines(text: str) -> str:
    "Join soft line breaks inside Chinese prose, leaving code fences, display math and block starts alone."
    out, fence, math = [], None, False
    for line in text.split("\n"):
        stripped = line.strip()
        fence_mark = re.match(r"^(`{3,}|~{3,})(.*)$", stripped)
        if fence is None and fence_mark:
            # a fence opening a directive ({prf:theorem}, {exercise}) holds prose; any other holds code
            fence = ("prose" if fence_mark.group(2).strip().startswith("{") else "code", fence_mark.group(1))
            out.append(line); continue
        if fence is not None and stripped.startswith(fence[1]) and not stripped[len(fence[1]):].strip():
            fence = None; out.append(line); continue
        if stripped.startswith("$$"):
            math = not math if stripped.count("$$") == 1 else math
            out.append(line); continue
        in_code = fence is not None and fence[0] == "code"
        prev = out[-1].rstrip() if out else ""
        glue = (not in_code and not math and prev and stripped and not _BLOCK_START.match(line)
                and not _KEEP_WHOLE.match(out[-1])
                and (_CJK_PUNCT_END.search(prev) or (_ENDS_CJK.search(prev) and _STARTS_CJK.match(stripped))))
        if glue: out[-1] = prev + stripped
        else: out.append(line)
    return "\n".join(out)


def clean_notebook(nb):
    "Map nbdev directives to MyST-NB tags and strip them from every code cell, in place; join Chinese lines."
    for cell in nb.cells:
        if cell.cell_type == "markdown": cell.source = join_cjk_lines(cell.source)
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
