"""scripts/fuzz_inputs.py as a regression test: every malformed manifest, audio file, Kaldi folder, hotword file,
recipe and am.mvn it makes is refused or counted bad with its file and line named, none dropped uncounted, no raw
error reaching the user (the script exits 1 naming any variant that is not)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_malformed_input_is_named_and_counted(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_inputs.py"), "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    tail = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    summary = out.read_text(encoding="utf-8")
    assert "\n0 fault(s) of " in summary, tail
    rows = int(summary.split("\n0 fault(s) of ")[1].split()[0])
    assert rows > 400, rows  # every kind of input ran
