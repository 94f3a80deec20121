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
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})   # the pages' console, for the JavaScript-error check
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
    "Open a page and wait for MathJax; a page without math loads no MathJax (Sphinx adds it only where needed)."
    browser.get(f"{server}/{page}")
    status = browser.execute_async_script(WAIT_MATHJAX)
    has_math = browser.execute_script("return document.querySelectorAll('.math, div.math, span.math').length > 0")
    assert status == "ok" or (status == "no MathJax" and not has_math), f"{page}: MathJax did not start ({status})"
    return has_math


# Console messages that are the network's fault, not the page's: this machine reaches no CDN or comment server.
OFFLINE = ("utteranc.es", "favicon.ico", "ERR_NAME_NOT_RESOLVED", "ERR_INTERNET_DISCONNECTED", "Got invalid theme mode")


@pytest.mark.parametrize("doc", toc_files())
def test_page_renders(browser, server, doc):
    "One load per page: math typeset, no raw TeX, images, no directives or stderr, one MathJax, comments, no JS errors."
    browser.get_log("browser")                                   # drop what earlier pages left
    has_math = load(browser, server, f"{doc}.html")
    prose = browser.execute_script(PROSE_TEXT)
    for raw in ["$$", "\\begin{align", "\\frac", "\\theta"]:
        assert raw not in prose, f"{doc}: raw TeX {raw!r} left on the page"
    assert not browser.find_elements("css selector", "mjx-merror, .MathJax_Error"), f"{doc}: MathJax error"
    src = ROOT / f"{doc}.ipynb"
    if src.exists() and "$" in src.read_text(encoding="utf-8"):
        assert browser.find_elements("css selector", "mjx-container"), f"{doc}: no typeset math"
    broken = [src[:120] for src, ok in browser.execute_script(IMAGES) if not ok]
    assert not broken, f"{doc}: images that did not load: {broken}"
    html = browser.page_source
    assert "#| " not in html and "#|export" not in html, f"{doc}: an nbdev directive reached the page"
    assert not browser.find_elements("css selector", ".output.stderr, .stderr"), f"{doc}: a stderr block is shown"
    assert "Traceback" not in browser.execute_script("return document.body.innerText"), f"{doc}: a traceback is shown"
    mathjax = browser.execute_script("return Array.from(document.scripts).map(s => s.src).filter(s => /mathjax/i.test(s));")
    assert len(mathjax) == 1 if has_math else len(mathjax) <= 1, f"{doc}: more than one MathJax (or none for its math): {mathjax[:5]}"
    assert all(f"{server}/_static/mathjax/tex-chtml.js" in m for m in mathjax), f"{doc}: MathJax not from the book's _static: {mathjax}"
    comments = browser.execute_script(
        "return Array.from(document.querySelectorAll('.optbook-comments script')).map(s => [s.src, s.getAttribute('repo')]);")
    assert comments == [["https://utteranc.es/client.js", "optbook/optbook"]], f"{doc}: the comment box is missing: {comments}"
    external = browser.execute_script(
        "return Array.from(document.querySelectorAll('link[href], script[src], img[src], iframe[src]'))"
        ".map(e => e.href || e.src).filter(u => /^https?:/.test(u) && !u.startsWith(arguments[0]));", server)
    assert [u for u in external if "utteranc.es" not in u] == [], f"{doc}: assets from other hosts (offline, they fail): {external}"
    errors = [m["message"] for m in browser.get_log("browser")
              if m["level"] == "SEVERE" and not any(k in m["message"] for k in OFFLINE)]
    assert not errors, f"{doc}: JavaScript errors on the page: {errors}"
    if src.exists():
        want = f"https://colab.research.google.com/github/optbook/optbook/blob/main/{doc}.ipynb"
        hrefs = [a.get_attribute("href") for a in browser.find_elements("css selector", "a[href*='colab.research.google.com']")]
        assert want in hrefs, f"{doc}: Colab link should be {want}, found {hrefs}"
    browser.save_screenshot(str(SHOTS / (doc.replace("/", "_") + ".png")))


def test_chinese_search_finds_momentum(browser, server):
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(f"{server}/search.html?q={urllib.parse.quote('动量')}")
    WebDriverWait(browser, 60).until(
        lambda b: b.find_elements("css selector", "#search-results li, ul.search li"))
    links = [a.get_attribute("href") for a in browser.find_elements("css selector", "#search-results a, ul.search a")]
    browser.save_screenshot(str(SHOTS / "search_动量.png"))
    assert any("nbs/02_sgd.html" in (h or "") for h in links), f"searching 动量 did not find the SGD chapter: {links}"


# The interactive figures of optbook.viz.explore (the momentum section of chapter 2, and appendix 91_viz): plotly.js
# from the book's own _static, two sliders that each change only their own hyperparameter.
EXPLORE_PAGES = ["nbs/02_sgd.html", "nbs/91_viz.html"]

SLIDER_FIGURE = """
const gd = Array.from(document.querySelectorAll('.plotly-graph-div'))
  .find(g => g.layout && (g.layout.sliders || []).length === 2);
if (!gd) return null;
gd.scrollIntoView({block: 'center'});
return gd.querySelectorAll('.slider-rail-touch-rect').length;
"""

# The combination now drawn in the left panel: the trajectory trace that is visible and opaque.
SHOWN_TRAJECTORY = """
const gd = Array.from(document.querySelectorAll('.plotly-graph-div')).find(g => (g.layout.sliders || []).length === 2);
const shown = gd._fullData.filter(t => t.type === 'scatter' && t.showlegend === false && t.xaxis === 'x'  // decoded arrays: _fullData
                                      && t.visible === true && t.opacity === 1);
return shown.map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}));
"""

# Viewport coordinates of step `k` of slider `s`: on its rail, under the step's label.
SLIDER_STEP_XY = """
const [s, k] = arguments;
const gd = Array.from(document.querySelectorAll('.plotly-graph-div')).find(g => (g.layout.sliders || []).length === 2);
const group = gd.querySelectorAll('.slider-group')[s];
const rail = group.querySelector('.slider-rail-touch-rect').getBoundingClientRect();
const label = group.querySelectorAll('.slider-label-group')[k].getBoundingClientRect();
return [label.left + label.width / 2, rail.top + rail.height / 2, gd.layout.sliders[s].steps[k].label];
"""

CURRENT_VALUES = """
const gd = Array.from(document.querySelectorAll('.plotly-graph-div')).find(g => (g.layout.sliders || []).length === 2);
return Array.from(gd.querySelectorAll('.slider-group')).map(g => g.querySelector(':scope > text.slider-label').textContent);
"""


@pytest.mark.parametrize("page", EXPLORE_PAGES)
def test_interactive_figure_moves_with_its_sliders(browser, server, page):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.support.ui import WebDriverWait
    EXPLORE_PAGE = page
    load(browser, server, EXPLORE_PAGE)
    plotly_scripts = browser.execute_script(
        "return Array.from(document.scripts).map(s => s.src).filter(s => /plotly/i.test(s));")
    assert plotly_scripts, f"{EXPLORE_PAGE}: no plotly.js script on the page"
    assert all(s.startswith(f"{server}/_static/") for s in plotly_scripts), \
        f"plotly.js must come from the book's own _static, not {plotly_scripts}"
    assert browser.execute_script("return typeof window.Plotly") == "object", "plotly.js did not load"
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert not [u for u in loaded if "plot.ly" in u or ("plotly" in u and not u.startswith(server))], loaded
    WebDriverWait(browser, 60).until(lambda b: b.execute_script(SLIDER_FIGURE) == 2,
                                     message="the figure with two sliders was not drawn")

    before = browser.execute_script(SHOWN_TRAJECTORY)
    assert len(before) == 1, [t["name"] for t in before]
    for slider, step in [(0, -1), (1, -2), (0, 0)]:   # η to its largest value, then β, then η back to its smallest
        n = len(browser.execute_script(
            "return Array.from(document.querySelectorAll('.plotly-graph-div'))"
            ".find(g => (g.layout.sliders || []).length === 2).layout.sliders[arguments[0]].steps;", slider))
        x, y, label = browser.execute_script(SLIDER_STEP_XY, slider, step % n)
        click = ActionBuilder(browser)                   # a real mouse click on the slider's rail
        click.pointer_action.move_to_location(int(x), int(y)).click()
        click.perform()
        WebDriverWait(browser, 30).until(
            lambda b: any(v.endswith(f"= {label}") for v in b.execute_script(CURRENT_VALUES)),
            message=f"slider {slider} did not move to {label}")
        WebDriverWait(browser, 30).until(lambda b: b.execute_script(SHOWN_TRAJECTORY) != before,
                                         message=f"moving slider {slider} did not change the trajectory")
        after = browser.execute_script(SHOWN_TRAJECTORY)
        assert len(after) == 1, [t["name"] for t in after]
        values = [v.split("= ")[-1] for v in browser.execute_script(CURRENT_VALUES)]
        assert after[0]["name"].startswith(f"η={values[0]}, β={values[1]}"), (after[0]["name"], values)
        assert len(after[0]["x"]) > 1 and after[0]["x"] != before[0]["x"], "the trajectory's data did not change"
        before = after
    browser.save_screenshot(str(SHOTS / (page.split("/")[-1].replace(".html", "") + "_explore.png")))
