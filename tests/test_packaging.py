"""A wheel carries the DeepSpeed presets: `--deepspeed zero2` resolves from any install, not only a checkout."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llmasr.train.ds_config import PRESETS

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_wheel_ships_the_presets_and_resolves_them(tmp_path):
    src = tmp_path / "src"  # only what the build reads: nothing is written into the checkout
    shutil.copytree(REPO / "llmasr", src / "llmasr", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheels = tmp_path / "whl"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."]
    subprocess.run(build, cwd=src, check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("llmasr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"llmasr/ds_configs/{p}.json" for p in PRESETS} <= names
    assert "llmasr/convert/nano_finetune.yaml" in names  # what `llmasr convert funasr` writes its recipe from

    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    code = (
        "import llmasr\n"
        "from llmasr.train.ds_config import load_ds_config, preset_path\n"
        "print(llmasr.__file__)\n"
        "print(preset_path('zero3_offload'))\n"
        "assert load_ds_config('zero2')['zero_optimization']['stage'] == 2\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    module, preset = out.stdout.split()
    assert module.startswith(str(site)) and preset == str(site / "llmasr" / "ds_configs" / "zero3_offload.json")
