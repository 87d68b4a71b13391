"""`llmasr decode --subtitles srt|vtt`: each decoded line's subtitles in subtitles/ beside its manifest's results,
counted in wer.txt and wer.json; an earlier decode's go with its other files; keys that would write one file, and
word times that cannot be had, are refused before anything is decoded."""

from __future__ import annotations

import json
import logging
import threading

import pytest

import llmasr.commands.decode as decode_command
import llmasr.export.decode as decode_module
from llmasr.commands.decode import main
from llmasr.export.decode import DecodeError, DecodeOptions, decode_manifest
from llmasr.export.decode_subtitles import RowSubtitles
from llmasr.export.subtitles import subtitles
from llmasr.models.decoding import DecodeConfig
from llmasr.testing.run_dirs import TEXTS, write_corpus
from llmasr.testing.thread_ranks import run_ranks, thread_world


def common(exported_dir, out) -> list[str]:
    return ["--model", str(exported_dir), "--output", str(out), "--max-new-tokens", "4", "--num-workers", "0"]


def results(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def test_each_decoded_line_gets_its_subtitles_beside_its_results(exported_dir, tmp_path, capsys):
    manifest = write_corpus(tmp_path / "c", TEXTS[:3])
    out = tmp_path / "o"
    assert main([*common(exported_dir, out), "--data", str(manifest), "--subtitles", "srt"]) == 0
    rows = results(out)
    assert all("timestamps" in r for r in rows) and any(r["timestamps"] for r in rows)  # switched on for them
    assert sorted(p.name for p in (out / "subtitles").iterdir()) == [f"{r['key']}.srt" for r in rows]
    for r in rows:  # the transcript's cues, timed by its words
        assert (out / "subtitles" / f"{r['key']}.srt").read_text(encoding="utf-8") == subtitles(
            r, "srt", untimed_whole=True
        )
    said = json.loads((out / "wer.json").read_text(encoding="utf-8"))["subtitles"]
    cues = sum(text.count(" --> ") for text in (p.read_text(encoding="utf-8") for p in (out / "subtitles").iterdir()))
    assert said["format"] == "srt" and said["files"] == 3 and said["cues"] == cues
    printed = capsys.readouterr().out
    assert f"subtitles (srt): 3 files, {cues} cues, in {out / 'subtitles'}" in printed  # the closing summary
    assert f"subtitles (srt): 3 files, {cues} cues" in (out / "wer.txt").read_text(encoding="utf-8")


def test_a_redecode_leaves_no_earlier_subtitles(exported_dir, tmp_path, caplog):
    manifest = write_corpus(tmp_path / "c", TEXTS[:3])
    fewer = write_corpus(tmp_path / "d", TEXTS[:1])
    out = tmp_path / "o"
    assert main([*common(exported_dir, out), "--data", str(manifest), "--subtitles", "srt"]) == 0
    (out / "subtitles" / "notes.txt").write_text("mine\n", encoding="utf-8")  # a user's own file stays
    with caplog.at_level(logging.INFO, logger="llmasr.export.decode_folders"):
        assert main([*common(exported_dir, out), "--data", str(fewer), "--subtitles", "vtt"]) == 0
    assert "3 files of subtitles/" in caplog.text  # said as a count, not a path a key
    assert sorted(p.name for p in (out / "subtitles").iterdir()) == ["notes.txt", "test000.vtt"]
    (out / "subtitles" / "notes.txt").unlink()
    assert main([*common(exported_dir, out), "--data", str(fewer)]) == 0  # none asked: the earlier ones go
    assert (out / "results.jsonl").is_file() and not (out / "subtitles").exists()
    assert "subtitles" not in json.loads((out / "wer.json").read_text(encoding="utf-8"))


def test_several_manifests_each_get_their_subtitles_and_a_redecode_clears_them(exported_dir, tmp_path):
    dev = write_corpus(tmp_path / "a", TEXTS[:2], name="dev")
    test = write_corpus(tmp_path / "b", TEXTS[2:3], name="test")
    out = tmp_path / "o"
    both = [*common(exported_dir, out), "--data", str(dev), "--data", str(test), "--subtitles", "vtt"]
    assert main(both) == 0
    assert sorted(p.name for p in (out / "dev" / "subtitles").iterdir()) == ["dev000.vtt", "dev001.vtt"]
    assert sorted(p.name for p in (out / "test" / "subtitles").iterdir()) == ["test000.vtt"]
    assert "subtitles (vtt): 2 files" in (out / "wer.txt").read_text(encoding="utf-8")
    assert main(both) == 0  # its own subtitles/ is no file of another's: not refused
    assert main([*common(exported_dir, out), "--data", str(dev), "--data", str(test)]) == 0
    assert not (out / "dev" / "subtitles").exists() and not (out / "test" / "subtitles").exists()


def test_keys_that_would_write_one_file_are_refused_before_the_model_loads(exported_dir, tmp_path, capsys,
                                                                           monkeypatch):  # fmt: skip
    manifest = write_corpus(tmp_path / "c", TEXTS[:3])
    lines = manifest.read_text(encoding="utf-8").splitlines()
    keyed = [json.dumps({**json.loads(line), "key": key}) for line, key in zip(lines, ["a/x", "b", "a_x"])]
    manifest.write_text("\n".join(keyed) + "\n", encoding="utf-8")
    out = tmp_path / "o"
    out.mkdir()
    (out / "hyp.txt").write_text("an earlier decode's\n", encoding="utf-8")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(decode_command, "load_decode_model", no_load)
    assert main([*common(exported_dir, out), "--data", str(manifest), "--subtitles", "srt"]) == 2
    err = capsys.readouterr().err
    assert f"llmasr decode: error: --subtitles: {manifest}: keys 'a/x' (line 1) and 'a_x' (line 3)" in err
    assert "would both be subtitles/a_x.srt" in err
    assert (out / "hyp.txt").is_file()  # refused before anything was cleared
    twice = [json.dumps({**json.loads(line), "key": "same"}) for line in lines[:2]]
    manifest.write_text("\n".join(twice) + "\n", encoding="utf-8")
    assert main([*common(exported_dir, out), "--data", str(manifest), "--subtitles", "vtt"]) == 2
    assert "key 'same' is on lines 1 and 2, whose subtitles would both be subtitles/same.vtt" in capsys.readouterr().err
    long = [json.dumps({**json.loads(lines[0]), "key": "k" * 300})]
    manifest.write_text("\n".join(long) + "\n", encoding="utf-8")
    assert main([*common(exported_dir, out), "--data", str(manifest), "--subtitles", "srt"]) == 2
    assert f"{manifest}:1: key 'kkk" in capsys.readouterr().err


def test_word_times_that_cannot_be_had_are_refused_naming_subtitles(exported_dir, tmp_path, capsys, monkeypatch):
    manifest = write_corpus(tmp_path / "c", TEXTS[:1])
    args = [*common(exported_dir, tmp_path / "o"), "--data", str(manifest), "--subtitles", "srt"]
    assert main([*args, "--no-timestamps"]) == 2
    assert "llmasr decode: error: --subtitles: cues are timed by the words' times, which --no-timestamps" in (
        capsys.readouterr().err
    )
    monkeypatch.setattr(decode_module, "_ctc_head", lambda model: (False, False))  # a model trained without one
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "llmasr decode: error: --subtitles: decode.timestamps: word times come from the CTC head" in err
    assert main([*args, "--timestamps"]) == 2  # asked for as well: the subtitles are still why they are needed
    assert "llmasr decode: error: --subtitles: decode.timestamps: word times come from" in capsys.readouterr().err


def test_a_manifest_folder_that_is_anothers_subtitles_folder_is_refused(exported_dir, tmp_path, capsys):
    m = write_corpus(tmp_path / "d", TEXTS[:1], name="m")
    nested = write_corpus(tmp_path / "d" / "m", TEXTS[:1], name="subtitles")
    other = write_corpus(tmp_path / "q", TEXTS[:1], name="subtitles")
    out = tmp_path / "o"
    data = ["--data", str(m), "--data", str(nested), "--data", str(other)]
    assert main([*common(exported_dir, out), *data, "--subtitles", "srt"]) == 2
    err = capsys.readouterr().err
    assert f"--subtitles: {out / 'm' / 'subtitles'}, the folder of --data {nested}, is also where the subtitles of " \
           f"--data {m} go" in err  # fmt: skip


def test_the_library_refuses_what_subtitles_cannot_have_and_names_a_file_it_cannot_write(model, tmp_path,
                                                                                          monkeypatch):  # fmt: skip
    manifest = write_corpus(tmp_path / "c", TEXTS[:2])
    opts = DecodeOptions(num_workers=0, subtitles="srt")
    with pytest.raises(DecodeError, match="subtitles srt: cues are timed by the words' times"):
        decode_manifest(model, manifest, tmp_path / "o", DecodeConfig(max_new_tokens=2), opts)
    clashing = tmp_path / "clash.jsonl"
    lines = manifest.read_text(encoding="utf-8").splitlines()
    keyed = [json.dumps({**json.loads(line), "source": str(manifest.parent / json.loads(line)["source"]), "key": key})
             for line, key in zip(lines, ["s/1", "s_1"])]  # fmt: skip
    clashing.write_text("\n".join(keyed) + "\n", encoding="utf-8")
    with monkeypatch.context() as m:  # refused before anything is decoded
        m.setattr(decode_module, "transcribe_loader", lambda *a, **k: pytest.fail("decoded"))
        with pytest.raises(DecodeError, match=r"keys 's/1' \(line 1\) and 's_1' \(line 2\), whose subtitles would"):
            decode_manifest(model, clashing, tmp_path / "o", DecodeConfig(max_new_tokens=2, timestamps=True), opts)
    out = tmp_path / "p"
    (out / "subtitles" / "test000.srt").mkdir(parents=True)  # as a full disk would fail its write
    with pytest.raises(DecodeError, match=r"subtitles: .*test000.srt.* \(the decode's other files are written\)"):
        decode_manifest(model, manifest, out, DecodeConfig(max_new_tokens=2, timestamps=True), opts)
    assert len(results(out)) == 2 and json.loads((out / "wer.json").read_text())["subtitles"]["files"] == 2


def test_the_library_refuses_subtitles_before_it_clears_an_earlier_decode(model, tmp_path):
    """decode_manifest removed an earlier decode's files and only then refused subtitles it could not write (no word
    times, keys that would write one file): the earlier results were lost to a decode that never began."""
    manifest = write_corpus(tmp_path / "c", TEXTS[:2])
    out = tmp_path / "o"
    decode_manifest(model, manifest, out, DecodeConfig(max_new_tokens=2), DecodeOptions(num_workers=0))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "results.jsonl" in before
    opts = DecodeOptions(num_workers=0, subtitles="srt")
    with pytest.raises(DecodeError, match="subtitles srt: cues are timed by the words' times"):
        decode_manifest(model, manifest, out, DecodeConfig(max_new_tokens=2), opts)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    lines = manifest.read_text(encoding="utf-8").splitlines()
    clashing = manifest.parent / "clash.jsonl"  # beside it: its lines' audio paths hold
    clashing.write_text("".join(json.dumps({**json.loads(line), "key": key}) + "\n"
                                for line, key in zip(lines, ["s/1", "s_1"])), encoding="utf-8")  # fmt: skip
    with pytest.raises(DecodeError, match=r"keys 's/1' \(line 1\) and 's_1' \(line 2\)"):
        decode_manifest(model, clashing, out, DecodeConfig(max_new_tokens=2, timestamps=True), opts)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_on_two_ranks_rank_0_alone_writes_every_line_s_subtitles(exported_dir, tmp_path, monkeypatch):
    """Each rank decodes its share of the lines; rank 0 writes the subtitles of all of them, the files one process
    writes, and rank 1 none. The ranks are threads that gather for real."""
    manifest = write_corpus(tmp_path / "c", TEXTS[:4])
    args = ["--data", str(manifest), "--subtitles", "vtt", "--device", "cpu", "--batch-seconds", "0.01"]  # 1 a batch
    assert main([*common(exported_dir, tmp_path / "one"), *args]) == 0
    mine, writers, write = threading.local(), [], RowSubtitles.write
    monkeypatch.setattr(decode_command.DecodeWorld, "from_env", classmethod(lambda cls: mine.world))
    monkeypatch.setattr(RowSubtitles, "write", lambda self: (writers.append(mine.world.rank), write(self)))

    def rank(r, gather):
        mine.world = thread_world(r, 2, gather)
        return main([*common(exported_dir, tmp_path / "two"), *args])

    root, level = logging.getLogger(), logging.getLogger().level
    try:
        assert run_ranks(2, rank, timeout=120) == [0, 0]
    finally:
        root.setLevel(level)  # a rank > 0 quiets the root logger
    assert writers == [0]
    shares = json.loads((tmp_path / "two" / "wer.json").read_text(encoding="utf-8"))["rank_items"]
    assert len(shares) == 2 and min(shares) > 0  # rank 1 decoded lines whose subtitles rank 0 wrote

    def files(out) -> dict[str, str]:
        return {p.name: p.read_text(encoding="utf-8") for p in (out / "subtitles").iterdir()}

    assert files(tmp_path / "two") == files(tmp_path / "one") and len(files(tmp_path / "one")) == 4
