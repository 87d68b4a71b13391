import json
import logging

import numpy as np
import pytest
import yaml
from speech_fakes import FakePromptBuilder, good_corpus, write_manifest, write_wav

from llmasr.commands.data_check import main
from llmasr.config_io import from_dict
from llmasr.data.bad_data import TooMuchBadData
from llmasr.data.check import check_data
from llmasr.data.check_report import format_report, histogram
from llmasr.data.config import DataConfig
from llmasr.data.frontend import FrontendConfig
from llmasr.data.loader import build_dataloader
from llmasr.recipe import load_recipe


@pytest.fixture
def manifest(tmp_path):
    path = good_corpus(tmp_path, 30)
    lines = path.read_text().splitlines()
    write_wav(tmp_path / "long.wav", 3.0)
    (tmp_path / "corrupt.wav").write_bytes(b"not audio at all" * 10)
    lines += [
        '{"key": "gone", "source": "gone.wav", "target": "hello"}',
        '{"key": "corrupt", "source": "corrupt.wav", "target": "hello"}',
        '{"key": "notext", "source": "long.wav", "target": "  "}',
        "{not json",
        '{"key": "late", "source": "long.wav", "target": "hi", "start": 4.0, "end": 5.0}',
        '{"key": "liar", "source": "long.wav", "target": "hi", "duration": 9.0}',
        '{"key": "toolong", "source": "long.wav", "target": "hi", "duration": 3.0}',
        '{"key": "vad", "source": "vad.wav", "target": "hi"}',  # 10 ms: too short for one feature frame
    ]
    write_wav(tmp_path / "vad.wav", 0.01)
    return write_manifest(tmp_path / "m.jsonl", lines)


def data_cfg(**batching):
    return from_dict(DataConfig, {"batching": {"max_seconds": 6.0, "max_duration": 2.5, **batching}}, "data")


def test_report_counts_and_locations(manifest):
    report = check_data([manifest], data_cfg(), FrontendConfig(), world_size=2)
    assert report.num_lines == 38
    assert report.num_bad == 7
    assert report.bad_by_reason == {
        "audio file not found": 1,
        "unreadable or corrupt audio": 1,
        "empty target": 1,
        "malformed line": 1,
        "segment outside the audio": 1,
        "manifest duration wrong": 1,
        "audio too short": 1,
    }
    lines = {b["line"] for b in report.bad}
    assert lines == {31, 32, 33, 34, 35, 36, 38}
    assert "160 samples = 0.010 s; the frontend needs at least 257" in report.bad[-1]["reason"]
    # liar says 9 s of 3 s of audio: loading refuses it, as training's batches would budget it wrongly
    assert report.bad[5]["reason"].startswith("manifest duration 9.000 s, but its audio holds 3.000 s")
    assert report.duration_mismatches == []
    assert report.batching["filtered"] == {"too_long": 1}  # toolong is 3 s > max_duration 2.5
    assert (
        report.batching["num_batches_per_rank"] * 2
        == report.batching["num_batches_global"] + report.batching["num_padding_batches"]
    )
    assert not report.ok  # 6 / 38 bad > 1%
    d = report.durations[~np.isnan(report.durations)]
    assert report.total_hours == pytest.approx(d.sum() / 3600)


def test_format_report(manifest):
    text = format_report(check_data([manifest], data_cfg(), FrontendConfig()))
    for needle in (
        "duration histogram",
        "bad lines by reason",
        "audio file not found: 1",
        f"{manifest}:31",
        "gone.wav",
        "batches per rank",
        "mean batch size",
        "padding efficiency",
        "skipped by filters: too_long 1",
        "TOO MUCH BAD DATA",
        "total:",
        "liar",
    ):
        assert needle in text, needle
    assert "|" in histogram(np.array([1.0, 2.0, 2.5]))[0]
    # What max_duration skips is named, with its lines: training skips them whole, never cut
    report = check_data([manifest], data_cfg(), FrontendConfig())
    assert [t["duration"] for t in report.too_long] == pytest.approx([3.0], abs=0.01)
    assert "longer than data.batching.max_duration = 2.5 s: 1 lines, skipped by training (not truncated" in text
    for t in report.too_long:
        assert f"  {manifest}:{t['line']} ({t['duration']:.2f} s)" in text
    assert "truncated to max_duration" not in text
    # cut to 2.5 s, liar's 9 s and its 3 s of audio are both 2.5 s: training takes it
    cut = format_report(check_data([manifest], data_cfg(truncate_to_max=True), FrontendConfig()))
    assert "truncated to max_duration (2.5 s; data.batching.truncate_to_max, the transcript is kept whole): 2" in cut
    assert "longer than data.batching.max_duration" not in cut


def test_main_exit_codes(manifest, tmp_path, capsys):
    assert main([str(manifest), "--max-seconds", "6", "--max-duration", "2.5", "--world-size", "2"]) == 1
    out = capsys.readouterr().out
    assert "world size 2" in out and "max_seconds=6" in out
    clean = good_corpus(tmp_path, 5, name="clean")
    assert main([str(clean), "--max-frames", "300", "--lfr-n", "6"]) == 0
    assert "max_frames=300" in capsys.readouterr().out


def _recipe(tmp_path, data: dict, ctc_vocab=None) -> str:
    """A recipe of `data` over the tiny frontend; `ctc_vocab`: a CTC head (weight 0.3) spelling that vocabulary."""
    model = {"encoder": {"frontend": {"lfr_m": 7, "lfr_n": 6}}}
    if ctc_vocab is not None:
        model["ctc"] = {"weight": 0.3, "vocab": str(ctc_vocab)}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": data, "model": model}))
    return str(recipe)


def test_main_reads_recipe(manifest, tmp_path, capsys):
    recipe = _recipe(tmp_path, {"train": [str(manifest)], "max_bad_fraction": 0.5, "batching": {"max_seconds": 10}})
    assert main(["--recipe", recipe]) == 0
    assert "max_seconds=10" in capsys.readouterr().out


def test_a_recipe_s_noise_list_is_checked_as_training_checks_it(manifest, tmp_path, capsys):
    """Training refuses a noise list naming a file that is not there at start-up; data check --recipe, run to vet a
    run's data before it is launched, had passed it."""
    write_wav(tmp_path / "noise.wav", 1.0)
    noise = write_manifest(tmp_path / "noise.jsonl", ['{"source": "noise.wav"}', '{"source": "gone_noise.wav"}'])
    recipe = _recipe(tmp_path, {
        "train": [str(manifest)], "max_bad_fraction": 0.5, "batching": {"max_seconds": 10},
        "augment": {"noise": {"enable": True, "manifest": str(noise)}},
    })  # fmt: skip
    assert main(["--recipe", recipe]) == 2
    out = capsys.readouterr().out
    assert "error: data.augment.noise.manifest: " in out and "noise.jsonl:2: not found: " in out
    assert "gone_noise.wav" in out and "ERROR: files that cannot be read" in out
    assert main(["--recipe", recipe, "--valid", f"data.valid=[{manifest}]"]) == 0  # validation mixes in none


def test_a_recipe_takes_overrides_and_needs_no_cmvn_file_yet(manifest, tmp_path, capsys, monkeypatch):
    """`key=value` arguments had been read as manifest paths, and a recipe naming the am.mvn `llmasr data cmvn` is
    about to write was refused for the missing file, which counting frames never reads."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"train": [str(manifest)], "max_bad_fraction": 0.5, "batching": {"max_seconds": 10}},
        "model": {"encoder": {"frontend": {"lfr_m": 7, "lfr_n": 6, "cmvn_file": str(tmp_path / "am.mvn")}}},
    }))  # fmt: skip
    assert main(["--recipe", str(recipe), "data.batching.max_seconds=7"]) == 0
    assert "max_seconds=7" in capsys.readouterr().out
    for argv in (["data.batching.max_seconds=7", str(manifest)], [str(manifest), "--world-size", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "data.batching.max_seconds=7: a recipe override needs --recipe" in err and "must be at least 1" in err
    hive = tmp_path / "lang=en"  # a partitioned folder's manifest is a manifest, not an override
    hive.mkdir()
    (hive / "train.jsonl").write_bytes(manifest.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(["lang=en/train.jsonl", "--max-seconds", "10"]) in (0, 1)
    assert "lang=en/train.jsonl" in capsys.readouterr().out


def test_unopenable_manifest_is_an_error(tmp_path, capsys):
    """Bad input exits 2, as every command's does (it exited 1, the status of data that has faults); the report
    still says what it found in the manifests it could open."""
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    out = capsys.readouterr().out
    assert "cannot open manifest" in out and "result: ERROR" in out


def test_repeated_keys_are_named_with_their_first_line(tmp_path):
    """Two manifests of one corpus keyed alike (or a ChatML line's key taken from an audio file transcribed twice):
    training takes both lines, and the report names each repeat with where the key first stood."""
    a = good_corpus(tmp_path / "a", 3)
    b = good_corpus(tmp_path / "b", 2)
    report = check_data([a, b], data_cfg(), FrontendConfig())
    assert report.ok and report.num_bad == 0
    keys = [r["key"] for r in report.repeated_keys]
    assert len(keys) == 2 and all(r["manifest"] == str(b) for r in report.repeated_keys)
    assert report.repeated_keys[0]["first"] == f"{a}:1" and report.repeated_keys[0]["line"] == 1
    text = format_report(report)
    assert "## keys that repeat an earlier line's (2;" in text
    assert f"  {b}:2 key={keys[1]}: first at {a}:2" in text
    assert "keys that repeat" not in format_report(check_data([a], data_cfg(), FrontendConfig()))


def test_lines_are_held_a_chunk_at_a_time(tmp_path, monkeypatch):
    """A manifest of millions of lines is checked in chunks: the parsed lines of one chunk are alive at a time (all
    of them were: gigabytes at a million lines), and the report is the same."""
    import weakref

    import llmasr.data.check as check

    path = good_corpus(tmp_path, 30)
    whole = check_data([path, path], data_cfg(), FrontendConfig())
    alive, most = [], [0]
    parse, probe = check._parse_line, check._probe_line

    def parse_line(m, i, *args):
        out = parse(m, i, *args)
        alive.append(weakref.ref(out[0]))
        return out

    def probe_line(utt, *args):
        most[0] = max(most[0], sum(r() is not None for r in alive))
        return probe(utt, *args)

    monkeypatch.setattr(check, "CHUNK_LINES", 4, raising=False)
    monkeypatch.setattr(check, "_parse_line", parse_line)
    monkeypatch.setattr(check, "_probe_line", probe_line)
    chunked = check_data([path, path], data_cfg(), FrontendConfig(), threads=1)
    assert len(alive) == 60 and most[0] <= 4 + 1  # a chunk, and the line in hand of the one before
    assert chunked.num_lines == 60 and chunked.repeated_keys == [] == whole.repeated_keys  # listed twice: no repeat
    np.testing.assert_array_equal(chunked.durations, whole.durations)
    assert chunked.batching == whole.batching and chunked.ok


def test_transcripts_a_ctc_vocabulary_cannot_spell_are_bad_lines(tmp_path, capsys):
    """With a recipe whose CTC head spells a token list, a transcript holding a character outside it is a bad line,
    as training's start-up screen finds it."""
    path = good_corpus(tmp_path, 6)  # words of a-z
    lines = path.read_text().splitlines() + ['{"key": "naive", "source": "wav_train/u0.wav", "target": "naïve"}']
    m = write_manifest(tmp_path / "m.jsonl", lines)
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(["<blank>", " ", *"abcdefghijklmnopqrstuvwxyz"]))  # no <unk>
    recipe = _recipe(
        tmp_path, {"train": [str(m)], "max_bad_fraction": 0.5, "batching": {"max_seconds": 10}}, ctc_vocab=tokens
    )
    assert main(["--recipe", recipe]) == 0
    out = capsys.readouterr().out
    assert f"{m}:7 key=naive: target not encodable by the CTC vocabulary" in out and "bad: 1 " in out
    assert main([str(m), "--max-seconds", "10"]) == 0 and "bad: 0 " in capsys.readouterr().out  # no recipe, no head


def test_what_a_ctc_vocabulary_spells_unk_gets_a_section(tmp_path, capsys):
    """A token list with <unk>: a character outside it is no bad line, but `llmasr data check` names it, with its
    lines and the first, as train.log does."""
    path = good_corpus(tmp_path, 6)
    extra = [f'{{"key": "n{i}", "source": "wav_train/u0.wav", "target": "naïve"}}' for i in range(2)]
    m = write_manifest(tmp_path / "m.jsonl", path.read_text().splitlines() + extra)
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(["<blank>", "<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"]))
    recipe = _recipe(tmp_path, {"train": [str(m)], "batching": {"max_seconds": 10}}, ctc_vocab=tokens)
    assert main(["--recipe", recipe]) == 0
    out = capsys.readouterr().out
    assert "bad: 0 " in out and "## spelled <unk> by the CTC vocabulary\n" in out
    assert "has no token for 1 characters or words of the transcripts and spells them <unk>" in out
    assert f"'ï' in 2 lines (first: {m}:7)" in out


def test_a_vocabulary_cased_otherwise_than_the_transcripts_is_said_to_be(tmp_path, capsys):
    """Units cased otherwise than the transcripts (upper-case units, lower-case text: every letter <unk>): the report
    had named the letters alone, with no word that the vocabulary holds each in the other case; without <unk> the
    bad line says so too."""
    path = good_corpus(tmp_path, 6)
    extra = [f'{{"key": "c{i}", "source": "wav_train/u0.wav", "target": "fix"}}' for i in range(2)]
    m = write_manifest(tmp_path / "m.jsonl", path.read_text().splitlines() + extra)
    tokens = tmp_path / "units.txt"
    tokens.write_text("\n".join(["<blank>", "<unk>", "<space>", *"abcdefghjklmnopqrstuvwyz", "I", "X"]) + "\n")
    recipe = _recipe(
        tmp_path, {"train": [str(m)], "max_bad_fraction": 0.5, "batching": {"max_seconds": 10}}, ctc_vocab=tokens
    )
    assert main(["--recipe", recipe]) == 0
    out = capsys.readouterr().out
    assert f"'x' in 2 lines (first: {m}:7; the vocabulary has 'X')" in out
    assert f"'i' in 2 lines (first: {m}:7; the vocabulary has 'I')" in out
    assert "2 of them the vocabulary has in another case: write the transcripts in its case" in out
    tokens.write_text("\n".join(["<blank>", "<space>", *"abcdefghijklmnopqrstuvwxyz"]) + "\n")
    m.write_text(m.read_text().replace('"fix"', '"fiX"'))
    assert main(["--recipe", recipe]) == 0
    assert (
        "character 'X' (in 'fiX') is not in the token list (the list has 'x': write the transcripts in its case)"
        in (capsys.readouterr().out)
    )


def test_the_preview_is_of_the_batches_training_and_validation_make(tmp_path, capsys):
    """Weights mix the training manifests as training does (weight 3: three passes), and --valid previews
    validation's batches: its valid_max_utts subset, no augmentation lengths. Both had been training's plan of
    each line once."""
    a, b = good_corpus(tmp_path / "a", 10), good_corpus(tmp_path / "b", 10, seed=1)
    recipe = _recipe(tmp_path, {
        "train": [{"path": str(a)}, {"path": str(b), "weight": 3.0}], "valid": [str(a)], "valid_max_utts": 4,
        "batching": {"max_seconds": 4.0}, "num_workers": 0,
        "augment": {"silence": {"enable": True, "prob": 1.0, "lead": [0.5, 0.5]}},
    })  # fmt: skip
    r = load_recipe(recipe)
    report = check_data(r.data.train_manifests, r.data, FrontendConfig(lfr_m=7, lfr_n=6), train=True)
    assert report.num_lines == 20 and report.batching["num_items"] == 40  # 10 + 3 x 10 visits
    fe = FrontendConfig(lfr_m=7, lfr_n=6)
    _, trained = build_dataloader(r.data, r.data.train, fe, prompt_builder=FakePromptBuilder(), train=True)
    assert report.batching["num_batches_global"] == trained.stats(0)["num_batches_global"]
    valid = check_data(r.data.valid_manifests, r.data, fe, train=False)
    _, validated = build_dataloader(r.data, r.data.valid, fe, prompt_builder=FakePromptBuilder(), train=False)
    assert (
        valid.batching["num_items"] == 4 and valid.batching["mean_batch_size"] == validated.stats(0)["mean_batch_size"]
    )
    assert main(["--recipe", recipe, "--valid"]) == 0
    assert f"batches per rank: {len(validated)} " in capsys.readouterr().out


def test_lines_without_a_duration_are_batched_at_the_duration_training_holds(tmp_path, capsys):
    """Five 0.6 s clips without a `duration` and a 3 s budget: training holds their probed durations as float32
    (0.60000002: five pass 3 s, a batch of four and one of one), the preview had kept the float64 0.6 and batched all
    five together, one batch where training makes two."""
    for i in range(5):
        write_wav(tmp_path / f"c{i}.wav", 0.6, seed=i)
    m = write_manifest(tmp_path / "m.jsonl", [{"key": f"c{i}", "source": f"c{i}.wav", "target": "hello"}
                                               for i in range(5)])  # fmt: skip
    recipe = _recipe(tmp_path, {"train": [str(m)], "batching": {"max_seconds": 3.0}, "num_workers": 0})
    r = load_recipe(recipe)
    fe = FrontendConfig(lfr_m=7, lfr_n=6)
    _, trained = build_dataloader(r.data, r.data.train, fe, prompt_builder=FakePromptBuilder(), train=True)
    assert sorted(len(b) for b in trained.batches(0)) == [1, 4]
    report = check_data(r.data.train_manifests, r.data, fe, train=True)
    assert report.batching["num_batches_global"] == 2
    assert main(["--recipe", recipe]) == 0 and "batches per rank: 2 " in capsys.readouterr().out


def test_the_report_says_what_the_mix_s_first_epoch_trains_of_each_manifest(tmp_path, capsys):
    """The report had given the mix's visits as one count and its hours per line, never each manifest's share, and
    a weighted manifest whose every line max_duration skips showed only as lines "longer than max_duration"."""
    a = good_corpus(tmp_path / "a", 10)  # 0.3-2.0 s
    cut = float(max(json.loads(line)["duration"] for line in a.read_text().splitlines())) + 1e-3
    (tmp_path / "b").mkdir()
    for i in range(4):
        write_wav(tmp_path / "b" / f"long{i}.wav", 3.0, seed=i)
    b = write_manifest(tmp_path / "b" / "long.jsonl", [json.dumps({"key": f"long{i}", "source": f"long{i}.wav",
                                                                   "target": "hello", "duration": 3.0})
                                                       for i in range(4)])  # fmt: skip
    recipe = _recipe(tmp_path, {"train": [{"path": str(a)}, {"path": str(b), "weight": 3.0}],
                                "batching": {"max_seconds": 4.0, "max_duration": cut}, "num_workers": 0})  # fmt: skip
    r = load_recipe(recipe)
    _, trained = build_dataloader(r.data, r.data.train, FrontendConfig(lfr_m=7, lfr_n=6),
                                  prompt_builder=FakePromptBuilder(), train=True)  # fmt: skip
    seconds = sum(float(trained.durations[k % 14]) for batch in trained.batches(0) for k in batch)
    assert main(["--recipe", recipe]) == 0
    out = capsys.readouterr().out
    assert "the weighted mix's first epoch, as training batches it:\n" in out
    assert f"  {a}: weight 1, 10 lines: 10 visits (1 pass), {seconds:.1f} s\n" in out
    assert f"  {b}: weight 3, 4 lines: 0 visits (0 passes), 0.0 s\n  total: 10 visits, {seconds:.1f} s\n" in out
    assert f"warning: {b}: every epoch skips all 4 of its lines (4 too_long): whatever its weight (3)" in out


def test_the_lines_with_a_prompt_of_their_own_are_named_as_train_log_names_them(tmp_path, capsys, caplog):
    """A code-switched corpus whose lines carry `prompt: 转写中英混合语音：` in a mix with one on model.prompt's:
    train.log and `llmasr check` named them, `llmasr data check` said nothing of them."""
    a = good_corpus(tmp_path / "a", 4)
    recs = [json.loads(line) for line in good_corpus(tmp_path / "b", 5).read_text().splitlines()]
    recs[1]["prompt"] = recs[3]["task"] = "转写中英混合语音："
    b = write_manifest(tmp_path / "b" / "cs.jsonl", [json.dumps(r, ensure_ascii=False) for r in recs])
    recipe = _recipe(tmp_path, {"train": [{"path": str(a)}, {"path": str(b), "weight": 2.0}], "num_workers": 0})
    r = load_recipe(recipe)
    with caplog.at_level(logging.INFO, logger="llmasr.data"):
        build_dataloader(r.data, r.data.train, FrontendConfig(lfr_m=7, lfr_n=6), prompt_builder=FakePromptBuilder(),
                         train=True)  # fmt: skip
    logged = [m.getMessage().removeprefix("train: ") for m in caplog.records if "of their own" in m.getMessage()]
    assert main(["--recipe", recipe]) == 0
    out = capsys.readouterr().out
    said = f"{b}: 2 of its lines (first: {b}:2 '转写中英混合语音：')"
    assert f"\n## prompts\nlines with a prompt of their own, trained on it instead of model.prompt's: {said} (a " in out
    assert len(logged) == 1 and f"\n{logged[0]}\n" in out  # train.log's words
    assert main([str(a), "--max-seconds", "10"]) == 0 and "## prompts" not in capsys.readouterr().out


def test_the_bad_fraction_is_of_the_items_training_counts(tmp_path, capsys):
    """Bad lines in a manifest of weight 3 count three times, as training counts them (per visit), and --valid
    counts validation's subset only: the verdict is training's own, where per line it had been another."""
    a = good_corpus(tmp_path / "a", 40)
    b = good_corpus(tmp_path / "b", 10, seed=1)
    bad = ['{"key": "blank", "source": "wav_train/u0.wav", "target": "  ", "duration": 1.0}', '{"key": "cut", "sou']
    b = write_manifest(tmp_path / "b" / "bad.jsonl", b.read_text().splitlines() + bad + bad[:1])
    recipe = _recipe(tmp_path, {
        "train": [{"path": str(a)}, {"path": str(b), "weight": 3.0}], "valid": [str(b)], "valid_max_utts": 4,
        "batching": {"max_seconds": 4.0}, "num_workers": 0, "max_bad_fraction": 0.1,
    })  # fmt: skip
    r = load_recipe(recipe)
    fe = FrontendConfig(lfr_m=7, lfr_n=6)
    report = check_data(r.data.train_manifests, r.data, fe, train=True)
    assert report.num_bad == 3 and report.num_lines == 53 and report.counted == (9, 79) and not report.ok
    with pytest.raises(TooMuchBadData, match=r"9 of 79 items"):
        build_dataloader(r.data, r.data.train, fe, prompt_builder=FakePromptBuilder(), train=True)
    assert main(["--recipe", recipe]) == 1
    out = capsys.readouterr().out
    assert "visits of the weighted mix's first epoch: 79, bad: 9 (11.39%" in out and "TOO MUCH BAD DATA" in out
    valid = check_data(r.data.valid_manifests, r.data, fe, train=False)  # lines 0, 4, 8, 12 of 13: one bad
    assert valid.counted == (1, 4) and not valid.ok
    with pytest.raises(TooMuchBadData, match=r"valid: too much bad data: 1 of 4 items"):
        build_dataloader(r.data, r.data.valid, fe, prompt_builder=FakePromptBuilder(), train=False)


def test_lines_training_takes_are_not_called_bad(tmp_path, capsys):
    """--no-probe leaves lines without a duration out, not bad (training reads their headers); a segment ending
    a little past its file is a note (training trims it), 0.5 s or more past it bad (loading refuses it), as is a
    channel the file lacks (every load fails)."""
    path = good_corpus(tmp_path, 6, with_duration=False)
    write_wav(tmp_path / "three.wav", 3.0)
    lines = path.read_text().splitlines()
    near = '{"key": "near", "source": "three.wav", "target": "hi", "start": 2.0, "end": 3.3}'
    stereo = '{"key": "ch1", "source": "three.wav", "target": "hi", "channel": 1}'
    over = '{"key": "over", "source": "three.wav", "target": "hi", "start": 2.0, "end": 3.5}'
    m = write_manifest(tmp_path / "m.jsonl", [*lines, near, stereo, over])
    report = check_data([m], data_cfg(max_duration=10.0), FrontendConfig())
    wav = tmp_path / "three.wav"
    assert [(b["key"], b["reason"]) for b in report.bad] == [
        ("ch1", f"audio {wav}: channel 1 requested but the file has 1 channel(s)"),
        ("over", f"audio {wav}: segment end 3.500s is past the end of the audio (3.000s) by 0.500s (at least 0.5s: "
         "its transcript runs past the audio; a smaller overshoot is trimmed)"),
    ]  # fmt: skip
    assert [(n["key"], n["reason"]) for n in report.duration_mismatches] == [
        ("near", "segment end 3.30s is past the end of the audio (3.00s), trimmed")
    ]
    assert report.durations[6] == pytest.approx(1.3)  # end - start, as the manifest gives it to training
    unprobed = check_data([write_manifest(tmp_path / "n.jsonl", lines)], data_cfg(), FrontendConfig(), probe=False)
    assert unprobed.num_bad == 0 and unprobed.unprobed == 6 and unprobed.ok
    assert "not probed: 6 lines without a duration" in format_report(unprobed)


def test_the_command_takes_one_batch_budget_and_counts_a_manifest_listed_twice(tmp_path, capsys):
    path = good_corpus(tmp_path, 3)
    with pytest.raises(SystemExit) as exit_:
        main([str(path), "--max-seconds", "6", "--max-frames", "300"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert main([str(path), str(path), "--max-seconds", "6"]) == 0
    out = capsys.readouterr().out
    assert f"manifest {path}: 6 lines" in out and "lines: 6," in out


def test_a_resampled_clip_counts_the_samples_loading_gives_it(tmp_path):
    """706 samples at 44.1 kHz load as ceil(706 x 16000 / 44100) = 257 samples at 16 kHz, one fbank frame: usable,
    as training finds it (the check had rounded to 256 and called it too short)."""
    import soundfile as sf

    from llmasr.data.audio import load_audio

    sf.write(tmp_path / "edge.wav", np.full(706, 0.1, np.float32), 44100, subtype="FLOAT")
    assert load_audio(tmp_path / "edge.wav", sample_rate=16000).size == 257
    m = write_manifest(tmp_path / "m.jsonl", [{"key": "edge", "source": "edge.wav", "target": "hi"}])
    assert check_data([m], data_cfg(), FrontendConfig()).num_bad == 0
    sf.write(tmp_path / "edge.wav", np.full(705, 0.1, np.float32), 44100, subtype="FLOAT")  # 256: too short
    assert check_data([m], data_cfg(), FrontendConfig()).num_bad == 1


def test_an_empty_reference_is_not_a_bad_line_of_a_manifest_for_decoding(tmp_path):
    """`llmasr data check --decode`: a line whose transcript is empty is a clip to decode and score (an empty
    reference), as decoding takes it; for training it stays a bad line."""
    from llmasr.data.manifest import Manifest

    write_wav(tmp_path / "a.wav", 1.0)
    m = write_manifest(tmp_path / "m.jsonl", [{"key": "quiet", "source": "a.wav", "target": " "}])
    assert Manifest.open(m, need_target=False)[0].target == ""
    spell = lambda text: None if text.strip() else "no CTC labels"  # noqa: E731  (a CTC head's rule)
    report = check_data([m], data_cfg(), FrontendConfig(), need_target=False, ctc_labels=spell)
    assert report.num_bad == 0
    assert check_data([m], data_cfg(), FrontendConfig(), ctc_labels=spell).num_bad == 1


def test_a_recipe_s_llm_budget_is_applied_to_the_preview_as_training_applies_it(tiny_llm_dir, tmp_path, capsys):
    """data.batching.max_llm_tokens: the preview cuts the batches training cuts (the same count of each line's LLM
    positions) and says their padded LLM positions; without the budget no tokenizer is read."""
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.train.resolve import build_loaders, text_side

    m = write_tiny_corpus(tmp_path / "corpus", n=16)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[m], output_dir=tmp_path / "run")))
    assert main(["--recipe", str(recipe)]) == 0
    plain = capsys.readouterr().out
    assert "LLM positions" not in plain and "max_llm_tokens" not in plain
    assert main(["--recipe", str(recipe), "data.batching.max_llm_tokens=120"]) == 0
    out = capsys.readouterr().out
    _, sampler, _ = build_loaders(load_recipe(recipe, ["data.batching.max_llm_tokens=120"]),
                                  text_side(load_recipe(recipe).model), rank=0, world_size=1)  # fmt: skip
    padded = [len(b) * int(sampler.llm_lens[b].max()) for b in sampler.batches(0)]
    assert "## batching (max_seconds=3, max_llm_tokens=120, world size 1)" in out
    assert f"batches per rank: {len(sampler)} " in out
    assert f"LLM positions per batch (B x longest row): at most {max(padded)}, mean {np.mean(padded):.1f};" in out
    assert max(padded) <= 120
    assert len(sampler) > int(plain.split("batches per rank: ")[1].split()[0])


def test_fields_no_parser_reads_are_named_with_their_lines_and_the_field_they_may_mean(tmp_path):
    """A misspelt field ("hotword", "Prompt") changed nothing without a word: the line trained without its biasing
    list or its task. The report names every field the line's format leaves unread, how many lines hold it, where
    it first stands and, a letter or two off a field llmasr reads, that field; a field of another tool (SenseVoice's
    emo_target) is named without a guess."""
    path = good_corpus(tmp_path, 3)
    lines = path.read_text().splitlines()
    extra = [{"hotword": ["alpha"], "emo_target": "<|HAPPY|>"}, {"Prompt": "Transcribe."}, {"emo_target": "<|SAD|>"}]
    lines = [json.dumps({**json.loads(line), **more}) for line, more in zip(lines, extra)]
    write_wav(tmp_path / "c.wav", 0.5)
    chat = {"messages": [{"role": "user", "content": "<|startofspeech|>!c.wav<|endofspeech|>"},
                         {"role": "assistant", "content": "hi"}], "speech_length": 49, "hotword": "x"}  # fmt: skip
    path = write_manifest(tmp_path / "m.jsonl", [*lines, json.dumps(chat)])
    report = check_data([path], data_cfg(), FrontendConfig())
    assert report.ok and report.num_bad == 0
    assert report.unread_fields == {"emo_target": [2, f"{path}:1"], "hotword": [2, f"{path}:1"],
                                    "Prompt": [1, f"{path}:2"]}  # fmt: skip
    text = format_report(report)
    assert "## fields llmasr does not read" in text
    assert f"  emo_target: 2 lines, first at {path}:1\n" in text + "\n"
    assert f"  hotword: 2 lines, first at {path}:1 (did you mean 'hotwords'?)" in text
    assert f"  Prompt: 1 line, first at {path}:2 (did you mean 'prompt'?)" in text
    clean = check_data([good_corpus(tmp_path / "clean", 2)], data_cfg(), FrontendConfig())
    assert clean.unread_fields == {} and "fields llmasr does not read" not in format_report(clean)


def test_the_llm_budget_s_hotword_pass_shares_the_manifests_the_check_opens(
    tiny_llm_dir, tmp_path, capsys, monkeypatch
):
    """With data.batching.max_llm_tokens and drawn biasing lists, the pass over the texts that bounds the lists had
    opened each training manifest a second time (Manifest.open reads the whole file), and a manifest it could not
    open ended the command before the report. Each is opened once, and one that cannot be is reported as any is."""
    from llmasr.data.manifest import Manifest
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus

    a, b = write_tiny_corpus(tmp_path / "a", n=6), write_tiny_corpus(tmp_path / "b", n=6, seed=1)
    (tmp_path / "pool.txt").write_text("".join(f"alpha {i}\n" for i in range(20)))
    data = tiny_recipe_dict(tiny_llm_dir, train=[a, b], output_dir=tmp_path / "run")
    data["data"]["batching"]["max_llm_tokens"] = 400
    data["data"]["hotwords"] = {"enable": True, "distractors": str(tmp_path / "pool.txt"), "list_size": [1, 2]}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    opens, real = [], Manifest.open.__func__

    def counted(cls, path, **kw):
        opens.append(str(path))
        return real(cls, path, **kw)

    monkeypatch.setattr(Manifest, "open", classmethod(counted))
    assert main(["--recipe", str(recipe)]) == 0
    assert "max_llm_tokens=400" in capsys.readouterr().out
    assert sorted(opens) == sorted([str(a), str(b)])
    missing = tmp_path / "missing.jsonl"
    assert main(["--recipe", str(recipe), f"data.train=[{a},{missing}]"]) == 2
    out = capsys.readouterr().out
    assert f"{missing}: cannot open manifest" in out and "max_llm_tokens=400" in out and "result: ERROR" in out


def test_a_corpus_s_own_short_fields_are_named_without_a_guess(tmp_path):
    """`id`, `emo`, `sid` are a corpus's own metadata, two edits from `end` as any short word is from another: the
    report had asked of each "did you mean 'end'?", and of `lng` too, one edit from `lang`."""
    path = good_corpus(tmp_path, 2)
    lines = path.read_text().splitlines()
    extra = [{"id": "spk1-0001", "emo": "NEUTRAL", "sid": "7"}, {"lng": "en"}]
    path = write_manifest(tmp_path / "m.jsonl", [json.dumps({**json.loads(x), **e}) for x, e in zip(lines, extra)])
    text = format_report(check_data([path], data_cfg(), FrontendConfig()))
    for name in ("id", "emo", "sid"):
        assert f"  {name}: 1 line, first at {path}:1\n" in text + "\n"
    assert f"  lng: 1 line, first at {path}:2 (did you mean 'lang'?)" in text


def test_a_field_only_the_other_format_reads_is_said_to_be_that_format_s(tmp_path):
    """A FunASR line's `asr_hotwords` (Fun-ASR-Nano's list) and a ChatML line's `target` go unread: the report had
    asked "did you mean 'asr_hotwords'?" of the field itself."""
    write_wav(tmp_path / "a.wav", 0.5)
    recs = [{"key": "a", "source": "a.wav", "target": "hi", "asr_hotwords": ["alpha"]},
            {"messages": [{"role": "user", "content": "<|startofspeech|>!a.wav<|endofspeech|>"},
                          {"role": "assistant", "content": "hi"}], "key": "b", "target": "hi"}]  # fmt: skip
    path = write_manifest(tmp_path / "m.jsonl", [json.dumps(r) for r in recs])
    text = format_report(check_data([path], data_cfg(), FrontendConfig()))
    assert f"  asr_hotwords: 1 line, first at {path}:1 (read in ChatML (messages) lines only)" in text
    assert f"  target: 1 line, first at {path}:2 (read in FunASR jsonl (source, target) lines only)" in text
    assert "did you mean" not in text


def test_the_report_names_sample_rates_and_channels_that_loading_converts(tmp_path):
    # A corpus of 8 kHz calls, or of two-channel files read without a `channel`, was resampled and averaged without
    # a word: the report lists each format with its first line and what loading does to it.
    import soundfile as sf

    write_wav(tmp_path / "wide.wav", 1.0)
    write_wav(tmp_path / "phone.wav", 1.0, sr=8000)
    t = np.arange(16000) / 16000
    sf.write(str(tmp_path / "call.wav"), np.stack([np.sin(2 * np.pi * 300 * t), 0 * t], 1) * 0.3, 16000)
    lines = [
        {"key": "a", "source": "wide.wav", "target": "hi"},
        {"key": "b", "source": "phone.wav", "target": "hi"},
        {"key": "c", "source": "call.wav", "target": "hi"},
        {"key": "d", "source": "call.wav", "target": "hi", "channel": 0},
        {"key": "e", "source": "wide.wav", "target": "hi"},
    ]
    path = write_manifest(tmp_path / "m.jsonl", lines)
    report = check_data([path], data_cfg(), FrontendConfig())
    assert report.audio_formats == {
        (16000, 1, False): [2, f"{path}:1"],
        (8000, 1, False): [1, f"{path}:2"],
        (16000, 2, True): [1, f"{path}:3"],
        (16000, 2, False): [1, f"{path}:4"],
    }
    text = format_report(report)
    assert (
        f"  8000 Hz, 1 channel: 1 line, first at {path}:2; upsampled to 16000 Hz (it holds nothing above 4000 Hz)"
        in text
    )
    assert f"  16000 Hz, 2 channels: 1 line, first at {path}:3; its channels averaged" in text
    assert f"  16000 Hz, 2 channels: 1 line, first at {path}:4\n" in text  # its channel picked: nothing done


@pytest.mark.parametrize(
    ("longest", "labels"),
    [
        (0.96, ["  0.00-  0.05s", "  0.05-  0.10s", "  0.95-  1.00s"]),  # a clip corpus under a second: 0.05 s bins
        (14.2, ["  0.00-  0.75s", "  2.25-  3.00s", " 14.25- 15.00s"]),  # 0.75 s bins
        (20.0, ["   0.0-   1.0s", "  19.0-  20.0s"]),  # whole-second bins keep one decimal
        (2.9, ["  0.00-  0.15s", "  2.85-  3.00s"]),
    ],
)
def test_histogram_labels_name_each_bin_exactly(longest, labels):
    # At one decimal, 0.05 s bins printed "0.1-0.1s" and "0.2-0.2s" twice over, and 0.75 s bins "2.2-3.0s" for
    # 2.25-3.00: a reader could not tell which bin a count belonged to
    rows = histogram(np.array([0.01, longest]))
    names = [row.split(" |")[0] for row in rows]
    assert len(set(names)) == len(names) == 20
    for label in labels:
        assert label in names, (label, names[:3])


def test_a_duration_on_a_bin_edge_is_counted_in_the_bin_it_begins():
    """A 0.6 s clip is in the "0.60-0.65s" bin, as its labels read: the edge computed as 0.6000000000000001 had put
    it in "0.55-0.60s"."""
    rows = {row.split(" |")[0]: int(row.rsplit(" ", 1)[1]) for row in histogram(np.array([0.6, 0.3, 0.96]))}
    assert rows["  0.60-  0.65s"] == 1 and rows["  0.55-  0.60s"] == 0 and rows["  0.30-  0.35s"] == 1


def test_the_batching_preview_counts_real_batches_and_warns_of_many_padding_duplicates(tmp_path):
    """16 clips of 0.5 s (4 a batch) and 6 of 1.5 s (1 a batch) make 10 batches; over 8 ranks the last group is padded
    with 6 repeats of its one-utterance batches. The mean batch size had counted them (1.8 utterances, where the
    10 batches hold 2.2 each), and nothing said that 6 of the 16 rank-batches repeat a batch."""
    lines = [json.dumps({"key": f"s{i}", "source": f"s{i}.wav", "target": "a b", "duration": 0.5}) for i in range(16)]
    lines += [json.dumps({"key": f"l{i}", "source": f"l{i}.wav", "target": "a b", "duration": 1.5}) for i in range(6)]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    cfg = data_cfg(max_seconds=2.0, num_buckets=1)
    text = format_report(check_data([manifest], cfg, FrontendConfig(), world_size=8, probe=False))
    assert "batches per rank: 2 (all ranks: 10, padding duplicates: 6)\nmean batch size: 2.2 utterances" in text
    assert (
        "\nwarning: 10 batches over 8 ranks: 6 of the 16 rank-batches (38%) are padding duplicates, batches trained "
        "again" in text
    )
    even = format_report(check_data([manifest], cfg, FrontendConfig(), world_size=5, probe=False))
    assert "mean batch size: 2.2 utterances" in even and "padding duplicates: 0" in even and "warning" not in even


def test_report_names_the_whisper_window_that_caps_max_duration(tmp_path):
    """Under a Whisper frontend a line longer than its window is skipped whatever data.batching.max_duration says:
    the report named the recipe's key with the window's seconds ("max_duration = 2 s" for a recipe's 40)."""
    m = good_corpus(tmp_path, 12)
    write_wav(tmp_path / "long.wav", 3.0)
    with open(m, "a") as f:
        f.write('{"key": "long", "source": "long.wav", "target": "hello world"}\n')
    whisper = FrontendConfig(kind="whisper", n_mels=80, chunk_seconds=2.0)
    text = format_report(check_data([m], data_cfg(max_seconds=8.0, max_duration=40.0), whisper))
    assert "longer than data.batching.max_duration = 40 s (the Whisper window, 2 s, caps it): 1 lines" in text
    assert "max_duration = 2 s" not in text
    cut = format_report(check_data([m], data_cfg(max_seconds=8.0, max_duration=40.0, truncate_to_max=True), whisper))
    assert "truncated to data.batching.max_duration = 40 s (the Whisper window, 2 s, caps it) (data.batching" in cut
    # every clip (0.3-2 s) costs the 2 s window, which the encoder runs over whole
    assert "padding efficiency (real / padded audio): 1.000" not in text


def test_the_channel_advice_fits_a_lhotse_multicut(tmp_path):
    """A lhotse MultiCut over [0, 1] gives a `channel`, all of them: the advice had said the lines give none, and
    named only the jsonl field."""
    import soundfile as sf
    from speech_fakes import cut, write_jsonl

    t = np.arange(16000) / 16000
    sf.write(str(tmp_path / "call.wav"), np.stack([np.sin(2 * np.pi * 300 * t), 0 * t], 1) * 0.3, 16000)
    sup = {"id": "s", "start": 0.0, "duration": 1.0, "text": "hi", "channel": [0, 1]}
    stereo = [{"type": "file", "channels": [0, 1], "source": "call.wav"}]
    path = write_jsonl(tmp_path / "cuts.jsonl", [cut("c", "call.wav", channel=[0, 1], sources=stereo, sups=[sup],
                                                      type="MultiCut")])  # fmt: skip
    text = format_report(check_data([path], data_cfg(), FrontendConfig()))
    assert f"16000 Hz, 2 channels: 1 line, first at {path}:1; its channels averaged" in text
    assert "give no `channel`" not in text and "a lhotse cut's supervision its own `channel`" in text


def test_data_check_names_special_token_tags_in_transcripts(tmp_path):
    """SenseVoiceSmall's rich tags left in pseudo-labels: the lines are good, and the report names the tags."""
    path = good_corpus(tmp_path, 3)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[1]["target"] = "<|zh|><|HAPPY|><|Speech|><|withitn|>" + recs[1]["target"]
    path = write_manifest(tmp_path / "m.jsonl", [json.dumps(r) for r in recs])
    report = check_data([path], data_cfg(), FrontendConfig())
    assert report.ok and report.num_bad == 0 and report.text_found["<|HAPPY|>"] == [1, f"{path}:2"]
    text = format_report(report)
    assert "## special-token tags in transcripts" in text and f"<|withitn|> in 1 line (first: {path}:2)" in text
    clean = check_data([good_corpus(tmp_path / "clean", 2)], data_cfg(), FrontendConfig())
    assert clean.text_found == {} and "special-token tags" not in format_report(clean)


def test_a_manifest_to_decode_checked_for_training_is_pointed_to_decode(tmp_path, capsys):
    """Every line of an untranscribed manifest is bad for training ("missing field 'target'"): the verdict had said
    only that training would stop, not that such a manifest is checked with --decode."""
    write_wav(tmp_path / "a.wav", 1.0)
    m = write_manifest(tmp_path / "m.jsonl", [{"key": f"u{i}", "source": "a.wav"} for i in range(3)])
    assert main([str(m)]) == 1
    said = "all 3 bad lines lack a `target`: check a manifest to decode with --decode"
    assert said in capsys.readouterr().out
    assert main([str(m), "--decode"]) == 0
    mixed = write_manifest(tmp_path / "mixed.jsonl", ['{"key": "x", "source": "nope.wav", "target": "hi"}',
                                                       {"key": "u", "source": "a.wav"}])  # fmt: skip
    assert main([str(mixed)]) == 1
    assert "--decode" not in capsys.readouterr().out  # another fault among them: not a manifest to decode


def test_lines_no_batch_can_hold_are_listed_with_the_budget_they_pass(tmp_path):
    """The batching preview had counted them ("over_batch_budget: 2") without naming a line or a budget, where
    train.log names both."""
    good = good_corpus(tmp_path, 6)
    rows = [json.loads(line) for line in good.read_text().splitlines()]
    for i in (1, 4):
        rows[i]["target"] = "a long transcript " * 3
    m = write_manifest(tmp_path / "m.jsonl", [json.dumps(r) for r in rows])
    text = format_report(check_data([m], data_cfg(max_target_tokens=40), FrontendConfig()))
    assert (
        "too large for a batch of one: 2 lines, skipped by training (2 past data.batching.max_target_tokens = 40 (its "
        f"target_len))\n  {m}:2\n  {m}:5\n" in text
    )


def test_probes_across_many_lines_keep_each_line_its_own_duration_and_fault(tmp_path):
    # lines probed a task of several at a time, on threads: each line's header, and each fault, is still its own
    lengths = (1.0, 1.5, 2.0)
    for i, seconds in enumerate(lengths):
        write_wav(tmp_path / f"w{i}.wav", seconds)
    gone = {5, 64, 65, 130, 199, 250}
    lines = [
        json.dumps({"key": f"u{i}", "source": "gone.wav" if i in gone else f"w{i % 3}.wav", "target": "hello"})
        for i in range(260)
    ]
    path = write_manifest(tmp_path / "m.jsonl", lines)
    report = check_data([path], data_cfg(), FrontendConfig(), threads=3)
    assert [b["line"] for b in report.bad] == [i + 1 for i in sorted(gone)]
    assert [b["key"] for b in report.bad] == [f"u{i}" for i in sorted(gone)]
    want = [np.nan if i in gone else lengths[i % 3] for i in range(260)]
    np.testing.assert_allclose(report.durations, want, rtol=0, atol=1e-6)
