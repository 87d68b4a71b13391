"""Long audio cut at a FunASR FSMN VAD's speech segments (decode.vad): the windows are the segments, what lies
between them is not decoded, a segment longer than the limit is cut further; the export carries the VAD; bad VAD
settings are refused before anything is written."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections import defaultdict

import numpy as np
import pytest
import soundfile as sf
import yaml

from llmasr.commands.decode import main
from llmasr.config_io import ConfigError
from llmasr.data.long_audio import merge_segments
from llmasr.export.decode import DecodeOptions, decode_loader, decode_manifest, load_decode_model
from llmasr.models.decoding import DecodeConfig
from llmasr.models.fsmn_vad import FsmnVad
from llmasr.testing.launcher import assert_no_shm_left, launcher_env
from llmasr.testing.tiny_corpus import syllable_bursts
from llmasr.testing.tiny_recipe import OracleCTCHead
from llmasr.testing.tiny_vad import write_fsmn_vad_dir
from llmasr.train.process_group import free_port

SR = 16000
LIMIT = 6.0


@pytest.fixture(scope="module")
def vad_dir(tmp_path_factory):
    return write_fsmn_vad_dir(tmp_path_factory.mktemp("vad") / "fsmn-vad")


@pytest.fixture(scope="module")
def long_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("vad_audio")
    waves = {
        "pause": syllable_bursts(12.0, [(4.0, 7.0)], seed=1),  # two segments around a 3 s pause
        "unbroken": syllable_bursts(14.0, seed=2),  # one segment longer than the limit
        "silent": (0.003 * np.random.default_rng(3).standard_normal(8 * SR)).astype(np.float32),
        "short": syllable_bursts(2.0, seed=4),  # within the limit: decoded whole
        "hush": (0.003 * np.random.default_rng(5).standard_normal(3 * SR)).astype(np.float32),  # short, no speech
    }
    lines = []
    for key, wave in waves.items():
        sf.write(str(root / f"{key}.wav"), wave, SR, subtype="FLOAT")
        lines.append(json.dumps({"key": key, "source": f"{key}.wav", "target": "one two"}))
    (root / "long.jsonl").write_text("\n".join(lines) + "\n")
    return root / "long.jsonl", waves


def _windows(model, manifest, cfg) -> dict:
    loader = decode_loader(model, manifest, cfg, DecodeOptions(num_workers=0))
    windowed = loader.dataset.manifest
    return {windowed.base[i].key: [(w.start, w.end) for w in ws] for i, ws in windowed.windows.items()}


def test_windows_are_the_vad_segments(model, long_manifest, vad_dir, caplog):
    manifest, waves = long_manifest
    cfg = DecodeConfig(max_new_tokens=2, max_window_seconds=LIMIT, vad=str(vad_dir), vad_gate=False)
    with caplog.at_level(logging.WARNING, logger="llmasr.data"):
        windows = _windows(model, manifest, cfg)
    vad = FsmnVad.from_dir(vad_dir)
    pause = [(a * 16, b * 16) for a, b in vad.segments_ms(waves["pause"])]
    assert len(pause) == 2 and windows["pause"] == pause  # each segment fits: one window each
    assert pause[0][1] < 4.5 * SR and pause[1][0] > 6.5 * SR  # the pause's middle is in no window
    (a, b), = vad.segments_ms(waves["unbroken"])  # fmt: skip
    unbroken = windows["unbroken"]
    assert len(unbroken) == 3 and unbroken[0][0] == a * 16 and unbroken[-1][1] == b * 16
    assert all(e - s <= LIMIT * SR for s, e in unbroken)
    # no speech (and no gate): cut by energies as without a VAD, and said
    assert "the VAD finds no speech in silent (line 3)" in caplog.text
    assert "short" not in windows and "hush" not in windows


def test_merged_vad_segments_share_windows(model, vad_dir, tmp_path):
    wave = syllable_bursts(12.0, [(2.0, 2.8), (5.0, 5.8), (8.5, 9.3)], seed=6)  # four sentences
    sf.write(str(tmp_path / "s.wav"), wave, SR, subtype="FLOAT")
    manifest = tmp_path / "s.jsonl"
    manifest.write_text(json.dumps({"key": "pause", "source": "s.wav", "target": "one two"}) + "\n")
    short_pauses = {"max_window_seconds": LIMIT, "vad": str(vad_dir), "vad_max_end_silence_ms": 300}
    cfg = DecodeConfig(max_new_tokens=2, **short_pauses)
    merged_cfg = DecodeConfig(max_new_tokens=2, vad_merge_seconds=LIMIT, **short_pauses)
    one_each, merged = _windows(model, manifest, cfg), _windows(model, manifest, merged_cfg)
    segments = [(a * 16, b * 16) for a, b in FsmnVad.from_dir(vad_dir).segments_ms(wave, 300)]
    assert one_each["pause"] == segments and len(segments) == 4  # 300 ms of silence ends a segment
    assert merged["pause"] == merge_segments(segments, LIMIT * SR) and len(merged["pause"]) < len(segments)
    assert any(b - a > 0 for (_, a), (b, _) in zip(merged["pause"], merged["pause"][1:]))  # pauses between windows
    decode_manifest(model, manifest, tmp_path / "m", merged_cfg, DecodeOptions(num_workers=0))
    said = (tmp_path / "m" / "wer.txt").read_text()
    assert f"consecutive segments merged into windows of up to {LIMIT:g} s" in said


def test_the_gate_gives_silence_an_empty_transcript(model, long_manifest, vad_dir, tmp_path):
    manifest, _ = long_manifest
    cfg = DecodeConfig(max_new_tokens=3, max_window_seconds=LIMIT, vad=str(vad_dir), ctc_weight=0.0)
    loader = decode_loader(model, manifest, cfg, DecodeOptions(num_workers=0))
    windowed = loader.dataset.manifest
    assert {windowed.base[i].key for i in windowed.silent} == {"silent", "hush"}
    assert [(w.start, w.end) for w in windowed.windows[2]] == [(0, SR // 2)]  # half a second stands for 8 s
    assert [(w.start, w.end) for w in windowed.windows[4]] == [(0, SR // 2)]
    summary = decode_manifest(model, manifest, tmp_path / "g", cfg, DecodeOptions(num_workers=0, ctc=True))
    rows = {r["key"]: r for r in map(json.loads, open(tmp_path / "g" / "results.jsonl"))}
    ctc = {r["key"]: r for r in map(json.loads, open(tmp_path / "g" / "ctc" / "results.jsonl"))}
    for key in ("silent", "hush"):
        assert rows[key]["hyp"] == "" and ctc[key]["hyp"] == ""
    assert rows["silent"]["duration"] == pytest.approx(8.0, abs=1e-4) and rows["hush"]["duration"] == pytest.approx(3.0)
    assert summary["no_speech"] == 2
    assert "; 2 without speech (the VAD's gate): empty transcripts" in (tmp_path / "g" / "wer.txt").read_text()
    # without a VAD the same model writes words over the silence: what the gate is for
    plain = DecodeConfig(max_new_tokens=3, max_window_seconds=LIMIT, ctc_weight=0.0)
    decode_manifest(model, manifest, tmp_path / "p", plain, DecodeOptions(num_workers=0))
    words = {r["key"]: r["hyp"] for r in map(json.loads, open(tmp_path / "p" / "results.jsonl"))}
    assert words["hush"] != "" or words["silent"] != ""
    # the gate with no window limit: short audio meets the VAD all the same
    unlimited = DecodeConfig(max_new_tokens=3, max_window_seconds=0, vad=str(vad_dir), ctc_weight=0.0)
    decode_manifest(model, manifest, tmp_path / "u", unlimited, DecodeOptions(num_workers=0))
    rows = {r["key"]: r for r in map(json.loads, open(tmp_path / "u" / "results.jsonl"))}
    assert rows["hush"]["hyp"] == "" and rows["hush"]["no_speech"] and rows["pause"]["windows"] == 1


def test_the_gate_s_empty_transcripts_have_no_confidence(model, long_manifest, vad_dir, tmp_path):
    """decode.confidence beside the gate: a recording it wrote nothing for has null avg_logprob and logprob (no text
    the LLM wrote to be sure of), the others a finite one, and wer.txt's median counts only those."""
    manifest, _ = long_manifest
    cfg = DecodeConfig(max_new_tokens=3, max_window_seconds=LIMIT, vad=str(vad_dir), ctc_weight=0.0, confidence=True)
    decode_manifest(model, manifest, tmp_path / "c", cfg, DecodeOptions(num_workers=0))
    rows = {r["key"]: r for r in map(json.loads, open(tmp_path / "c" / "results.jsonl"))}
    for key, row in rows.items():
        if key in ("silent", "hush"):
            assert row["no_speech"] and (row["avg_logprob"], row["logprob"]) == (None, None)
        else:
            assert row["logprob"] < 0 and row["avg_logprob"] < 0, row
    assert f" over {len(rows) - 2} utterances" in (tmp_path / "c" / "wer.txt").read_text()


def test_beside_the_ctc_gate_the_vad_s_silence_is_counted_as_the_vad_s(model, long_manifest, vad_dir, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    """A head that hears nothing anywhere: the CTC gate empties every recording the VAD let through, and the two the
    VAD found silent (whose half-second stand-ins the CTC gate emptied too) are the VAD's in wer.txt's counts."""
    manifest, _ = long_manifest
    monkeypatch.setitem(model._modules, "ctc_head", OracleCTCHead(model.ctc_tokenizer, defaultdict(str)))
    cfg = DecodeConfig(max_new_tokens=3, max_window_seconds=LIMIT, vad=str(vad_dir), ctc_weight=0.0, ctc_gate=True)
    summary = decode_manifest(model, manifest, tmp_path / "g", cfg, DecodeOptions(num_workers=0))
    rows = list(map(json.loads, open(tmp_path / "g" / "results.jsonl")))
    assert all(r["hyp"] == "" and r["no_speech"] is True for r in rows)
    assert summary["no_speech"] == 2 and summary["ctc_gate"]["utterances"] == len(rows) - 2
    text = (tmp_path / "g" / "wer.txt").read_text()
    assert "; 2 without speech (the VAD's gate): empty transcripts" in text
    assert f"CTC gate: {len(rows) - 2} utterances where the CTC head heard no word, left empty" in text


def test_decode_with_a_vad_scores_each_recording_once(model, long_manifest, vad_dir, tmp_path):
    manifest, _ = long_manifest
    cfg = DecodeConfig(max_new_tokens=2, max_window_seconds=LIMIT, vad=str(vad_dir))
    summary = decode_manifest(model, manifest, tmp_path / "o", cfg, DecodeOptions(num_workers=0))
    rows = [json.loads(line) for line in open(tmp_path / "o" / "results.jsonl")]
    assert [r["key"] for r in rows] == ["pause", "unbroken", "silent", "short", "hush"]
    assert [r["duration"] for r in rows] == pytest.approx([12.0, 14.0, 8.0, 2.0, 3.0], abs=1e-4)  # the audio's
    assert [r["windows"] for r in rows] == [2, 3, 1, 1, 1]  # a silent one is one item
    assert summary["audio_seconds"] == pytest.approx(39.0, abs=1e-3)
    assert f"split at the speech segments of the VAD {vad_dir}" in (tmp_path / "o" / "wer.txt").read_text()


def test_the_export_carries_its_vad(runs, vad_dir, tmp_path):
    from llmasr.export.export import export_model

    run = tmp_path / "run"
    shutil.copytree(runs[2], run)
    recipe = run / "recipe.yaml"
    data = yaml.safe_load(recipe.read_text())
    data.setdefault("decode", {})["vad"] = str(vad_dir)
    recipe.write_text(yaml.safe_dump(data))
    out = export_model(run, tmp_path / "exported")
    assert sorted(p.name for p in (out / "vad").iterdir()) == ["am.mvn", "config.yaml", "model.pt"]
    assert yaml.safe_load((out / "llmasr_model.yaml").read_text())["decode"]["vad"] == "vad"
    _, cfg, _ = load_decode_model(out)
    assert cfg.vad == str(out / "vad")
    wave = syllable_bursts(12.0, [(4.0, 7.0)], seed=1)
    assert FsmnVad.from_dir(cfg.vad).segments_ms(wave) == FsmnVad.from_dir(vad_dir).segments_ms(wave)


def test_bad_vad_settings_are_refused_before_decoding(exported_dir, long_manifest, vad_dir, tmp_path, capsys):
    manifest, _ = long_manifest
    with pytest.raises(ConfigError, match="decode.vad: .* is not a FunASR VAD directory"):
        DecodeConfig(vad=str(tmp_path)).validate("decode")
    with pytest.raises(ConfigError, match="decode.vad_max_end_silence_ms: must be > 0 ms"):
        DecodeConfig(vad_max_end_silence_ms=0).validate("decode")
    args = ["--model", str(exported_dir), "--data", str(manifest), "--output", str(tmp_path / "o")]
    assert main([*args, "--vad", str(tmp_path / "nowhere")]) == 2
    assert "is not a FunASR VAD directory" in capsys.readouterr().err
    assert main([*args, "--vad", str(vad_dir), "--vad-merge-seconds", "-1"]) == 2
    assert "decode.vad_merge_seconds: must be seconds >= 0 (0: a window a segment), got -1" in capsys.readouterr().err
    broken = write_fsmn_vad_dir(tmp_path / "broken")
    (broken / "model.pt").unlink()
    assert main([*args, "--vad", str(broken), "--max-window-seconds", "6"]) == 2
    assert "decode.vad: " in capsys.readouterr().err
    other_rate = write_fsmn_vad_dir(tmp_path / "8k", model_conf={"sample_rate": 8000})
    cfg = yaml.safe_load((other_rate / "config.yaml").read_text())
    cfg["frontend_conf"]["fs"] = 8000
    (other_rate / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main([*args, "--vad", str(other_rate), "--max-window-seconds", "6"]) == 2
    assert "reads 8000 Hz audio and the model 16000 Hz" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_transcribe_takes_a_vad_too(exported_dir, long_manifest, vad_dir, tmp_path, capsys):
    from llmasr.cli import main as cli
    from llmasr.export.transcribe import Transcriber

    wav = long_manifest[0].parent / "pause.wav"
    asr = Transcriber.load(exported_dir, max_new_tokens=2, max_window_seconds=LIMIT, vad=str(vad_dir))
    (row,) = asr.transcripts([wav])
    assert row["windows"] == 2 and row["duration"] == pytest.approx(12.0, abs=1e-4)
    assert cli(["transcribe", "--model", str(exported_dir), str(wav), "--vad", str(tmp_path)]) == 2
    assert "is not a FunASR VAD directory" in capsys.readouterr().err
    broken = write_fsmn_vad_dir(tmp_path / "broken")
    (broken / "model.pt").unlink()
    assert cli(["transcribe", "--model", str(exported_dir), str(wav), "--vad", str(broken)]) == 2
    assert "decode.vad: " in capsys.readouterr().err


def test_two_ranks_share_the_vad_and_write_what_one_process_writes(exported_dir, long_manifest, vad_dir, tmp_path):
    manifest, _ = long_manifest
    common = ["--model", str(exported_dir), "--data", str(manifest), "--max-new-tokens", "3", "--batch-seconds", "8",
              "--max-window-seconds", str(LIMIT), "--vad", str(vad_dir), "--ctc"]  # fmt: skip
    assert main([*common, "--num-workers", "0", "--output", str(tmp_path / "one")]) == 0
    port = free_port()
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), "--module", "llmasr", "decode", *common,
           "--num-workers", "1", "--output", str(tmp_path / "two")]  # fmt: skip
    proc = subprocess.run(cmd, env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_no_shm_left(port)
    # rank 0 read three of the five recordings (longest first, dealt in turn), rank 1 the other two
    said = proc.stdout + proc.stderr
    assert "read the audio of 5 utterance(s) for the VAD gate (3 on this rank, 1 worker(s))" in said
    one, two = tmp_path / "one", tmp_path / "two"
    for name in ("hyp.txt", "ref.txt", "results.jsonl", "ctc/results.jsonl"):
        assert (two / name).read_text() == (one / name).read_text(), name
    rows = {r["key"]: r for r in map(json.loads, open(two / "results.jsonl"))}
    assert rows["silent"]["no_speech"] and rows["hush"]["no_speech"] and rows["pause"]["windows"] == 2


def test_vad_flags_without_a_vad_are_refused(exported_dir, long_manifest, vad_dir, tmp_path, capsys):
    """--vad-merge-seconds, --vad-max-end-silence-ms and --no-vad-gate set how a VAD cuts: without --vad (and no
    decode.vad saved with the model) they had decoded as if not given, the windows cut by frame energies."""
    manifest, _ = long_manifest
    args = ["--model", str(exported_dir), "--data", str(manifest), "--output", str(tmp_path / "o")]
    assert main([*args, "--vad-merge-seconds", "10"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "--vad-merge-seconds: a setting of the VAD's segments, and this decode has no VAD (no --vad DIR, and the "
            "model's decode.vad is unset): give --vad DIR, or leave it out"
        )
    )
    assert main([*args, "--no-vad-gate", "--vad-max-end-silence-ms", "300"]) == 2
    assert "--vad-max-end-silence-ms, --no-vad-gate: settings of the VAD's segments" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main([*args, "--vad", str(vad_dir), "--no-vad-gate", "--max-new-tokens", "2"]) == 0
