"""What the suite writes stays in its own temporary folders: two xdist workers, or a second checkout's run, share
nothing of the user's home."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import llmasr
from llmasr.data.gz_copies import cache_folder
from llmasr.data.manifest import Manifest
from llmasr.testing.launcher import launcher_env


def test_a_gz_manifest_read_anywhere_in_the_suite_is_decompressed_into_the_runs_own_cache(tmp_path_factory):
    """tests/export's pseudo-label test read a .gz manifest without tests/data's cache fixture: its copy went to
    ~/.cache/llmasr/manifests, one more on every run of every checkout."""
    src = tmp_path_factory.mktemp("gz") / "m.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.write('{"key": "a", "source": "a.wav", "target": "one"}\n')
    assert len(Manifest.open(src)) == 1
    cache = cache_folder()  # where llmasr puts the copies, by the rule it uses
    assert cache.is_relative_to(tmp_path_factory.getbasetemp()), cache
    # other tests of this worker may have left theirs there too (tests/export's pseudo-label test among them)
    assert "m" in [p.name.split(".")[0] for p in cache.iterdir() if not p.name.startswith(".")]


def test_ranks_the_suite_launches_import_this_checkout_first(tmp_path, monkeypatch):
    """A second checkout tested with the first one's editable venv (or with it on PYTHONPATH): ranks started under the
    deepspeed launcher imported that llmasr, not the code under test, unless this checkout leads PYTHONPATH."""
    other = tmp_path / "other-checkout"
    (other / "llmasr").mkdir(parents=True)
    (other / "llmasr" / "__init__.py").write_text("raise SystemExit('the other checkout')\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(other))
    code = "import llmasr; print(llmasr.__file__)"
    out = subprocess.run([sys.executable, "-c", code], env=launcher_env(), cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert Path(out.stdout.strip()).resolve() == Path(llmasr.__file__).resolve()
    assert str(other) in launcher_env()["PYTHONPATH"].split(os.pathsep)  # the user's own entries stay, after it
