"""A manifest's lazy index: offsets and duration hints, pickling into worker processes, one decompressed copy of a
gzip manifest for a node's ranks, and weighted mixing's epoch indices."""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import pickle
import time

import numpy as np
import pytest
from speech_fakes import cut, write_jsonl

from llmasr.data.manifest import Manifest
from llmasr.data.mixed_manifest import MixedManifest

pytestmark = pytest.mark.usefixtures("manifest_cache_dir")


def test_lazy_index_100k(tmp_path):
    n = 100_000
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            dur = {"duration": 1.0 + (i % 7)} if i % 2 == 0 else {}
            f.write(json.dumps({"key": f"utt{i:06d}", "source": f"wav/{i}.wav", "target": f"words {i}", **dur}) + "\n")
    m = Manifest.open(path)
    assert len(m) == n
    # The only per-record state: the int64 offset index (N+1) and the float32 durations (N).
    assert m._offsets.dtype == np.int64 and len(m._offsets) == n + 1
    assert m._linenos is None
    d = m.durations()
    assert d.dtype == np.float32 and d.shape == (n,)
    per_record = [
        k
        for k, v in vars(m).items()
        if isinstance(v, (list, dict, tuple)) or (isinstance(v, np.ndarray) and v.size >= n)
    ]
    assert sorted(per_record) == ["_durations", "_offsets"]
    assert m._offsets.nbytes + d.nbytes == (n + 1) * 8 + n * 4
    assert d[0] == 1.0 and np.isnan(d[1]) and d[12] == 1.0 + 12 % 7
    last = m[n - 1]
    assert last.key == f"utt{n - 1:06d}" and last.line == n and last.source == str(tmp_path / f"wav/{n - 1}.wav")
    assert m[50_000].target == "words 50000"


def _read_keys(args):
    m, idxs = args
    return [m[i].key for i in idxs]


def test_pickle_and_worker_processes(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl", [{"key": f"k{i}", "source": "a.wav", "target": f"t{i}"} for i in range(50)]
    )
    m = Manifest.open(path)
    assert m[3].key == "k3"  # opens the file handle in this process
    back = pickle.loads(pickle.dumps(m))
    assert back._fd is None and back[49].key == "k49" and len(back) == 50
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        chunks = pool.map(_read_keys, [(m, range(0, 25)), (m, range(25, 50))])
    assert chunks[0] + chunks[1] == [f"k{i}" for i in range(50)]
    assert m[10].key == "k10"  # the parent's handle is unaffected (pread never moves a shared offset)


def test_mixed_manifest_weights(tmp_path):
    a = Manifest.open(
        write_jsonl(
            tmp_path / "a.jsonl",
            [{"key": f"a{i}", "source": "x.wav", "target": "t", "duration": 1.0} for i in range(40)],
        )
    )
    b = Manifest.open(
        write_jsonl(tmp_path / "b.jsonl", [{"key": f"b{i}", "source": "x.wav", "target": "t"} for i in range(10)])
    )
    mix = MixedManifest([a, b], [1.0, 3.5])
    assert len(mix) == 50
    assert mix[39].key == "a39" and mix[40].key == "b0" and mix[49].key == "b9"
    d = mix.durations()
    assert d.shape == (50,) and (d[:40] == 1.0).all() and np.isnan(d[40:]).all()
    counts = np.zeros(50)
    epochs = 200
    for epoch in range(epochs):
        idx = mix.epoch_indices(epoch, seed=7)
        assert len(idx) == 40 + 35  # 1 pass over a, 3.5 passes over b
        counts += np.bincount(idx, minlength=50)
    assert (counts[:40] == epochs).all()
    np.testing.assert_allclose(counts[40:] / epochs, 3.5, atol=0.15)  # every b record ~3.5 times per epoch
    # deterministic for (seed, epoch), different across epochs and seeds
    np.testing.assert_array_equal(mix.epoch_indices(3, seed=7), mix.epoch_indices(3, seed=7))
    assert not np.array_equal(mix.epoch_indices(3, seed=7), mix.epoch_indices(4, seed=7))
    assert not np.array_equal(mix.epoch_indices(3, seed=7), mix.epoch_indices(3, seed=8))
    # a fraction of a line is a coin, not rounded away: weight 0.5 on one line visits it in about half the epochs,
    # and on three lines 1.5 of them an epoch
    one = Manifest.open(write_jsonl(tmp_path / "one.jsonl", [{"key": "o", "source": "x.wav", "target": "t"}]))
    half = MixedManifest([one, b], [0.5, 1.0])
    visits = [int((half.epoch_indices(e, seed=7) == 0).sum()) for e in range(400)]
    assert set(visits) == {0, 1} and 150 < sum(visits) < 250
    three = MixedManifest([Manifest.open(write_jsonl(tmp_path / "three.jsonl", [
        {"key": f"t{i}", "source": "x.wav", "target": "t"} for i in range(3)])), b], [0.5, 1.0])  # fmt: skip
    drawn = [int((three.epoch_indices(e, seed=7) < 3).sum()) for e in range(400)]
    assert set(drawn) == {1, 2} and abs(np.mean(drawn) - 1.5) < 0.1
    # subsampling: weight 0.25 visits a quarter of the records, each at most once
    sub = MixedManifest([a, b], [0.25, 1.0])
    idx = sub.epoch_indices(0, seed=1)
    assert (idx < 40).sum() == 10 and len(np.unique(idx[idx < 40])) == 10 and (idx >= 40).sum() == 10
    back = pickle.loads(pickle.dumps(mix))
    np.testing.assert_array_equal(back.epoch_indices(5, 7), mix.epoch_indices(5, 7))
    with pytest.raises(ValueError):
        MixedManifest([a, b], [1.0])
    with pytest.raises(ValueError):
        MixedManifest([a, b], [1.0, -1.0])
    np.testing.assert_array_equal(a.epoch_indices(0, 0), np.arange(40))


def test_duration_hints_match_full_parse(tmp_path):
    from llmasr.data.manifest import _line_duration, _record_duration

    records = [
        {"key": "a", "source": "x", "target": "t", "duration": 1.5},
        {"key": "a", "source": "x", "target": "t", "start": 1, "end": 2.5},
        {"key": "a", "source": "x", "target": "t", "source_len": 250},
        {"key": "a", "source": "x", "target": 'he said "duration": 5'},
        {"key": "a", "source": "x", "target": "t", "duration": "long"},
        {"key": "a", "source": "x", "target": "t", "duration": -1, "source_len": 100},
        {"key": "a", "source": "x", "target": "t", "start": 3, "end": 2},
        {"key": "a", "source": "x", "target": "t", "duration": None, "source_len": 100},
        {"key": "a", "source": "x", "target": "t", "meta": {"duration": 9}},
        cut("c", "x.wav", duration=2.25),
        {"key": "a", "source": "x", "target": "t", "start": 0.5, "source_len": 250},  # what start leaves
        cut("p", "x.wav", duration=2.0, sups=[{"id": "s", "start": 0.5, "duration": 1.0, "text": "a"}]),
    ]
    expected = [1.5, 1.5, 2.5, np.nan, np.nan, 1.0, np.nan, 1.0, np.nan, 2.25, 2.0, 1.0]
    for rec, want in zip(records, expected):
        raw = json.dumps(rec).encode()
        np.testing.assert_equal([_line_duration(raw), _record_duration(rec)], [want, want])
    m = Manifest.open(write_jsonl(tmp_path / "m.jsonl", records))
    np.testing.assert_array_equal(m.durations(), np.array(expected, dtype=np.float32))


def test_ranks_opening_a_gzip_manifest_at_once_decompress_it_once(tmp_path, monkeypatch):
    """The ranks of a node open a cuts.jsonl.gz together: one writes the decompressed copy, the others wait for it
    and read it (each wrote a copy of its own: a node's ranks times the manifest, on the disk of the cache)."""
    import threading

    import llmasr.data.gz_copies as copies_module

    with gzip.open(tmp_path / "m.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"key": f"u{i}", "source": "a.wav", "target": "x", "duration": 1.0}) + "\n"
                     for i in range(200))  # fmt: skip
    ranks, opened = 4, []
    together = threading.Barrier(ranks)
    real_open = copies_module.gzip.open

    def slow_open(*args, **kw):  # every rank gets to the cache before the first copy is in place
        opened.append(args[0])
        time.sleep(0.3)
        return real_open(*args, **kw)

    monkeypatch.setattr(copies_module.gzip, "open", slow_open)
    lengths = []

    def rank():
        together.wait()
        lengths.append(len(Manifest.open(tmp_path / "m.jsonl.gz")))

    threads = [threading.Thread(target=rank) for _ in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lengths == [200] * ranks and len(opened) == 1
    left = sorted(p.name for p in (tmp_path / "cache" / "manifests").iterdir())
    assert len([n for n in left if not n.startswith(".")]) == 1 and not [n for n in left if n.startswith(".tmp-")]


@pytest.mark.parametrize("blank", [False, True])
def test_a_file_line_leads_back_to_its_record(tmp_path, blank):
    """index_of_line inverts lineno (results.jsonl's `line` back to the record decoded), blank lines or none."""
    lines = [json.dumps({"key": f"u{i}", "source": f"{i}.wav", "target": "x"}) for i in range(4)]
    if blank:
        lines[2:2] = ["", "  "]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    m = Manifest.open(path)
    assert [m.index_of_line(m.lineno(i)) for i in range(len(m))] == list(range(4))
    assert [m.lineno(i) for i in range(len(m))] == ([1, 2, 5, 6] if blank else [1, 2, 3, 4])
    assert [m.index_of_line(n) for n in (0, 3, 7, 99)] == ([None, None, None, None] if blank else [None, 2, None, None])
