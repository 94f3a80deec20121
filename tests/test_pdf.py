"""The PDF edition (`make pdf`): text extraction with pdftotext (poppler-utils) and the LaTeX log.

Skipped when there is no PDF, unless OPTBOOK_PDF_REQUIRED is set (`make pdf` sets it, after building it); carries the
`book` marker, so `make unit` leaves it out and `make booktest` checks a PDF that is there."""
import json, os, pathlib, re, shutil, subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PDF = ROOT / "_build" / "pdf" / "optbook.pdf"
LOG = ROOT / "_build" / "pdf" / "optbook.log"

pytestmark = [pytest.mark.book]


@pytest.fixture(scope="module")
def pdf():
    if not PDF.exists():
        if os.environ.get("OPTBOOK_PDF_REQUIRED"): pytest.fail(f"{PDF} is missing: `make pdf` builds it")
        pytest.skip("no PDF: run `make pdf`")
    if shutil.which("pdftotext") is None: pytest.fail("pdftotext is missing (poppler-utils; `make pdf` installs it)")
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", str(PDF), "-"], capture_output=True, text=True, check=True).stdout
    info = subprocess.run(["pdfinfo", str(PDF)], capture_output=True, text=True, check=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))
    return text, pages


def toc_docs():
    import yaml
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    docs = [toc["root"]]
    for part in toc.get("parts", []):
        docs += [c["file"] for c in part.get("chapters", [])]
    return docs


def title(doc):
    "The first `# ` heading of a page, as plain text."
    path = ROOT / (doc + ".ipynb")
    if path.exists():
        nb = json.loads(path.read_text(encoding="utf-8"))
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    else:
        text = (ROOT / (doc + ".md")).read_text(encoding="utf-8")
    line = next(ln for ln in text.splitlines() if ln.startswith("# "))
    return re.sub(r"[*`]", "", line[2:]).strip()


def squash(s): return re.sub(r"\s+", "", s)


def test_every_chapter_title_is_there_and_the_page_count_is_plausible(pdf):
    text, pages = pdf
    flat = squash(text)
    docs = toc_docs()
    # the root page (前言) is the front matter, whose own title the LaTeX builder leaves out; its sections are there
    missing = [title(d) for d in docs[1:] if squash(title(d)) not in flat]
    assert not missing, f"chapter titles missing from the PDF: {missing}"
    assert squash(title(docs[1])) in flat
    assert 10 * len(docs) <= pages <= 3000, pages


def test_chinese_extracts_as_chinese(pdf):
    text, pages = pdf
    cjk = len(re.findall(r"[\u4e00-\u9fff]", text))
    assert cjk > 200 * pages ** 0.5 and cjk > 5000, cjk
    for phrase in ("随机梯度下降", "学习率", "自适应学习率", "术语表"):
        assert phrase in text, phrase
    boxes = re.findall("[\ufffd\u25a1\u2610]", text)     # replacement character, white square: missing glyphs
    assert not boxes, f"{len(boxes)} missing-glyph boxes"


def test_latex_log_is_clean():
    if not LOG.exists():
        if os.environ.get("OPTBOOK_PDF_REQUIRED"): pytest.fail(f"{LOG} is missing")
        pytest.skip("no PDF: run `make pdf`")
    log = LOG.read_text(encoding="utf-8", errors="replace")
    assert "Missing character" not in log, re.findall(r"Missing character:.*", log)[:10]
    undefined = re.findall(r"(?:Reference|Citation|Hyper reference) `[^']*' on page \d+ undefined", log)
    assert not undefined, undefined[:10]


def _code_texts():
    "Everything the PDF may show as code: code cells and their text outputs (docstrings quote TeX there)."
    out = []
    for nb in (ROOT / "nbs").glob("*.ipynb"):
        for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            if c["cell_type"] == "code": out.append("".join(c["source"]))
    executed = ROOT / "_build" / "jupyter_execute" / "nbs"
    for nb in executed.glob("*.ipynb"):
        for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            for o in c.get("outputs", []):
                out.append("".join(o.get("text", "")) + "".join((o.get("data") or {}).get("text/plain", "")))
    return "\n".join(out)


def test_no_unresolved_references_or_raw_tex(pdf):
    text, _ = pdf
    code = _code_texts()
    unresolved = [ln.strip() for ln in text.splitlines() if "??" in ln and ln.strip() not in code]
    assert not unresolved, f"unresolved references (??): {unresolved[:10]}"
    tex = re.compile(r"\\(?:begin|end)\{\w+\*?\}|\\(?:frac|mathcal|mathbb|leftarrow|sqrt|eta|theta|beta|nabla)\b|\$\$")
    raw = sorted(set(tex.findall(text)) - set(tex.findall(code)))
    assert not raw, f"raw TeX in the PDF's text: {raw[:20]}"


def test_the_site_offers_the_pdf(pdf):
    "Every page links to the PDF (_ext/optbook_api.py adds the link), and the site serves it."
    site = ROOT / "_build" / "html"
    if not (site / "index.html").exists(): pytest.skip("no HTML site: run `make book`")
    assert (site / "_static" / "optbook.pdf").read_bytes() == PDF.read_bytes(), "make pdf copies the PDF into the site"
    page = (site / "nbs" / "02_sgd.html").read_text(encoding="utf-8")
    assert "_static/optbook.pdf" in page and "下载本书 PDF 版" in page, "the download link is missing from the pages"
