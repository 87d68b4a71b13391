"""Long audio through the one decode path: windows planned at the loader, each decoded as an utterance of its own
(batched with others), texts joined back per utterance; the window limit from the export; clear refusals."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import soundfile as sf
import yaml

import llmasr.data.loader as loader_module
from llmasr.commands.decode import main
from llmasr.config_io import ConfigError
from llmasr.data.collate import Collator
from llmasr.data.dataset import SpeechDataset
from llmasr.data.loader import open_manifests
from llmasr.data.long_audio import plan_windows
from llmasr.data.window_join import join_texts
from llmasr.export.decode import DecodeOptions, decode_loader, decode_manifest, load_decode_model
from llmasr.models.decoding import DecodeConfig
from llmasr.testing.tiny_corpus import syllable_bursts
from llmasr.testing.tiny_recipe import OracleCTCHead

SR = 16000
LIMIT, OVERLAP = 3.0, 0.5
# key -> (reference, the text each window's oracle CTC path spells)
ORACLE = {
    "paused": ("one two three four five", ["one two", "three four", "five"]),  # cut at pauses: no overlap
    "steady": ("six seven eight nine", ["six seven eight", "eight nine"]),  # no pause: "eight" heard twice
    "short": ("zero", ["zero"]),
    "brief": ("hello world", ["hello world"]),
}


@pytest.fixture(scope="module")
def long_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_audio")
    rng = np.random.default_rng(0)
    steady = (0.2 * rng.standard_normal(int(4.45 * SR))).astype(np.float32)
    steady[int(2.2 * SR) : int(2.3 * SR)] *= 0.01  # too short for a pause: the quietest point, an overlapped cut
    # Window lengths 2.875, 2.05, 2.575 s (paused) and 2.25, 2.7 s (steady): encoder lengths apart
    speech = {"sample_rate": SR, "level": 0.2, "floor": 0.002}
    waves = {
        "paused": syllable_bursts(7.5, [(2.75, 3.05), (4.75, 5.05)], seed=1, **speech),
        "steady": steady,
        "short": syllable_bursts(1.1, seed=2, **speech),
        "brief": syllable_bursts(1.6, seed=3, **speech),
    }
    lines = []
    for key, wave in waves.items():
        sf.write(str(root / f"{key}.wav"), wave, SR, subtype="FLOAT")
        lines.append(json.dumps({"key": key, "source": f"{key}.wav", "target": ORACLE[key][0]}))
    (root / "long.jsonl").write_text("\n".join(lines) + "\n")
    return root / "long.jsonl", waves


def test_the_planned_windows_are_the_ones_meant(long_manifest):
    """The audio makes the windows this file's oracle expects: pauses for `paused`, an overlap for `steady`."""
    _, waves = long_manifest
    paused = plan_windows(waves["paused"], SR, LIMIT, OVERLAP)
    assert len(paused) == 3 and not any(w.overlapped for w in paused)
    steady = plan_windows(waves["steady"], SR, LIMIT, OVERLAP)
    assert len(steady) == 2 and steady[1].overlapped


def _window_lengths(model, manifest, cfg, opts) -> dict[tuple[str, int], int]:
    """(key, window number) -> encoder length, from decode's own loader."""
    out, by_item = {}, {}
    for batch in decode_loader(model, manifest, cfg, opts):
        enc_lens = model.encoder(batch.feats, batch.feat_lens)[1]
        by_item.update((idx, (key, int(n))) for idx, key, n in zip(batch.indices, batch.keys, enc_lens.tolist()))
    for idx in sorted(by_item):  # item order is window order within an utterance
        key, n = by_item[idx]
        out[(key, sum(k == key for k, _ in out))] = n
    return out


@pytest.mark.parametrize("batch_seconds", [100.0, 0.01], ids=["batched", "one_by_one"])
def test_long_utterances_decode_in_windows_and_join(model, long_manifest, tmp_path, monkeypatch, batch_seconds):
    manifest, _ = long_manifest
    cfg = DecodeConfig(batch_seconds=batch_seconds, max_new_tokens=3, ctc_weight=0.0, max_window_seconds=LIMIT,
                       window_overlap=OVERLAP)  # fmt: skip
    opts = DecodeOptions(num_workers=0, ctc=True)
    lengths = _window_lengths(model, manifest, cfg, opts)
    assert sorted(lengths) == sorted((k, i) for k, (_, parts) in ORACLE.items() for i in range(len(parts)))
    assert len(set(lengths.values())) == len(lengths)  # encoder lengths tell the windows apart
    by_len = {lengths[(k, i)]: text for k, (_, parts) in ORACLE.items() for i, text in enumerate(parts)}
    monkeypatch.setitem(model._modules, "ctc_head", OracleCTCHead(model.ctc_tokenizer, by_len))
    summary = decode_manifest(model, manifest, tmp_path / "o", cfg, opts)
    ctc_rows = [json.loads(line) for line in open(tmp_path / "o" / "ctc" / "results.jsonl")]
    assert [r["key"] for r in ctc_rows] == list(ORACLE)  # manifest order
    # The windows' CTC texts joined: the pause seams as they are, the overlap's "eight" said once
    assert [r["hyp"] for r in ctc_rows] == [ref for ref, _ in ORACLE.values()]
    assert summary["ctc"]["rate"] == 0.0 and [r["windows"] for r in ctc_rows] == [3, 2, 1, 1]
    rows = [json.loads(line) for line in open(tmp_path / "o" / "results.jsonl")]
    assert [r["windows"] for r in rows] == [3, 2, 1, 1]
    assert [r["duration"] for r in rows] == pytest.approx([7.5, 4.45, 1.1, 1.6], abs=1e-4)  # the audio, once
    assert summary["audio_seconds"] == pytest.approx(7.5 + 4.45 + 1.1 + 1.6, abs=1e-3)
    # The LLM's text is the join of each window transcribed alone, read as an utterance of its own
    alone = _windows_alone(model, manifest, long_manifest[1], cfg)
    assert [r["hyp"] for r in rows] == [alone[k] for k in ORACLE]
    assert any(r["hyp"].strip() for r in rows)
    assert summary["windows"] == 7 and summary["split"] == 2 and summary["utterances"] == 4
    want = "long audio: 4 utterances decoded in 7 windows (2 longer than 3 s split at low-energy points, overlap 0.5 s)"
    assert (tmp_path / "o" / "wer.txt").read_text().splitlines()[-1] == want
    assert (tmp_path / "o" / "ctc" / "wer.txt").read_text().splitlines()[-1] == want


def _windows_alone(model, manifest, waves, cfg) -> dict[str, str]:
    """key -> the join of its windows' LLM texts, each window a manifest line of its own (start/end) decoded in a
    batch of one outside the decode loop."""
    texts = _window_texts(model, manifest, waves, cfg)
    return {k: join_texts([t for t, _ in v], [o for _, o in v], OVERLAP) for k, v in texts.items()}


def _window_texts(model, manifest, waves, cfg) -> dict[str, list[tuple[str, bool]]]:
    """key -> (LLM text, overlapped) of each of its windows, each decoded alone (see _windows_alone)."""
    lines = []
    for key, wave in waves.items():
        for w in plan_windows(wave, SR, LIMIT, OVERLAP):
            rec = {"key": key, "source": f"{key}.wav", "target": ORACLE[key][0], "start": w.start / SR}
            lines.append(json.dumps({**rec, "end": w.end / SR, "overlapped": w.overlapped}))
    path = manifest.parent / "windows_alone.jsonl"
    path.write_text("\n".join(lines) + "\n")
    m, _ = open_manifests([str(path)], mix=False)
    dataset = SpeechDataset(m, model.frontend, train=False, prompt_builder=model.prompt)
    collate = Collator(model.prompt.pad_id)
    texts: dict[str, list] = {}
    for i, line in enumerate(lines):
        item = dataset[i]
        text = model.transcribe(collate([item]), cfg).llm[0]
        texts.setdefault(item["key"], []).append((text, json.loads(line)["overlapped"]))
    return texts


def test_the_ctc_gate_empties_a_window_and_an_utterance_only_when_it_hears_nothing_in_all_its_windows(
    model, long_manifest, tmp_path, monkeypatch
):
    manifest, waves = long_manifest
    cfg = DecodeConfig(batch_seconds=100.0, max_new_tokens=3, ctc_weight=0.0, max_window_seconds=LIMIT,
                       window_overlap=OVERLAP, ctc_gate=True, confidence=True)  # fmt: skip
    opts = DecodeOptions(num_workers=0, ctc=True)
    lengths = _window_lengths(model, manifest, cfg, opts)
    heard = {"paused": ["one two", "", "five"], "steady": ["", ""], "short": [""], "brief": ["hello world"]}
    by_len = {lengths[(k, i)]: text for k, parts in heard.items() for i, text in enumerate(parts)}
    alone = _window_texts(model, manifest, waves, dataclasses.replace(cfg, ctc_gate=False))
    monkeypatch.setitem(model._modules, "ctc_head", OracleCTCHead(model.ctc_tokenizer, by_len))
    summary = decode_manifest(model, manifest, tmp_path / "o", cfg, opts)
    rows = {r["key"]: r for r in map(json.loads, open(tmp_path / "o" / "results.jsonl"))}
    paused = [t if h else "" for (t, _), h in zip(alone["paused"], heard["paused"])]
    assert rows["paused"]["hyp"] == join_texts(paused, [o for _, o in alone["paused"]], OVERLAP)
    assert rows["paused"]["hyp"] and "no_speech" not in rows["paused"]  # one window of three emptied
    assert rows["paused"]["logprob"] is not None  # the windows the LLM wrote, summed
    assert [w["avg_logprob"] is None for w in rows["paused"]["window_confidence"]] == [False, True, False]
    assert rows["brief"]["hyp"] == alone["brief"][0][0] and "no_speech" not in rows["brief"]
    for key in ("steady", "short"):
        assert rows[key]["hyp"] == "" and rows[key]["no_speech"] is True and rows[key]["logprob"] is None
    assert [rows[k]["windows"] for k in heard] == [3, 2, 1, 1]
    assert summary["ctc_gate"]["utterances"] == 2 and summary["no_speech"] == 0  # the VAD's count apart
    # the window it emptied of "paused" is counted too, in wer.json and wer.txt
    assert (summary["ctc_gate"]["windows"], summary["ctc_gate"]["window_utterances"]) == (1, 1)
    assert "; and 1 window of 1 long utterance it transcribed the rest of (e.g. key 'paused')" in (
        tmp_path / "o" / "wer.txt").read_text()  # fmt: skip
    # without the gate: that window among what it would empty, its errors what turning it on changes
    off = decode_manifest(model, manifest, tmp_path / "off", dataclasses.replace(cfg, ctc_gate=False), opts)
    gate = off["ctc_gate"]
    assert (gate["windows"], gate["window_utterances"]) == (1, 1) and gate["would_empty"] >= 1
    assert summary["errors"] == off["errors"] - gate["errors_written"] + gate["errors_emptied"]
    assert "CTC best path empty in " in (text := (tmp_path / "off" / "wer.txt").read_text())
    assert " and in 1 window of 1 long utterance (e.g. key 'paused'); " in text


def test_the_real_time_factor_counts_placing_the_windows(model, long_manifest, tmp_path, monkeypatch):
    """Reading long (or VAD-gated) audio to place its windows is part of decoding it: in the time the factor counts,
    and given apart."""
    manifest, _ = long_manifest
    plan = loader_module.split_long

    def slow_plan(*args, **kwargs):  # a recording long enough that its pass before batching takes a while
        time.sleep(1.5)
        return plan(*args, **kwargs)

    monkeypatch.setattr(loader_module, "split_long", slow_plan)
    cfg = DecodeConfig(batch_seconds=0.01, max_new_tokens=2, max_window_seconds=LIMIT, window_overlap=OVERLAP)
    summary = decode_manifest(model, manifest, tmp_path, cfg, DecodeOptions(num_workers=0))
    assert summary["window_plan_seconds"] >= 1.5 and summary["decode_seconds"] >= summary["window_plan_seconds"]
    assert summary["rtf"] == pytest.approx(summary["decode_seconds"] / summary["audio_seconds"], abs=1e-3)
    shown = f"{summary['window_plan_seconds']:.1f} s of it reading the manifest and placing the windows"
    assert shown in (tmp_path / "wer.txt").read_text()


def test_a_long_line_whose_audio_is_missing_is_one_bad_line(model, long_manifest, tmp_path):
    manifest, _ = long_manifest
    gone = json.dumps({"key": "gone", "source": "nope.wav", "target": "lost", "duration": 9.0})
    bad = manifest.parent / "with_bad.jsonl"
    bad.write_text(manifest.read_text() + gone + "\n")
    cfg = DecodeConfig(max_new_tokens=2, max_window_seconds=LIMIT, window_overlap=OVERLAP)
    summary = decode_manifest(model, bad, tmp_path / "o", cfg, DecodeOptions(num_workers=0, max_bad_fraction=0.5))
    assert summary["lines"] == 5 and summary["skipped"] == 1 and summary["utterances"] == 4
    assert [json.loads(line)["key"] for line in open(tmp_path / "o" / "bad.jsonl")] == ["gone"]
    assert summary["windows"] == 7


def test_the_export_records_the_training_maximum_and_decoding_defaults_to_it(
    runs, train_corpus, exported_dir, model, long_manifest, tmp_path
):
    manifest, _ = long_manifest
    desc = yaml.safe_load((exported_dir / "llmasr_model.yaml").read_text())
    _, saved, opts = load_decode_model(exported_dir)
    _, ck_saved, ck_opts = load_decode_model(checkpoint=runs[2])
    # the longest training clip of the tone-word corpus (under the recipe's max_duration)
    longest = max(json.loads(line)["duration"] for line in train_corpus.read_text().splitlines())
    assert desc["training"]["longest_seconds"] == opts.training_max_seconds == ck_opts.training_max_seconds == longest
    assert saved.max_window_seconds is None and ck_saved.max_window_seconds is None
    # unset: the training maximum decides (here as if the model had been trained on at most 3 s)
    cfg = DecodeConfig(max_new_tokens=2, window_overlap=OVERLAP)
    summary = decode_manifest(
        model, manifest, tmp_path / "a", cfg, DecodeOptions(num_workers=0, training_max_seconds=3)
    )
    assert summary["windows"] == 7 and summary["max_window_seconds"] == 3.0
    # 0: never split, whatever the training maximum
    never = DecodeConfig(max_new_tokens=2, max_window_seconds=0)
    summary = decode_manifest(
        model, manifest, tmp_path / "b", never, DecodeOptions(num_workers=0, training_max_seconds=3)
    )
    assert summary["windows"] == 4 and summary["max_window_seconds"] is None
    assert (tmp_path / "b" / "wer.txt").read_text().splitlines()[-1].endswith("in 4 windows (no window limit)")


def test_window_settings_are_refused_clearly(exported_dir, model, long_manifest, tmp_path, capsys):
    manifest, _ = long_manifest
    with pytest.raises(ConfigError, match=r"decode.window_overlap: must be a number of seconds >= 0, got -1"):
        DecodeConfig(window_overlap=-1).validate("decode")
    with pytest.raises(ConfigError, match=r"decode.max_window_seconds: must be > 0 seconds \(0: never split\)"):
        DecodeConfig(max_window_seconds=-2).validate("decode")
    with pytest.raises(ConfigError, match=r"a window of 1.5 s must be at least 2 s and longer than twice"):
        DecodeConfig(max_window_seconds=1.5).validate("decode")
    with pytest.raises(ConfigError, match=r"a window of 3 s .* twice decode.window_overlap \(2 s\)"):
        DecodeConfig(max_window_seconds=3, window_overlap=2).validate("decode")
    # a model trained on shorter audio than a window can be gets the shortest window that works
    assert DecodeConfig().window_seconds(1.5) == 3.0 and DecodeConfig(window_overlap=0.5).window_seconds(1.5) == 2.0
    assert DecodeConfig().window_seconds(None) == 0.0 and DecodeConfig().window_seconds(7.5) == 7.5
    args = ["--model", str(exported_dir), "--data", str(manifest), "--output", str(tmp_path / "o")]
    assert main([*args, "--max-window-seconds", "4", "--window-overlap", "2.5"]) == 2
    assert "decode.max_window_seconds: a window of 4 s must be at least 2 s" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # checked before the model loads, with no --window-overlap: no overlap value the decode would not use
    assert main([*args, "--max-window-seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert "decode.max_window_seconds: a window of 1 s must be at least 2 s and longer than twice" in err
    assert "window_overlap (0 s)" not in err and not (tmp_path / "o").exists()


def test_a_whisper_encoder_never_gets_a_window_past_its_chunk():
    from types import SimpleNamespace

    from llmasr.data.frontend import FrontendConfig
    from llmasr.export.decode import window_limit

    whisper = SimpleNamespace(frontend=FrontendConfig(kind="whisper", n_mels=80))
    fbank = SimpleNamespace(frontend=FrontendConfig())
    opts = DecodeOptions(training_max_seconds=40.0)
    assert window_limit(whisper, DecodeConfig(), opts) == 30.0 and window_limit(fbank, DecodeConfig(), opts) == 40.0
    assert window_limit(whisper, DecodeConfig(), DecodeOptions()) == 30.0  # the training maximum unknown
    assert window_limit(whisper, DecodeConfig(max_window_seconds=12), opts) == 12.0
    assert window_limit(whisper, DecodeConfig(max_window_seconds=0), opts) == 0.0  # asked: never split


def test_a_checkpoint_records_the_training_maximum_so_decode_needs_no_manifest(
    base_dirs, train_corpus, copy_run, tmp_path, caplog
):
    """Training records the longest audio trained on in each checkpoint's meta: decode --checkpoint and export read
    it there, without re-reading (million-line) training manifests, which may be gone since; a checkpoint saved
    before llmasr recorded it still reads the manifests, and says so."""
    import shutil

    from llmasr import run_dir as ck
    from llmasr.export.export import export_model
    from llmasr.testing.run_dirs import model_section, train_run

    corpus = tmp_path / "corpus" / train_corpus.name
    shutil.copytree(train_corpus.parent, corpus.parent)
    run = train_run(tmp_path / "run", model_section(*base_dirs), corpus, preset="zero0").run_dir
    longest = max(json.loads(line)["duration"] for line in corpus.read_text().splitlines())
    shutil.rmtree(corpus.parent)  # the training manifest (and audio) moved away after training
    _, _, opts = load_decode_model(checkpoint=run)
    assert opts.training_max_seconds == longest  # not data.batching.max_duration
    tag = run / "checkpoints" / ck.tag_for(1)
    assert ck.read_meta(tag).training == {"longest_seconds": longest}
    desc = yaml.safe_load((export_model(run, tmp_path / "export") / "llmasr_model.yaml").read_text())
    assert desc["training"]["longest_seconds"] == longest and "longest_seconds" not in desc["source"]

    old = copy_run(run, tmp_path / "old_run")  # as an older llmasr saved it: no training entry
    meta = json.loads((old / "checkpoints" / tag.name / ck.META).read_text())
    del meta["training"]
    (old / "checkpoints" / tag.name / ck.META).write_text(json.dumps(meta))
    shutil.copytree(train_corpus.parent, corpus.parent)
    with caplog.at_level("INFO", logger="llmasr"):
        _, _, opts = load_decode_model(checkpoint=old)
    assert opts.training_max_seconds == longest
    assert "no training.longest_seconds in its llmasr_meta.json (saved by an older llmasr)" in caplog.text


def test_a_long_clip_cut_to_one_window_is_counted_as_cut(exported_dir, long_manifest, tmp_path):
    """Speech that fits one window, then a pause far past the limit: decoded as one window of its speech, the pause
    left out. wer.txt's "N longer than L s split" had not counted it (one window is no split), so the line read as if
    every utterance but the split ones had been decoded whole."""
    root = long_manifest[0].parent
    speech = syllable_bursts(1.5, seed=6, sample_rate=SR, level=0.2, floor=0.002)
    sf.write(str(tmp_path / "tail.wav"), np.concatenate([speech, np.zeros(20 * SR, np.float32)]), SR, subtype="FLOAT")
    manifest = tmp_path / "tail.jsonl"
    lines = long_manifest[0].read_text().splitlines()
    tail = json.dumps({"key": "tail", "source": str(tmp_path / "tail.wav"), "target": "one"})
    manifest.write_text("\n".join(json.dumps({**json.loads(line), "source": str(root / json.loads(line)["source"])})
                                  for line in lines) + "\n" + tail + "\n")  # fmt: skip
    out = tmp_path / "out"
    args = ["--model", str(exported_dir), "--data", str(manifest), "--output", str(out), "--num-workers", "0"]
    assert main([*args, "--max-new-tokens", "2", "--max-window-seconds", str(LIMIT), "--window-overlap",
                 str(OVERLAP)]) == 0  # fmt: skip
    rows = {r["key"]: r for r in map(json.loads, open(out / "results.jsonl"))}
    assert rows["tail"]["windows"] == 1 and rows["tail"]["duration"] == pytest.approx(21.5, abs=1e-3)
    summary = json.loads((out / "wer.json").read_text())
    assert summary["windows"] == 8 and summary["split"] == 2 and summary["cut_to_one_window"] == 1
    want = ("long audio: 5 utterances decoded in 8 windows (2 longer than 3 s split at low-energy points, overlap "
            "0.5 s; 1 longer than 3 s cut to one window, the rest of its audio a pause, not decoded)")  # fmt: skip
    assert (out / "wer.txt").read_text().splitlines()[-1] == want
