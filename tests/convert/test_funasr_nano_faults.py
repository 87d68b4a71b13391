"""`llmasr convert funasr` on Fun-ASR-Nano directories that are incomplete or say more than the plain release: each
is converted as FunASR runs it, or refused naming the file, the key and both sides."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmasr.cli import main as cli_main
from llmasr.testing.tiny_nano import LLM_DIR, write_nano_dir


def edit_config(src: Path, edit) -> None:
    config = yaml.safe_load((src / "config.yaml").read_text(encoding="utf-8"))
    edit(config)
    (src / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")


def test_corrupt_llm_config_json_is_named(tmp_path, capsys):
    src = write_nano_dir(tmp_path / "src")
    (src / LLM_DIR / "config.json").write_text("{not json")
    assert cli_main(["convert", "funasr", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{src / LLM_DIR / 'config.json'}: not a readable JSON file" in err and "JSONDecodeError" not in err
    assert not (tmp_path / "out").exists()
