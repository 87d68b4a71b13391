"""Transcribing from Python (llmasr.export.transcribe): files and waveforms give the texts `llmasr decode` gives for
the same audio, in order; audio that cannot be transcribed is an error naming it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from llmasr.config_io import ConfigError
from llmasr.export.decode import DecodeOptions, decode_manifest, load_decode_model
from llmasr.export.transcribe import TranscribeError, Transcriber
from llmasr.models.exported import ExportedModelError
from llmasr.testing.run_dirs import write_corpus

TEXTS = ["zero one two", "three four", "five six seven eight", "nine"]


@pytest.fixture(scope="module")
def asr(exported_dir):
    return Transcriber.load(exported_dir, max_new_tokens=4)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    manifest = write_corpus(tmp_path_factory.mktemp("clips"), TEXTS)
    paths = [manifest.parent / json.loads(line)["source"] for line in manifest.read_text().splitlines()]
    return manifest, paths


def decoded(asr, manifest, tmp_path, **opts) -> list[str]:
    """What `llmasr decode` writes for `manifest` with the Transcriber's model and settings."""
    decode_manifest(asr.model, manifest, tmp_path, asr.cfg, DecodeOptions(num_workers=0, **opts))
    return [json.loads(line)["hyp"] for line in open(tmp_path / "results.jsonl")]


def test_files_and_waveforms_give_the_texts_decode_gives(asr, clips, tmp_path):
    manifest, paths = clips
    want = decoded(asr, manifest, tmp_path / "d")
    assert any(want)  # the comparison is not of empty strings
    backwards = [str(p) for p in reversed(paths)]
    assert asr(backwards) == want[::-1]  # in the order given, not the batches'
    assert asr(paths[1]) == want[1]  # one clip: one text
    wave, rate = sf.read(paths[2], dtype="float32")
    assert asr([torch.from_numpy(wave), str(paths[0])], sample_rate=rate) == [want[2], want[0]]
    pcm, _ = sf.read(paths[2], dtype="int16")  # integer PCM is scaled to full scale 1.0, not read as floats
    assert asr(pcm, sample_rate=rate) == want[2] and asr(torch.from_numpy(pcm), sample_rate=rate) == want[2]
    full = sf.read(paths[2], dtype="int32")[0]  # 32-bit PCM at its own full scale
    assert asr(full, sample_rate=rate) == want[2]
    (row,) = asr.transcripts([paths[3]])
    assert set(row) == {"audio", "hyp", "ctc_hyp", "truncated", "windows", "duration"}
    assert (row["audio"], row["hyp"], row["windows"]) == (str(paths[3]), want[3], 1)
    assert row["duration"] == pytest.approx(sf.info(paths[3]).duration, abs=1e-3)
    assert asr([]) == []


def test_decoding_rules_out_cudnn_attention(asr, clips):
    """Every decoding step is a new shape for attention (the key-value cache grows), and cuDNN's fused attention
    builds a graph on the host for each: decoding leaves it out."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        assert asr(clips[1][0]) is not None
        assert torch.backends.cuda.cudnn_sdp_enabled() is False
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_a_clip_the_model_fails_on_is_named_by_its_path(asr, clips, monkeypatch):
    _, paths = clips

    def out_of_memory(batch, cfg):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(asr.model, "transcribe", out_of_memory)
    with pytest.raises(RuntimeError, match="CUDA out of memory") as raised:
        asr([str(paths[1])])
    assert raised.value.__notes__ == [f"while decoding the batch of {paths[1]}"]


def test_a_hotword_list_is_used_as_decode_uses_a_list_file(asr, clips, tmp_path):
    manifest, paths = clips
    phrases = ["seven eight", "nine"]
    assert asr(paths, hotwords=phrases) == decoded(asr, manifest, tmp_path / "h", hotwords=phrases)


def test_a_task_prompt_is_used_as_decode_uses_a_line_s_own_prompt(exported_dir, asr, clips, tmp_path, capsys):
    """A model trained on lines that carry their own prompt (a Chinese corpus's `prompt: 语音转写：`) could be decoded
    with it from a manifest, but `llmasr transcribe` and Transcriber always asked with model.prompt.task: the
    task given is what such a line's prompt gives, and a blank one is refused, not read as the model's."""
    from llmasr.cli import main

    manifest, paths = clips
    task = "语音转写："
    recs = [json.loads(line) for line in manifest.read_text().splitlines()]
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps(dict(r, source=str(manifest.parent / r["source"]), prompt=task),
                                      ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")  # fmt: skip
    want = decoded(asr, own, tmp_path / "d")
    assert asr(paths, task=task) == want and asr(paths[1], task=task) == want[1]
    assert asr(paths) == decoded(asr, manifest, tmp_path / "p")  # no task: the model's
    sure = Transcriber.load(exported_dir, max_new_tokens=4, confidence=True)  # the prompt moves what the LLM reads
    assert sure.transcripts(paths[:1], task=task)[0]["logprob"] != sure.transcripts(paths[:1])[0]["logprob"]
    with pytest.raises(TranscribeError, match=r"task: the prompt's task text, got ' '; leave it out"):
        asr(paths[0], task=" ")
    files = [str(p) for p in paths[:2]]
    assert main(["transcribe", "--model", str(exported_dir), *files, "--task", task, "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{f}\t{' '.join(t.split())}" for f, t in zip(files, want)]


def test_audio_that_cannot_be_transcribed_is_named(asr, clips, tmp_path):
    _, paths = clips
    with pytest.raises(TranscribeError, match="nope.wav: no such audio file"):
        asr([paths[0], tmp_path / "nope.wav"])
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    with pytest.raises(TranscribeError, match=rf"cannot transcribe 1 of 2 clips: {corrupt}: .*unreadable or corrupt"):
        asr([paths[0], corrupt])
    with pytest.raises(TranscribeError, match=r"waveform 0: expected a non-empty mono waveform \(1-D\), got shape"):
        asr(torch.zeros(2, 1600), sample_rate=16000)
    with pytest.raises(TranscribeError, match=r"got shape \(1600, 2\) \(several channels: average them"):
        asr(np.zeros((1600, 2), dtype=np.float32), sample_rate=16000)
    with pytest.raises(TranscribeError, match=r"waveform 0: float samples reach \d{4,5}, expected full scale 1.0"):
        asr(sf.read(paths[0], dtype="int16")[0].astype(np.float32), sample_rate=16000)
    pcm = sf.read(paths[0], dtype="int16")[0]  # 16-bit values in a wider array had decoded as near-silence
    for wide in (pcm.astype(np.int64), pcm.astype(np.int32), torch.tensor(pcm.tolist())):
        with pytest.raises(TranscribeError, match=r"waveform 0: int(32|64) samples that never pass 16-bit full"):
            asr(wide, sample_rate=16000)
    with pytest.raises(TranscribeError, match="waveform 0: a waveform needs its sample_rate"):
        asr(torch.zeros(1600))
    with pytest.raises(TranscribeError, match=r"hotwords: a list of phrases, got the text 'Zhang Wei'"):
        asr(paths[0], hotwords="Zhang Wei")  # list() of it had biased towards its letters
    with pytest.raises(TranscribeError, match="sample_rate: a whole number of Hz, got 44100.5"):
        asr(torch.zeros(1600), sample_rate=44100.5)


def test_a_corrupt_file_among_many_is_named_and_the_others_still_transcribed(exported_dir, clips, tmp_path, capsys):
    """The command had printed nothing for any file when one could not be read; now the others print in order, the
    bad one is named on stderr where it falls, and the exit status says so (1)."""
    from llmasr.cli import main

    _, paths = clips
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    asr = Transcriber.load(exported_dir)
    rows = asr.transcripts([paths[1], corrupt, paths[0]], keep_going=True)
    assert [r["audio"] for r in rows] == [str(paths[1]), str(corrupt), str(paths[0])]
    assert "unreadable or corrupt" in rows[1]["error"] and "hyp" not in rows[1]
    assert [rows[0]["hyp"], rows[2]["hyp"]] == asr([paths[1], paths[0]]) and "error" not in rows[0]
    assert main(["transcribe", "--model", str(exported_dir), str(paths[1]), str(corrupt), str(paths[0])]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{paths[1]}\t{rows[0]['hyp']}", f"{paths[0]}\t{rows[2]['hyp']}"]
    assert f"llmasr transcribe: error: {corrupt}: " in err and "unreadable or corrupt" in err
    assert "1 of 3 files could not be transcribed" in err


def test_a_missing_file_among_many_gets_its_row_with_keep_going(asr, clips, tmp_path):
    """keep_going gives a file that cannot be read its error row (README); a missing one had raised for the whole
    call, so one deleted file of a long list lost every transcript."""
    _, paths = clips
    gone = tmp_path / "gone.wav"
    rows = asr.transcripts([paths[1], gone, tmp_path, paths[0]], keep_going=True)
    assert [r["audio"] for r in rows] == [str(paths[1]), str(gone), str(tmp_path), str(paths[0])]
    assert rows[1] == {"audio": str(gone), "error": "no such audio file"}
    assert rows[2] == {"audio": str(tmp_path), "error": "a directory, not an audio file"}
    assert [rows[0]["hyp"], rows[3]["hyp"]] == asr([paths[1], paths[0]])
    assert asr.transcripts([gone], keep_going=True) == [{"audio": str(gone), "error": "no such audio file"}]
    with pytest.raises(TranscribeError, match=f"^{gone}: no such audio file$"):
        asr.transcripts([paths[1], gone])


def test_a_file_name_that_is_not_utf8_is_transcribed(asr, clips, tmp_path):
    """A name in a legacy encoding (Latin-1, or GBK as a Chinese Windows archive unpacks: bytes Python gives as lone
    surrogates) had failed the whole call with a UnicodeEncodeError naming no file, then failed alone, refused by
    the manifest its path went through; the audio is fine, and is transcribed under the name given."""
    import os
    import shutil

    _, paths = clips
    latin1, gbk = tmp_path / os.fsdecode(b"caf\xe9.wav"), tmp_path / os.fsdecode("录音".encode("gbk") + b".wav")
    shutil.copy(paths[0], latin1)
    shutil.copy(paths[2], gbk)
    rows = asr.transcripts([latin1, paths[1], gbk], keep_going=True)
    assert [r["audio"] for r in rows] == [str(latin1), str(paths[1]), str(gbk)]
    assert [r.get("hyp") for r in rows] == asr([paths[0], paths[1], paths[2]])


def test_a_file_not_utf8_named_that_cannot_be_read_is_named_as_given(asr, clips, tmp_path):
    """Such a clip is read through a link in the call's folder: when it cannot be decoded, its error names the path
    given, not the link (a temporary file the caller never saw, gone once the call returns)."""
    import os

    _, paths = clips
    broken = tmp_path / os.fsdecode("坏".encode("gbk") + b".wav")
    broken.write_bytes(b"RIFF not a wav file at all")
    rows = asr.transcripts([broken, paths[1]], keep_going=True)
    assert rows[0]["audio"] == str(broken) and "error" in rows[0] and rows[1].get("hyp") is not None
    assert str(broken) in rows[0]["error"] and "llmasr-transcribe-" not in rows[0]["error"], rows[0]["error"]


def test_the_command_prints_a_name_that_is_not_utf8_as_its_bytes(exported_dir, clips, tmp_path):
    """Under a UTF-8 locale's strict stdout, a file name in GBK had made `llmasr transcribe` fail once every file was
    decoded (UnicodeEncodeError, nothing printed); it prints the name's own bytes, as `ls` does, and --timestamps
    a JSON line whose name is escaped (still UTF-8 JSON)."""
    import os
    import shutil
    import subprocess
    import sys

    _, paths = clips
    name = os.path.join(os.fsencode(tmp_path), "录音".encode("gbk") + b".wav")
    shutil.copy(paths[0], name)
    run = [sys.executable, "-m", "llmasr", "transcribe", "--model", str(exported_dir), os.fsdecode(name)]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    out = subprocess.run(run, env=env, capture_output=True, timeout=300)
    hyp = Transcriber.load(exported_dir)(paths[0])
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    assert out.stdout == name + b"\t" + " ".join(hyp.split()).encode() + b"\n"
    out = subprocess.run([*run[:6], "--timestamps", run[-1]], env=env, capture_output=True, timeout=300)
    assert out.returncode == 0 and json.loads(out.stdout.decode("utf-8"))["audio"] == os.fsdecode(name)


def test_the_command_names_a_file_not_utf8_named_on_stderr_by_its_bytes(exported_dir, clips, tmp_path):
    """stdout printed a GBK name as its bytes, but stderr's error and warning lines named it `\\udcbb\\udcb5.wav`
    (Python's escapes of the bytes): a name found in no directory listing, and no shell can give it back."""
    import os
    import subprocess
    import sys

    broken = os.path.join(os.fsencode(tmp_path), "坏".encode("gbk") + b".wav")
    with open(broken, "wb") as f:
        f.write(b"RIFF\x10\x00\x00\x00WAVE")  # a header cut short
    run = [sys.executable, "-m", "llmasr", "transcribe", "--model", str(exported_dir), os.fsdecode(broken)]
    out = subprocess.run(run, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"}, capture_output=True, timeout=300)
    assert out.returncode == 1
    assert b"llmasr transcribe: error: " + broken + b": " in out.stderr and b"\\udc" not in out.stderr, out.stderr


def test_a_bfloat16_waveform_is_read_as_its_float_values(asr, clips):
    """numpy has no bfloat16: the tensor had failed with a bare TypeError."""
    wave, rate = sf.read(clips[1][2], dtype="float32")
    half = torch.from_numpy(wave).bfloat16()
    assert asr(half, sample_rate=rate) == asr(half.float(), sample_rate=rate)


def test_settings_given_override_the_saved_ones_and_are_checked_at_load(exported_dir):
    _, saved, _ = load_decode_model(exported_dir)
    asr = Transcriber.load(exported_dir, num_beams=2, max_new_tokens=3)
    assert asr.cfg == dataclasses.replace(saved, num_beams=2, max_new_tokens=3)
    with pytest.raises(ConfigError, match="decode.num_beams"):
        Transcriber.load(exported_dir, num_beams=0)
    with pytest.raises(TypeError, match=r"^Transcriber.load: unknown setting 'num_beam'; did you mean 'num_beams'\?$"):
        Transcriber.load(exported_dir, num_beam=4)
    with pytest.raises(TypeError, match=r"unknown setting 'beams'"):  # before the model loads (none is there)
        Transcriber.load(exported_dir.parent / "nowhere", beams=4)
    # what each call takes (README: `Transcriber` `task=`) had been "unknown setting(s) ['task']", naming no way on
    with pytest.raises(TypeError, match=r"task is given to each call, not to load: asr\(audio, task=\.\.\.\)"):
        Transcriber.load(exported_dir, task="Transcribe this:")
    # a setting of the wrong type is named as a recipe's is: timestamps="false" had turned word times on (a true
    # string), num_beams="4" failed as a bare comparison of str and int
    with pytest.raises(ConfigError, match="decode.timestamps: expected true/false, got 'false'"):
        Transcriber.load(exported_dir, timestamps="false")
    with pytest.raises(ConfigError, match="decode.num_beams: expected an integer, got '4'"):
        Transcriber.load(exported_dir, num_beams="4")
    model = asr.model
    head, model.ctc_head = model.ctc_head, None  # a model without a CTC head cannot be guided by one
    try:
        with pytest.raises(ConfigError, match="CTC-guided decoding needs a CTC head"):
            Transcriber(model, dataclasses.replace(saved, ctc_weight=0.5))
    finally:
        model.ctc_head = head


def test_samples_in_a_list_are_named_as_such(asr):
    """A list holds clips, so a plain list of samples made each number a clip: the error said shape () alone."""
    samples = (0.1 * np.sin(np.arange(8000) / 10)).tolist()
    with pytest.raises(TranscribeError, match=r"waveform 0: .*got shape \(\) \(one number: samples in a list\? pass"):
        asr(samples, sample_rate=16000)


def test_a_call_with_many_bad_clips_names_the_first_and_counts_the_rest(asr, tmp_path):
    # a second of samples in a list had made an error of 16,000 clauses (2 MB) in the traceback; 500 missing files
    # one of 17 kB
    samples = (0.1 * np.sin(np.arange(16000) / 10)).tolist()
    with pytest.raises(TranscribeError) as err:
        asr(samples, sample_rate=16000)
    said = str(err.value)
    assert len(said) < 2000 and "waveform 0: " in said and "samples in a list? pass" in said
    assert "and 15990 more (transcripts(..., keep_going=True) gives each its row)" in said
    with pytest.raises(TranscribeError) as err:
        asr([str(tmp_path / f"{i}.wav") for i in range(500)])
    said = str(err.value)
    assert len(said) < 2000 and f"{tmp_path / '0.wav'}: " in said and "and 490 more" in said
    two = str(tmp_path / "a.wav"), str(tmp_path / "b.wav")  # a few are each named, none counted
    with pytest.raises(TranscribeError, match=r"a.wav: .*; .*b.wav: [^;]*$"):
        asr(list(two))


def test_load_takes_one_model_an_export_or_a_checkpoint(exported_dir, runs):
    """Neither had failed on None naming nothing (a TypeError about os.PathLike); both had used the export alone."""
    for args, kwargs, which in (((), {}, "neither"), ((exported_dir,), {"checkpoint": runs[2]}, "both")):
        with pytest.raises(TranscribeError, match=f"Transcriber.load: give one model.*; got {which}"):
            Transcriber.load(*args, **kwargs)


def test_the_command_prints_a_line_per_file_in_the_order_given(exported_dir, clips, tmp_path, capsys):
    from llmasr.cli import main

    _, paths = clips
    files = [str(paths[2]), str(paths[0])]
    want = Transcriber.load(exported_dir)(files)
    assert main(["transcribe", "--model", str(exported_dir), *files, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{f}\t{t}" for f, t in zip(files, want)]
    assert main(["transcribe", "--model", str(exported_dir), str(tmp_path / "gone.wav")]) == 2
    assert f"llmasr transcribe: error: {tmp_path / 'gone.wav'}: no such audio file" in capsys.readouterr().err
    assert main(["transcribe", "--model", str(exported_dir), str(tmp_path)]) == 2
    assert f"llmasr transcribe: error: {tmp_path}: a directory, not an audio file" in capsys.readouterr().err
    # files after an option are files too (they had been "unrecognized arguments")
    assert main(["transcribe", files[0], "--model", str(exported_dir), files[1], "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{f}\t{t}" for f, t in zip(files, want)]


def test_a_transcript_with_line_breaks_prints_on_one_line(exported_dir, clips, monkeypatch, capsys):
    """A line a file, whatever the LLM wrote (a newline in a hypothesis had split a file's line in two)."""
    from llmasr.cli import main

    _, paths = clips
    real = Transcriber.transcripts

    def broken(self, *args, on_row, **kwargs):  # each row as it is given out (the command prints it then)
        return real(self, *args, on_row=lambda i, row: on_row(i, {**row, "hyp": "one\ntwo\r three"}), **kwargs)

    monkeypatch.setattr(Transcriber, "transcripts", broken)
    assert main(["transcribe", "--model", str(exported_dir), str(paths[0]), str(paths[1])]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{paths[0]}\tone two three", f"{paths[1]}\tone two three"]


def test_an_empty_hotword_is_named_as_the_lists_fault(asr, clips):
    _, paths = clips
    for bad in ([""], ["ok", "  "], ["ok", 3]):
        with pytest.raises(TranscribeError, match=r"^hotwords\[\d\]: expected a non-empty phrase"):
            asr.transcripts([str(paths[0])], hotwords=bad)


def test_a_hotword_is_read_as_its_words_one_space_apart(asr, clips, monkeypatch):
    """A phrase given with a tab or a run of spaces had reached the prompt and the search as written, a spelling no
    transcript holds, so the boost never matched it; it is read as a manifest's or a list file's phrase is."""
    _, paths = clips
    seen = []
    capped = asr.model.prompt.capped_hotwords
    monkeypatch.setattr(asr.model.prompt, "capped_hotwords", lambda hw: seen.append(list(hw or ())) or capped(hw))
    asr.transcripts([str(paths[0])], hotwords=["seven\teight", " nine  ten "])
    listed = [hw for hw in seen if hw]  # the plain prompt is counted too
    assert listed and all(hw == ["seven eight", "nine ten"] for hw in listed)


def test_a_hotword_list_given_as_any_iterable_is_read_whole(asr, clips, monkeypatch):
    """A generator had been used up by the check of its phrases, and the clips were transcribed with no list, unsaid;
    a dict (FunASR-runtime's phrase -> weight) had lost its weights unsaid. A phrase repeated, or written decomposed
    beside its composed form, is one phrase, as in a manifest's list or a file."""
    import unicodedata

    _, paths = clips
    seen = []
    capped = asr.model.prompt.capped_hotwords
    monkeypatch.setattr(asr.model.prompt, "capped_hotwords", lambda hw: seen.append(list(hw or ())) or capped(hw))
    for given in ((p for p in ["nine", "Café"]), ("nine", unicodedata.normalize("NFD", "Café"), "Café", "nine")):
        seen.clear()
        asr.transcripts([str(paths[0])], hotwords=given)
        assert [hw for hw in seen if hw] and all(hw == ["nine", "Café"] for hw in seen if hw), seen
    with pytest.raises(TranscribeError, match=r"^hotwords: a list of phrases, got a dict \{'nine': 20\}; llmasr "):
        asr.transcripts([str(paths[0])], hotwords={"nine": 20})
    with pytest.raises(TranscribeError, match=r"^hotwords: a list of phrases, got int 5$"):
        asr.transcripts([str(paths[0])], hotwords=5)


def test_transcripts_takes_one_clip_as_a_list_of_one(asr, clips):
    """A path, a Path or a waveform given alone (its letters, a TypeError or its samples had been taken for clips)."""
    _, paths = clips
    want = asr.transcripts([str(paths[0])])
    assert asr.transcripts(str(paths[0])) == want == asr.transcripts(paths[0])
    wave, sr = sf.read(paths[0], dtype="float32")
    assert asr.transcripts(wave, sample_rate=sr)[0]["hyp"] == want[0]["hyp"]


def test_long_audio_is_decoded_in_windows_as_decode_does(exported_dir, clips, tmp_path):
    _, paths = clips
    wave = np.concatenate([sf.read(p, dtype="float32")[0] for p in paths * 2])  # about 5 s
    sf.write(tmp_path / "long.wav", wave, 16000)
    (tmp_path / "long.jsonl").write_text(json.dumps({"key": "long", "source": "long.wav"}) + "\n")
    asr = Transcriber.load(exported_dir, max_new_tokens=4, max_window_seconds=2.0, window_overlap=0.25)
    (row,) = asr.transcripts([tmp_path / "long.wav"])
    assert row["windows"] >= 2
    assert row["hyp"] == decoded(asr, tmp_path / "long.jsonl", tmp_path / "d")[0]
    # each window's span and text as results.jsonl gives them (pseudo-labels and window checks read them)
    (result,) = [json.loads(line) for line in open(tmp_path / "d" / "results.jsonl")]
    assert row["window_texts"] == result["window_texts"] and len(row["window_texts"]) == row["windows"]


def test_the_command_sets_the_windows_of_long_audio(exported_dir, clips, tmp_path, capsys):
    """`llmasr transcribe` of a long file had no window flag: a Whisper model's 30 s windows, or none, could be set
    from Python only. The command's text is the Transcriber's with the same settings."""
    from llmasr.cli import main

    _, paths = clips
    wave = np.concatenate([sf.read(p, dtype="float32")[0] for p in paths * 2])  # about 5 s
    sf.write(tmp_path / "long.wav", wave, 16000)
    long = str(tmp_path / "long.wav")
    for flags, kw in ((["--max-window-seconds", "2.5", "--window-split-pause", "0"],
                       {"max_window_seconds": 2.5, "window_split_pause": 0.0}),
                      (["--max-window-seconds", "0"], {"max_window_seconds": 0.0})):  # fmt: skip
        (row,) = Transcriber.load(exported_dir, **kw).transcripts([long])
        assert (row["windows"] == 1) == (kw["max_window_seconds"] == 0), row
        assert main(["transcribe", "--model", str(exported_dir), long, "--device", "cpu", *flags]) == 0
        assert capsys.readouterr().out.splitlines() == [f"{long}\t{' '.join(row['hyp'].split())}"]
    assert main(["transcribe", "--model", str(exported_dir), long, "--max-window-seconds", "-1"]) == 2
    assert "--max-window-seconds" in capsys.readouterr().err
    # the JSON lines carry each window's span and text, as the Transcriber's rows and results.jsonl do
    (row,) = Transcriber.load(exported_dir, max_window_seconds=2.5, confidence=True).transcripts([long])
    assert main(["transcribe", "--model", str(exported_dir), long, "--max-window-seconds", "2.5", "--confidence"]) == 0
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert line["window_texts"] == row["window_texts"] and len(line["window_texts"]) == row["windows"] >= 2
    assert line["window_confidence"] == row["window_confidence"]


def test_a_bad_waveform_among_many_gets_its_row_with_keep_going(asr, clips):
    """keep_going gives a clip that cannot be transcribed its error row; a waveform with NaN samples or of the wrong
    shape had raised for the whole call (a waveform too short for a frame already got its row)."""
    _, paths = clips
    wave, rate = sf.read(paths[0], dtype="float32")
    nan = np.full(1600, np.nan, dtype=np.float32)
    rows = asr.transcripts([paths[1], nan, np.zeros((2, 1600), np.float32), wave], rate, keep_going=True)
    assert [r["audio"] for r in rows] == [str(paths[1]), "waveform 1", "waveform 2", "waveform 3"]
    assert rows[1] == {"audio": "waveform 1", "error": "the waveform holds NaN or infinite samples"}
    assert rows[2]["error"].startswith("expected a non-empty mono waveform (1-D), got shape (2, 1600)")
    assert [rows[0]["hyp"], rows[3]["hyp"]] == asr([paths[1], wave], sample_rate=rate)
    with pytest.raises(TranscribeError, match="^waveform 1: the waveform holds NaN or infinite samples$"):
        asr.transcripts([paths[1], nan], rate)
    with pytest.raises(TranscribeError, match="^waveform 1: a waveform needs its sample_rate"):  # the call's fault
        asr.transcripts([paths[1], wave], keep_going=True)


def test_any_path_like_is_a_file_and_a_clip_of_neither_kind_is_named_as_such(asr, clips):
    """A py.path (pytest's tmpdir) had been taken for a waveform, and it, None or bytes for 'one number'."""
    import py

    _, paths = clips
    assert asr([py.path.local(paths[0]), paths[1]]) == asr([str(paths[0]), paths[1]])
    for odd in (None, bytes(paths[0])):
        with pytest.raises(TranscribeError, match=r"^waveform 1: expected an audio file path \(str, Path\) or a wave"):
            asr([paths[0], odd], sample_rate=16000)


def test_hotwords_the_prompts_cap_drops_are_named(asr, clips, caplog, monkeypatch):
    """A list longer than the model's hotwords_max_tokens lost its longest phrases without a word (decode counts
    them in wer.txt, training in train.log)."""
    _, paths = clips
    monkeypatch.setattr(asr.model.prompt, "hotwords_max_tokens", 4)
    with caplog.at_level("WARNING", logger="llmasr.export.transcribe"):
        asr(paths[0], hotwords=["nine"])
        assert not caplog.records
        asr(paths[0], hotwords=["alpha beta gamma delta", "nine", "Zhang Wei Zhang Wei"])
    assert "2 of the 3 given are dropped, the longest first; kept ['nine']" in caplog.text


def test_a_single_channel_waveform_first_or_last_is_mono(asr, clips):
    """torchaudio.load gives a mono file as [1, N]: it had been refused as 'several channels'."""
    wave, rate = sf.read(clips[1][0], dtype="float32")
    want = asr(wave, sample_rate=rate)
    assert asr(torch.from_numpy(wave)[None], sample_rate=rate) == want == asr(wave[:, None], sample_rate=rate)


def test_an_array_of_several_channels_is_refused_saying_why_and_how_a_file_of_them_is_read(asr, clips, tmp_path):
    """A two-channel file is read with its channels averaged; a two-channel array is refused, as an array does not say
    which axis holds channels (torchaudio.load's [channels, frames] looks as a batch of clips does, which averaged
    would be one wrong transcript). The error had said "average them, or pick one" without why or along which axis:
    it gives the expression for the layout given, which transcribes as the file does."""
    _, paths = clips
    left, rate = sf.read(paths[0], dtype="float32")
    right, _ = sf.read(paths[1], dtype="float32", frames=len(left), fill_value=0.0)
    stereo = np.stack([left, right], axis=1)  # [frames, channels], as soundfile.read gives them
    sf.write(tmp_path / "stereo.wav", stereo, rate, subtype="FLOAT")
    why = (
        "An array, unlike a file, does not say which axis holds channels: torchaudio.load's [channels, frames] looks as"
    )
    with pytest.raises(TranscribeError) as refused:
        asr(stereo, sample_rate=rate)
    assert f"got shape {stereo.shape} (several channels: average them as a file of 2 channels is read, " \
           "wave.mean(axis=1), or pick one, wave[:, 0]. " + why in str(refused.value)  # fmt: skip
    first = torch.from_numpy(stereo.T.copy())  # [channels, frames], as torchaudio.load gives them
    with pytest.raises(TranscribeError) as refused:
        asr(first, sample_rate=rate)
    assert "(several channels: average them as a file of 2 channels is read, wave.mean(axis=0), or pick one, " \
           "wave[0]; 2 clips? pass them as a list, list(wave). " + why in str(refused.value)  # fmt: skip
    want = asr(tmp_path / "stereo.wav")
    assert asr(stereo.mean(axis=1), sample_rate=rate) == want == asr(first.mean(axis=0), sample_rate=rate)


def test_a_pipe_is_named_as_a_pipe_not_as_missing(exported_dir, tmp_path, capsys):
    """`llmasr transcribe --model DIR /dev/stdin` (or <(...)) fed by a pipe had said 'no such audio file'."""
    import os

    from llmasr.cli import main

    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    assert main(["transcribe", "--model", str(exported_dir), str(fifo)]) == 2
    assert f"error: {fifo}: a pipe or device, not an audio file (save it to a file first)" in capsys.readouterr().err

    # "-" for standard input, as other tools take it, had been called a missing file
    assert main(["transcribe", "--model", str(exported_dir), "-"]) == 2
    said = "error: -: standard input is not read as audio (audio is read more than once): save it to a file first"
    assert f"{said} (a list of files on standard input: --files-from -)" in capsys.readouterr().err


def test_a_name_with_a_tab_or_line_break_prints_on_one_line(exported_dir, clips, tmp_path, capsys):
    """A file named "take\\n2.wav" had printed as two lines, "take" and "2.wav<TAB>TEXT": a script reading a line a
    file took "take" for a file with no transcript."""
    import shutil

    from llmasr.cli import main

    _, paths = clips
    odd = tmp_path / "take\n2\tb\\.wav"
    shutil.copy(paths[0], odd)
    assert main(["transcribe", "--model", str(exported_dir), str(odd), str(paths[1])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [f"{tmp_path}/take\\n2\\tb\\\\.wav", str(paths[1])]
    assert all(line.count("\t") == 1 for line in lines)


def test_a_glob_pattern_given_as_a_clip_says_it_is_one(exported_dir, asr, clips, tmp_path, capsys):
    """asr("data/*.wav"), or a quoted pattern on the command line, had been "no such audio file" alone."""
    from llmasr.cli import main

    _, paths = clips
    pattern = str(paths[0].parent / "*.wav")
    with pytest.raises(TranscribeError) as e:
        asr(pattern)
    assert str(e.value) == (
        f"{pattern}: no such audio file; a pattern, which {len(paths)} files match? expand it: the shell does "
        f"unquoted, Python with sorted(glob.glob({pattern!r}))"
    )
    assert main(["transcribe", "--model", str(exported_dir), pattern]) == 2
    assert f"{pattern}: no such audio file; a pattern, which {len(paths)} files match?" in capsys.readouterr().err
    with pytest.raises(TranscribeError, match=r"nope\*\.wav: no such audio file$"):  # matching nothing: no hint
        asr(str(tmp_path / "nope*.wav"))


def test_32_bit_pcm_in_an_int64_array_is_refused_not_decoded_as_silence(asr, clips):
    """32-bit samples in int64 (np.array or torch.tensor of a list of them) had been scaled by int64's range, about
    1e-9 of full scale, and decoded as silence without a word."""
    pcm, rate = sf.read(clips[1][2], dtype="int32")
    for wide in (pcm.astype(np.int64), torch.tensor(pcm.tolist())):
        with pytest.raises(TranscribeError, match=r"waveform 0: int64 samples that never pass 32-bit full scale"):
            asr(wide, sample_rate=rate)


def test_a_clip_that_cannot_be_read_is_named_by_its_path_alone(exported_dir, asr, clips, tmp_path, caplog):
    """A clip the loader cannot read or featurise had also been logged by the line of the temporary manifest the
    Transcriber writes for it ("decode audio.jsonl: skipping bad item /tmp/llmasr-transcribe-…/audio.jsonl:1 (key 0)"),
    a folder gone by then, beside the error that names the clip; `llmasr decode` still logs its bad lines."""
    import logging

    from llmasr.cli import main

    manifest, paths = clips
    short, corrupt = tmp_path / "short.wav", tmp_path / "corrupt.wav"
    sf.write(short, np.zeros(160, dtype=np.float32), 16000)  # 10 ms: no feature frame
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    caplog.set_level(logging.INFO)
    rows = asr.transcripts([short, corrupt, paths[0]], keep_going=True)
    assert "audio too short for one feature frame" in rows[0]["error"] and "unreadable" in rows[1]["error"]
    assert main(["transcribe", "--model", str(exported_dir), str(short), str(paths[0])]) == 1
    logged = [r.getMessage() for r in caplog.records]
    assert [m for m in logged if "llmasr-transcribe-" in m or "bad item" in m] == [], logged
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": "short", "source": str(short), "target": "x"}) + "\n")
    decode_manifest(asr.model, bad, tmp_path / "o", asr.cfg, DecodeOptions(num_workers=0, max_bad_fraction=1.0))
    assert any("skipping bad item" in r.getMessage() and "(key short)" in r.getMessage() for r in caplog.records)


def test_a_rate_in_khz_is_refused_not_decoded_as_minutes_of_noise(asr, clips):
    """sample_rate=16 (kHz meant) had stretched 0.1 s into 100 s of 'audio' and returned its noise as the text."""
    _, paths = clips
    wave = sf.read(paths[0], dtype="float32")[0][:1600]
    with pytest.raises(TranscribeError, match=r"^sample_rate: 16 Hz is too low for audio .*sample_rate=16000$"):
        asr(wave, sample_rate=16)
    with pytest.raises(TranscribeError, match=r"^sample_rate: a positive number of Hz, got 0$"):  # not 'needs' one
        asr(wave, sample_rate=0)
    assert asr(wave, sample_rate=np.int64(16000)) == asr(wave, sample_rate=16000)


def test_a_clip_of_neither_kind_is_named_as_such_without_a_sample_rate(asr, clips):
    """None, a file's bytes, a BytesIO or an open file had been 'a waveform needs its sample_rate' when no rate was
    given: the rate given, it then said they were no waveform."""
    import io

    _, paths = clips
    data = paths[0].read_bytes()
    with open(paths[0], "rb") as opened:
        for odd in (None, data, io.BytesIO(data), opened, iter([paths[0]])):
            with pytest.raises(TranscribeError, match=r"^waveform 1: expected an audio file path \(str, Path\) or a"):
                asr([paths[1], odd])
    with pytest.raises(TranscribeError, match=r"got bytes: a file's contents\? read them with soundfile.read"):
        asr(data)
    with pytest.raises(TranscribeError, match=r"waveform 0: .*got an array of text \(<U\d+\): file names\? pass a"):
        asr(np.array([str(p) for p in paths]))


def test_an_empty_path_is_named_as_empty_not_as_a_directory(exported_dir, asr, capsys):
    """Path('') is '.': an empty name (an unset setting) had been ': a directory, not an audio file'."""
    from llmasr.cli import main

    with pytest.raises(TranscribeError, match=r"^'': an empty path, not an audio file$"):
        asr("")
    assert asr.transcripts([""], keep_going=True) == [{"audio": "", "error": "an empty path, not an audio file"}]
    assert main(["transcribe", "--model", str(exported_dir), ""]) == 2
    assert "llmasr transcribe: error: '': an empty path, not an audio file" in capsys.readouterr().err


def test_a_dtype_of_no_llm_weights_is_named(exported_dir):
    """A torch dtype other than float32 / bfloat16 / float16 had been a bare StopIteration."""
    with pytest.raises(ExportedModelError, match=r"dtype must be one of bf16, fp16, fp32 .*got torch.int8"):
        Transcriber.load(exported_dir, dtype=torch.int8)


def test_an_adapter_export_whose_base_moved_transcribes_over_a_copy_of_it_given(
    runs, base_dirs, clips, tmp_path, capsys
):
    """An adapter export moved to another machine names a base LLM folder that is not there: the refusal says how
    to give its copy, and `--base-llm` (base_llm=) decodes over the copy as over the base itself. The copy is
    fingerprinted: another LLM is refused, as is a base given for a merged export or a checkpoint."""
    import shutil

    import yaml

    from llmasr.cli import main
    from llmasr.export.export import export_model
    from llmasr.models.exported import MODEL_FILE
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    out = export_model(runs[2], tmp_path / "adapter", adapter_only=True)
    files = [str(p) for p in clips[1][:2]]
    want = Transcriber.load(out, max_new_tokens=4)(files)
    copy = shutil.copytree(base_dirs[0], tmp_path / "elsewhere" / "llm")
    desc = yaml.safe_load((out / MODEL_FILE).read_text())
    gone = tmp_path / "gone" / "llm"
    desc["llm"]["base"] = str(gone)  # as on a machine where the export's base path does not exist
    (out / MODEL_FILE).write_text(yaml.safe_dump(desc))

    with pytest.raises(ExportedModelError, match=f"the base LLM {gone} this adapter export applies to is missing.*"
                                                 r"--base-llm DIR .*base_llm=DIR \(Transcriber.load\)"):  # fmt: skip
        Transcriber.load(out)
    assert Transcriber.load(out, base_llm=copy, max_new_tokens=4)(files) == want
    assert main(["transcribe", "--model", str(out), "--base-llm", str(copy), *files, "--device", "cpu"]) == 0
    got = [line.split("\t", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert got == Transcriber.load(out, base_llm=copy)(files)
    args = ["--model", str(out), "--data", str(clips[0]), "--num-workers", "0", "--device", "cpu"]
    assert main(["decode", *args, "--base-llm", str(copy), "--output", str(tmp_path / "dec")]) == 0
    assert (tmp_path / "dec" / "results.jsonl").is_file()
    assert main(["decode", *args, "--output", str(tmp_path / "dec2")]) == 2
    assert "--base-llm DIR (llmasr decode, transcribe)" in capsys.readouterr().err

    other = write_tiny_llm_dir(tmp_path / "other_llm", seed=7)
    with pytest.raises(ExportedModelError, match=f"{other}: not the base LLM the adapter export {out} was trained on"):
        Transcriber.load(out, base_llm=other)
    assert main(["transcribe", "--model", str(out), "--base-llm", str(tmp_path / "nowhere"), *files]) == 2
    assert f"{tmp_path / 'nowhere'}: the base LLM given for the adapter export {out} is not a folder" in (
        capsys.readouterr().err
    )
    merged = export_model(runs[2], tmp_path / "merged")
    with pytest.raises(ExportedModelError, match=r"a base LLM was given .* this export holds its whole LLM"):
        Transcriber.load(merged, base_llm=copy)
    with pytest.raises(ExportedModelError, match="a base LLM is given only for an adapter export"):
        Transcriber.load(checkpoint=runs[2], base_llm=copy)
    with pytest.raises(SystemExit):
        main(["transcribe", "--checkpoint", str(runs[2]), "--base-llm", str(copy), *files])
    assert "--base-llm is the base LLM of an adapter export (--model DIR)" in capsys.readouterr().err


def test_hotwords_given_as_funasr_text_offer_one_phrase_or_several(exported_dir, asr, clips, capsys):
    """FunASR's generate(hotword="魔搭 达摩院") is two phrases; hotwords="魔搭 达摩院" had been told to pass it as one,
    and `llmasr transcribe --hotwords "魔搭 达摩院"` to write two lines: each now offers both forms."""
    from llmasr.cli import main

    _, paths = clips
    with pytest.raises(TranscribeError, match=r"^hotwords: a list of phrases, got the text '魔搭 达摩院'; pass "
                       r"\['魔搭 达摩院'\] for one phrase with a space, or \['魔搭', '达摩院'\] for 2 phrases "
                       r"\(FunASR's generate\(hotword=\.\.\.\) splits its text at spaces\)$"):  # fmt: skip
        asr(paths[0], hotwords="魔搭 达摩院")
    with pytest.raises(TranscribeError, match=r"^hotwords: a list of phrases, got the text '魔搭'; pass \['魔搭'\]$"):
        asr(paths[0], hotwords="魔搭")
    assert main(["transcribe", "--model", str(exported_dir), str(paths[0]), "--hotwords", "魔搭 达摩院"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("write the phrases ['魔搭', '达摩院'] one a line into a UTF-8 file and give its path (or, "
                        "for one phrase with a space, the line '魔搭 达摩院')")  # fmt: skip


def test_a_list_of_funasr_runtime_lines_is_used_as_given_with_a_warning(asr, clips, caplog):
    """A FunASR-runtime hotword file read into a list (["阿里巴巴 20", ...]) is used as given, with a warning naming
    the entries; a list where only some phrases end in a number is not warned of."""
    _, paths = clips
    weighted = asr([paths[0]], hotwords=["world 20", "nine\t15"])
    assert "hotwords: every phrase ends in a number after a space ([0] 'world 20', [1] 'nine 15')" in caplog.text
    assert weighted == asr([paths[0]], hotwords=["world 20", "nine 15"])
    caplog.clear()
    asr([paths[0]], hotwords=["iPhone 15", "world"])
    assert "FunASR-runtime" not in caplog.text


@pytest.mark.parametrize(
    ("environ", "said"),
    [({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_PROCID": "0",
       "SLURM_LOCALID": "0", "SLURM_NODEID": "0"},
      "started as one of an srun step of 2 tasks: `llmasr transcribe` runs as one process"),
     ({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0"},
      "started as one of a launcher's 4 ranks (WORLD_SIZE): transcribe runs as one process")],
)  # fmt: skip
def test_the_command_refuses_to_run_as_one_of_several_ranks(exported_dir, clips, monkeypatch, capsys, environ, said):
    """`srun -n 2 llmasr transcribe ...` (or a launcher's ranks) ran one whole transcription a task: every
    transcript printed twice. Refused before the model loads, saying how to run it."""
    from llmasr.cli import main

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(Transcriber, "load", lambda *a, **k: pytest.fail("the model loaded"))
    # a launcher's ranks (the same variables left over in a shell are refused as such: test_launched_ranks)
    monkeypatch.setattr("llmasr.launched_ranks.parent_launcher", lambda: "torch.distributed.run")
    _, paths = clips
    assert main(["transcribe", "--model", str(exported_dir), str(paths[0]), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"llmasr transcribe: error: {said}" in err, err
    assert "`llmasr decode`" in err


def test_a_language_is_refused_by_a_model_that_reads_none(exported_dir, asr, clips, capsys):
    """`language=` is SenseVoice's per-line query (tests/export/test_sensevoice_languages.py): a model whose encoder
    reads no language would transcribe the same whatever is asked, so the call says so instead."""
    from llmasr.cli import main

    _, paths = clips
    with pytest.raises(TranscribeError, match=r"language 'zh': this model's encoder reads no language.*per_line"):
        asr(paths[0], language="zh")
    with pytest.raises(TranscribeError, match=r"language: a language code or name .*got ' '"):
        asr(paths[0], language=" ")
    assert main(["transcribe", "--model", str(exported_dir), str(paths[0]), "--language", "en"]) == 2
    assert "language 'en': this model's encoder reads no language" in capsys.readouterr().err
    # "auto", the default (none asked), is no language to refuse: a script passing it to every model had failed here
    assert asr(paths[0], language="auto") == asr(paths[0])
    assert main(["transcribe", "--model", str(exported_dir), str(paths[0]), "--language", "auto"]) == 0


def test_files_listed_with_files_from_are_transcribed_after_those_named(exported_dir, clips, tmp_path, capsys,
                                                                        monkeypatch):  # fmt: skip
    """Thousands of files do not fit a command line, and a list given as audio was only named as text: --files-from
    LIST (or - for standard input) reads one path a line; a listed file that is not there is named by its line."""
    import io

    from llmasr.cli import main

    _, paths = clips
    monkeypatch.chdir(paths[0].parent)  # relative paths from the working directory, as on the command line
    listed = tmp_path / "list.txt"
    listed.write_bytes(f"\ufeff{paths[1].name}\r\n\n  {paths[2]}  \n".encode())
    model = ["transcribe", "--model", str(exported_dir)]
    assert main([*model, str(paths[0]), "--files-from", str(listed)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(paths[0]), paths[1].name, str(paths[2])]
    alone = [line.split("\t")[1] for line in lines]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(f"{paths[2]}\n".encode())))
    assert main([*model, "--files-from", "-"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{paths[2]}\t{alone[2]}"]
    listed.write_text(f"{paths[1]}\ngone.wav\n", encoding="utf-8")
    assert main([*model, "--files-from", str(listed)]) == 2
    assert f"error: {listed}:2: gone.wav: no such audio file" in capsys.readouterr().err
    for content, said in ((b"\n\n", ": lists no audio file"), ("a.wav\n".encode("utf-16"), ":1: not UTF-8 text")):
        listed.write_bytes(content)
        assert main([*model, "--files-from", str(listed)]) == 2
        assert f"error: --files-from: {listed}{said}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(model)
    assert "no audio: name files, or list them with --files-from LIST" in capsys.readouterr().err


def test_the_repr_says_the_model_the_device_the_search_and_the_settings_given(exported_dir, runs):
    """A notebook had shown `<llmasr.export.transcribe.Transcriber object at 0x7f...>`."""
    shown = repr(Transcriber.load(exported_dir, num_beams=2, max_new_tokens=4))
    assert shown == (
        f"Transcriber({str(exported_dir)!r}, device='cpu', search='beam 2 + CTC prefix scoring (ctc_weight 0.7)', "
        "num_beams=2, max_new_tokens=4)"
    )
    assert repr(Transcriber.load(checkpoint=runs[2], ctc_weight=0.0)).startswith(
        f"Transcriber({str(runs[2])!r}, device='cpu', search='greedy', "
    )


def test_a_tensor_on_the_meta_device_is_named_as_holding_no_samples(asr):
    """Had been torch's NotImplementedError "Cannot copy out of meta tensor; no data!"."""
    with pytest.raises(TranscribeError, match=r"^waveform 0: a tensor on the meta device, which holds no samples$"):
        asr(torch.zeros(1, 16000, device="meta"), sample_rate=16000)


def test_loading_leaves_the_callers_random_stream_as_it_found_it(exported_dir, runs):
    """Transcriber.load had drawn the random initial weights its files then replace from the global generator: a
    notebook's seeded draws after it were others than without it."""
    for source in ({"model_dir": exported_dir}, {"checkpoint": runs[2]}):
        torch.manual_seed(7)
        Transcriber.load(**source)
        after = torch.rand(4)
        torch.manual_seed(7)
        assert torch.equal(after, torch.rand(4)), source


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_during_the_command_is_named(exported_dir, clips, name):
    """SIGTERM and SIGUSR1 (a scheduler's time limit, SLURM's notice before it) ended `llmasr transcribe` with no word
    from it (exit 143, 138): they are named as a decode names them, with the same exit status."""
    import signal
    import subprocess
    import sys

    from llmasr.testing.launcher import launcher_env

    script = (
        "import os, signal, sys\n"
        "from llmasr.export.transcribe import Transcriber\n"
        "transcripts = Transcriber.transcripts\n"
        "def transcribed_then_stopped(*args, **kwargs):\n"
        "    transcripts(*args, **kwargs)\n"
        f"    os.kill(os.getpid(), signal.{name})\n"
        "Transcriber.transcripts = transcribed_then_stopped\n"
        "from llmasr.cli import main\n"
        "sys.exit(main(['transcribe', '--model', sys.argv[1], '--max-new-tokens', '2', sys.argv[2]]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(exported_dir), str(clips[1][0])], capture_output=True,
                          text=True, env=launcher_env(), timeout=300)  # fmt: skip
    assert done.returncode == 128 + getattr(signal, name), done.stderr[-2000:]
    assert f"llmasr transcribe: stopped by {name} while transcribing" in done.stderr


def _stopped_at_batch(monkeypatch, stop: int, error: BaseException) -> list:
    """Every Transcriber loaded from now on raises `error` when its model is given batch number `stop` (from 1);
    returns the list that gets each batch's keys (the clips' positions)."""
    load, calls = Transcriber.load.__func__, []

    def loaded(cls, *args, **kwargs):
        asr = load(cls, *args, **kwargs)
        real = asr.model.transcribe

        def transcribe(batch, cfg):
            calls.append([int(k) for k in batch.keys])
            if len(calls) == stop:
                raise error
            return real(batch, cfg)

        monkeypatch.setattr(asr.model, "transcribe", transcribe)
        return asr

    monkeypatch.setattr(Transcriber, "load", classmethod(loaded))
    return calls


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("CUDA out of memory")])
def test_a_run_stopped_half_way_prints_the_files_it_finished(exported_dir, clips, monkeypatch, capsys, error):
    """The lines printed only once every file was done: a run stopped half-way (Ctrl-C, SIGTERM, a batch the model
    fails on) printed none of the files it had finished. Each file's line prints as soon as it and those before it
    are done, and a stop first prints the finished lines held back behind an undone file, in the order given."""
    from llmasr.cli import main

    _, paths = clips
    files = [str(paths[i]) for i in (2, 0, 1, 3)]  # 0.7, 0.5, 0.6, 0.8 s: decoded as files 1, 2, 0, 3
    want = dict(zip(files, Transcriber.load(exported_dir, max_new_tokens=2)(files)))
    batches = _stopped_at_batch(monkeypatch, 3, error)  # one file a batch, the shortest first
    status = main(["transcribe", "--model", str(exported_dir), "--max-new-tokens", "2", "--batch-seconds", "0.1",
                   *files])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == (130 if isinstance(error, KeyboardInterrupt) else 1), err
    done = sorted(batches[0] + batches[1])
    assert done == [1, 2]  # finished behind file 0, undone: held, then printed at the stop
    assert out.splitlines() == [f"{files[i]}\t{want[files[i]]}" for i in done]


def test_each_row_is_given_out_in_order_as_soon_as_it_and_those_before_it_are_done(asr, clips, monkeypatch):
    _, paths = clips
    files = [str(paths[0]), str(paths[2]), str(paths[1])]  # decoded shortest first: 0, 2, 1 (one a batch)
    seen, batches = [], []
    real = asr.model.transcribe
    monkeypatch.setattr(asr.model, "transcribe", lambda b, cfg: (batches.append(list(seen)), real(b, cfg))[1])
    monkeypatch.setattr(asr.cfg, "batch_seconds", 0.1)
    rows = asr.transcripts(files, on_row=lambda i, row: seen.append((i, row["audio"])))
    assert seen == [(0, files[0]), (1, files[1]), (2, files[2])] and [r["audio"] for r in rows] == files
    # the first given before the next batch, the third held until the second, before it, was done
    assert batches == [[], [(0, files[0])], [(0, files[0])]]


def test_an_on_row_that_raises_stops_the_call_and_is_not_called_again(asr, clips, monkeypatch):
    """on_row raising (a pipe whose reader left, a caller's own bug) had stopped the call with that row not counted as
    given: the stop then gave it again, and the rows after it, to the on_row that had just failed (the command printed
    that file's stderr note twice). Each row is given once, and an on_row that raised is not called again."""
    _, paths = clips
    files = [str(paths[0]), str(paths[2]), str(paths[1])]  # decoded shortest first: 0, 2, 1 (one a batch)
    monkeypatch.setattr(asr.cfg, "batch_seconds", 0.1)
    seen = []

    def on_row(i, row):
        seen.append(i)
        if i == 0:
            raise ValueError("the caller's own failure")

    with pytest.raises(ValueError, match="the caller's own failure") as caught:
        asr.transcripts(files, on_row=on_row)
    assert seen == [0]
    assert caught.value.__context__ is None  # raised once, not again while the stop gave out the held rows
