import configparser, pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def settings():
    "The [DEFAULT] section of settings.ini."
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return cfg["DEFAULT"]
