"""What the suite writes stays in its own temporary folders: two xdist workers, or a second checkout's run, share
nothing of the user's home."""

import gzip

from llmasr.data.gz_copies import _cache_dir
from llmasr.data.manifest import Manifest


def test_a_gz_manifest_read_anywhere_in_the_suite_is_decompressed_into_the_runs_own_cache(tmp_path_factory):
    """tests/export's pseudo-label test read a .gz manifest without tests/data's cache fixture: its copy went to
    ~/.cache/llmasr/manifests, one more on every run of every checkout."""
    src = tmp_path_factory.mktemp("gz") / "m.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.write('{"key": "a", "source": "a.wav", "target": "one"}\n')
    assert len(Manifest.open(src)) == 1
    cache = _cache_dir()  # where llmasr puts the copies, by the rule it uses
    assert cache.is_relative_to(tmp_path_factory.getbasetemp()), cache
    # other tests of this worker may have left theirs there too (tests/export's pseudo-label test among them)
    assert "m" in [p.name.split(".")[0] for p in cache.iterdir() if not p.name.startswith(".")]
