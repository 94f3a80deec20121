"""The release path: one version and one home (settings.ini), named the same everywhere a reader or a learner meets
them, and an install cell that, when neither home answers, says in Chinese what to do instead of ending in a pip
traceback. The workflow itself (.github/workflows/release.yml) runs on GitHub; here we check what it says."""
import importlib.metadata, os, re, subprocess, sys, zipfile

import nbformat
import pytest
import yaml

from conftest import ROOT, settings

CFG = settings()
VERSION, GIT = CFG["version"], CFG["git_url"]
SITE = CFG["doc_host"] + CFG["doc_baseurl"]
WHEEL_NAME = f"optbook-{VERSION}-py3-none-any.whl"
WHEEL_URL = f"{SITE}/_static/{WHEEL_NAME}"
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"


def install_cell(path):
    return next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code").source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_names_this_version_and_both_homes(path):
    src = install_cell(path)
    assert f'importlib.metadata.version("optbook") == "{VERSION}"' in src
    assert f"optbook @ git+{GIT}@v{VERSION}" in src
    assert f"optbook @ {WHEEL_URL}" in src, "the fallback: the wheel published with the book"
    assert src.index(f"git+{GIT}") < src.index(WHEEL_URL), "the repository first, the site second"
    assert "raise SystemExit(" in src and "没能安装" in src, "a Chinese explanation when both fail"


def test_readme_config_and_workflow_agree_with_settings():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"optbook @ git+{GIT}@v{VERSION}" in readme
    assert WHEEL_URL in readme, "the README names the wheel served with the book"
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config["repository"]["url"] == GIT, "the Colab and repository buttons point at the home"
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    flow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    on = flow.get("on", flow.get(True))                      # YAML 1.1 reads the key `on` as True
    assert on["push"]["tags"] == ["v*"]
    jobs = flow["jobs"]
    test_steps = " ".join(s.get("run", "") for s in jobs["test"]["steps"])
    assert "make test" in test_steps and "settings.ini" in test_steps, "the tag is checked against settings.ini's version"
    assert jobs["pages"]["needs"] == "test" and jobs["publish"]["needs"] == "test"
    pages = jobs["pages"]["steps"]
    assert any("make book" in s.get("run", "") for s in pages)
    assert any(s.get("uses", "").startswith("actions/upload-pages-artifact") and s["with"]["path"] == "_build/html"
               for s in pages)
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in pages)
    assert jobs["publish"]["permissions"] == {"id-token": "write"}, "trusted publishing: OIDC, no token"
    assert any(s.get("uses", "").startswith("pypa/gh-action-pypi-publish") for s in jobs["publish"]["steps"])
    assert not re.search(r"password|api[-_]?token|secrets\.", WORKFLOW.read_text(encoding="utf-8"), re.I)


def test_the_wheel_carries_the_version(tmp_path):
    "The wheel a release builds from this tree is named for settings.ini's version and holds the whole package."
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(ROOT)], check=True, cwd=tmp_path, capture_output=True)
    wheel = tmp_path / WHEEL_NAME
    assert wheel.exists(), list(tmp_path.iterdir())
    names = zipfile.ZipFile(wheel).namelist()
    modules = {p.name for p in (ROOT / "optbook").glob("*.py")}
    assert modules <= {n.split("/", 1)[1] for n in names if n.startswith("optbook/")}
    meta = zipfile.ZipFile(wheel).read(f"optbook-{VERSION}.dist-info/METADATA").decode()
    assert f"Version: {VERSION}" in meta and "Requires-Dist: torch" in meta


@pytest.mark.parametrize("path", [NOTEBOOKS[0], ROOT / "nbs" / "10_search.ipynb"], ids=lambda p: p.name)
def test_install_cell_with_unreachable_homes_explains_in_chinese(path, tmp_path):
    """Both homes unreachable (a closed local port stands in for each), optbook missing: the cell ends in a
    SystemExit whose message says what to do, pip's own error stays out of sight, and nothing is installed."""
    src = install_cell(path)
    src = src.replace(f"git+{GIT}@v{VERSION}", f"git+http://127.0.0.1:9/optbook.git@v{VERSION}")
    src = src.replace(WHEEL_URL, f"http://127.0.0.1:9/{WHEEL_NAME}")
    probe = tmp_path / "cell.py"
    probe.write_text(
        "import importlib.metadata, importlib.util\n"
        "real = importlib.metadata.version\n"
        "def version(name):\n"
        "    if name == 'optbook': raise importlib.metadata.PackageNotFoundError(name)\n"
        "    return real(name)\n"
        "importlib.metadata.version = version\n"
        + src, encoding="utf-8")
    env = {**os.environ, "PIP_TARGET": str(tmp_path / "target"), "PIP_RETRIES": "0", "PIP_TIMEOUT": "3",
           "PIP_NO_INDEX": "1", "GIT_TERMINAL_PROMPT": "0"}
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode != 0
    assert "没能安装 optbook" in done.stderr and WHEEL_URL.replace(SITE, "http://127.0.0.1:9").split("/")[-1] in done.stderr
    assert "Traceback" not in done.stderr and "ERROR:" not in done.stderr, done.stderr
    assert not (tmp_path / "target" / "optbook").exists()


@pytest.mark.book
def test_site_serves_the_wheel_it_was_built_with():
    wheel = ROOT / "_build" / "html" / "_static" / WHEEL_NAME
    assert wheel.exists(), "publish_wheel (_ext/optbook_book.py) copies the wheel into the site"
    meta = zipfile.ZipFile(wheel).read(f"optbook-{VERSION}.dist-info/METADATA").decode()
    assert f"Version: {VERSION}" in meta
    built = ROOT / "_build" / "colab" / "dist" / WHEEL_NAME
    assert built.read_bytes() == wheel.read_bytes(), "the site's wheel is the one the chapters ran against"
