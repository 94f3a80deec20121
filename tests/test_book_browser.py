"""The rendered book, as a reader meets it: headless Chromium over the pages in _build/html.

Run after `make book` (make test does). Screenshots go to _build/screenshots/.
"""
import functools, http.server, pathlib, shutil, threading, urllib.parse

import pytest
import yaml

from conftest import ROOT

HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))


def toc_files():
    "Every document of the book in reading order, as paths without suffix."
    files = [TOC["root"]]
    for part in TOC.get("parts", []):
        files += [ch["file"] for ch in part["chapters"]]
    return files


NOTEBOOKS = [f for f in toc_files() if (ROOT / f"{f}.ipynb").exists()]


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail("_build/html/index.html is missing: run `make book` first")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("Debian's chromium and chromium-driver are needed (make test installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,2000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_page_load_timeout(60)
    drv.set_script_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield drv
    drv.quit()


WAIT_MATHJAX = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !MathJax.startup) { done("no MathJax"); return; }
MathJax.startup.promise.then(() => done("ok")).catch(e => done("error: " + e));
"""

# Visible text outside code: raw TeX left here means MathJax did not typeset it.
PROSE_TEXT = """
const root = document.querySelector('article') || document.body;
const clone = root.cloneNode(true);
clone.querySelectorAll('pre, code, script, style, mjx-container, .cell_input, .highlight').forEach(e => e.remove());
return clone.innerText;
"""

IMAGES = """
return Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete && i.naturalWidth > 0]);
"""


def load(browser, server, page):
    browser.get(f"{server}/{page}")
    assert browser.execute_async_script(WAIT_MATHJAX) == "ok", f"{page}: MathJax did not start"


@pytest.mark.parametrize("doc", toc_files())
def test_page_renders(browser, server, doc):
    load(browser, server, f"{doc}.html")
    prose = browser.execute_script(PROSE_TEXT)
    for raw in ["$$", "\\begin{align", "\\frac", "\\theta"]:
        assert raw not in prose, f"{doc}: raw TeX {raw!r} left on the page"
    assert not browser.find_elements("css selector", "mjx-merror, .MathJax_Error"), f"{doc}: MathJax error"
    broken = [src[:120] for src, ok in browser.execute_script(IMAGES) if not ok]
    assert not broken, f"{doc}: images that did not load: {broken}"
    html = browser.page_source
    assert "#| " not in html and "#|export" not in html, f"{doc}: an nbdev directive reached the page"
    assert not browser.find_elements("css selector", ".output.stderr, .stderr"), f"{doc}: a stderr block is shown"
    assert "Traceback" not in browser.execute_script("return document.body.innerText"), f"{doc}: a traceback is shown"
    browser.save_screenshot(str(SHOTS / (doc.replace("/", "_") + ".png")))


@pytest.mark.parametrize("doc", NOTEBOOKS)
def test_math_is_typeset(browser, server, doc):
    "Pages with formulas show MathJax output (the CHTML elements exist)."
    load(browser, server, f"{doc}.html")
    if "$" in (ROOT / f"{doc}.ipynb").read_text(encoding="utf-8"):
        assert browser.find_elements("css selector", "mjx-container"), f"{doc}: no typeset math"


@pytest.mark.parametrize("doc", NOTEBOOKS)
def test_colab_link(browser, server, doc):
    load(browser, server, f"{doc}.html")
    want = f"https://colab.research.google.com/github/optbook/optbook/blob/main/{doc}.ipynb"
    hrefs = [a.get_attribute("href") for a in browser.find_elements("css selector", "a[href*='colab.research.google.com']")]
    assert want in hrefs, f"{doc}: Colab link should be {want}, found {hrefs}"


@pytest.mark.parametrize("doc", NOTEBOOKS)
def test_comments_box(browser, server, doc):
    load(browser, server, f"{doc}.html")
    assert "utteranc.es" in browser.page_source, f"{doc}: the page-comments script (utterances) is missing"


def test_chinese_search_finds_momentum(browser, server):
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(f"{server}/search.html?q={urllib.parse.quote('动量')}")
    WebDriverWait(browser, 60).until(
        lambda b: b.find_elements("css selector", "#search-results li, ul.search li"))
    links = [a.get_attribute("href") for a in browser.find_elements("css selector", "#search-results a, ul.search a")]
    browser.save_screenshot(str(SHOTS / "search_动量.png"))
    assert any("nbs/02_sgd.html" in (h or "") for h in links), f"searching 动量 did not find the SGD chapter: {links}"
