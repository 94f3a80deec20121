import configparser, pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Tests that read the built book (_build/html, _build/exec_times.json, the kernel's run records) carry the
# `book` marker: `make unit` runs the others (`pytest -m "not book"`), `make test` runs them after the build.
BOOK_MODULES = {"test_book_browser.py"}  # whole modules that need the built book; others mark their own tests


def pytest_configure(config):
    config.addinivalue_line("markers", "book: needs the built book (run after `make book`; `make unit` skips it)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in BOOK_MODULES:
            item.add_marker(pytest.mark.book)


def settings():
    "The [DEFAULT] section of settings.ini."
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return cfg["DEFAULT"]
