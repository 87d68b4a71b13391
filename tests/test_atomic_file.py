"""A file the run rewrites (recipe.yaml at every start and resume) is never left cut short: a write that fails
(full disk, size limit) keeps the old file whole and leaves no hidden temporary beside it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import yaml

from llmasr.config_io import dump_yaml
from llmasr.recipe import Recipe


def test_a_failed_rewrite_keeps_the_old_recipe_whole(tmp_path):
    path = tmp_path / "recipe.yaml"
    old = Recipe()
    old.decode.num_beams = 3
    dump_yaml(old, path)
    before = path.read_bytes()
    assert len(before) > 2048
    # The same write again with another value, in a process that may write no file past 2 KiB (a disk filling up):
    # a plain write had left the first 2 KiB of the new text, which loads, its later keys at their defaults.
    code = textwrap.dedent(f"""
        import resource, signal
        from llmasr.config_io import dump_yaml
        from llmasr.recipe import Recipe
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
        new = Recipe()
        new.decode.num_beams = 5
        try:
            dump_yaml(new, {str(path)!r})
        except OSError as err:
            print("failed:", err)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "failed:" in out.stdout and "File too large" in out.stdout, out.stdout + out.stderr
    assert path.read_bytes() == before and yaml.safe_load(before)["decode"]["num_beams"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]  # no temporary left beside it


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    """The kernel reports a full disk at a write, flush or fsync with no file name; the error names the file the
    write was for (it had said only "[Errno 28] No space left on device"), and the old file stays."""
    import errno
    import os

    import pytest

    from llmasr.atomic_file import write_atomic

    path = tmp_path / "latest"
    path.write_text("update_00000001\n")

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as err:
        write_atomic(path, "update_00000002\n")
    assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(path))
    assert path.read_text() == "update_00000001\n" and sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
