"""Settings and inputs `llmasr decode` / `llmasr transcribe` cannot run with are refused before the model moves or a
file is written, each named: a device this machine lacks, decoding numbers out of range, an empty manifest."""

from __future__ import annotations

import pytest
import torch

from llmasr.commands.decode import main as decode_main
from llmasr.commands.transcribe import main as transcribe_main
from llmasr.config_io import ConfigError
from llmasr.export.decode import DecodeOptions
from llmasr.export.decode_world import DecodeWorld
from llmasr.export.transcribe import TranscribeError, Transcriber
from llmasr.models.decoding import DecodeConfig
from llmasr.models.devices import usable_device
from llmasr.testing.run_dirs import write_corpus


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("refusals"), ["zero one", "two three"])


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_a_device_this_machine_lacks_is_named_with_what_it_has(monkeypatch):
    _no_cuda(monkeypatch)
    assert usable_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device cuda: (this torch build has no CUDA|no CUDA device is visible)"):
        usable_device("cuda")
    with pytest.raises(ValueError, match=r"device 'gpu' is not a device name \(cpu, cuda, cuda:1, \.\.\.\)"):
        usable_device("gpu")
    if not torch.backends.mps.is_available():  # a device type torch names that this build lacks: had moved the model
        with pytest.raises(ValueError, match=r"^device mps: not available on this machine \(.*\); use cpu$"):
            usable_device("mps")
        with pytest.raises(TranscribeError, match=r"^device mps: not available on this machine"):
            Transcriber.load("no-model-read", device="mps")
    _one_gpu(monkeypatch)
    assert usable_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"device cuda:3: this machine has 1 CUDA device\(s\), cuda:0 to cuda:0"):
        usable_device("cuda:3")
    # a launcher's rank takes the GPU of its local rank: one that is not there is named the same way
    assert DecodeWorld().device(None) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"device cuda:1: this machine has 1 CUDA device"):
        DecodeWorld(rank=1, size=2, local_rank=1).device("cuda")


def test_the_commands_refuse_a_missing_device_before_loading(exported_dir, manifest, tmp_path, monkeypatch, capsys):
    _no_cuda(monkeypatch)
    out = tmp_path / "out"
    rc = decode_main(["--model", str(exported_dir), "--data", str(manifest), "--output", str(out), "--device", "cuda"])
    assert rc == 2 and "llmasr decode: error: --device: device cuda:" in capsys.readouterr().err
    assert not out.exists()
    clip = manifest.parent / "wav" / "test0.wav"
    rc = transcribe_main(["--model", str(exported_dir), "--device", "cuda:2", str(clip)])
    assert rc == 2 and "llmasr transcribe: error: --device: device cuda:2:" in capsys.readouterr().err
    with pytest.raises(TranscribeError, match="device cuda"):
        Transcriber.load(exported_dir, device="cuda")


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--batch-seconds", "-1", "decode.batch_seconds: must be > 0 seconds of audio a batch, got -1.0"),
        (
            "--max-new-tokens",
            "-1",
            "decode.max_new_tokens: must be >= 1, or 0 for the cap by duration (tokens_per_"
            "second x seconds + 8), got -1 (--max-new-tokens)",
        ),
        ("--repetition-penalty", "0", "decode.repetition_penalty: must be > 0 (1: off), got 0.0"),
        ("--no-repeat-ngram", "-1", "decode.no_repeat_ngram_size: must be >= 0 (0: off), got -1"),
        ("--tokens-per-second", "nan", "decode.tokens_per_second: expected a number, got nan"),  # as a recipe's NaN
        ("--tokens-per-second", "inf", "decode.tokens_per_second: must be a number > 0, got inf"),
        ("--repetition-penalty", "inf", "decode.repetition_penalty: must be > 0 (1: off), got inf"),
        ("--num-workers", "-1", "num_workers: must be >= 0 (0: load in the decoding process), got -1"),
        ("--max-bad-fraction", "1.5", "max_bad_fraction: must be in [0, 1], got 1.5"),
    ],
)
def test_decoding_numbers_out_of_range_are_refused(exported_dir, manifest, tmp_path, capsys, flag, value, message):
    out = tmp_path / "out"
    rc = decode_main(["--model", str(exported_dir), "--data", str(manifest), "--output", str(out), flag, value])
    assert rc == 2 and f"llmasr decode: error: {message}" in capsys.readouterr().err
    assert not out.exists()


def test_flags_out_of_range_are_refused_by_name_before_the_model_loads(exported_dir, manifest, tmp_path, monkeypatch,
                                                                      capsys):  # fmt: skip
    """`--beam 0` had been refused once the model had loaded (minutes for a large one), as decode.num_beams only."""

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("llmasr.commands.decode.load_decode_model", no_load)
    base = ["--model", str(exported_dir), "--data", str(manifest), "--output", str(tmp_path / "out")]
    assert decode_main([*base, "--beam", "0"]) == 2
    assert "llmasr decode: error: decode.num_beams: must be >= 1, got 0 (--beam)" in capsys.readouterr().err
    assert decode_main([*base, "--no-repeat-ngram", "-1"]) == 2
    assert "decode.no_repeat_ngram_size: must be >= 0 (0: off), got -1 (--no-repeat-ngram)" in capsys.readouterr().err
    assert decode_main([*base, "--num-workers", "-1"]) == 2
    assert "num_workers: must be >= 0 (0: load in the decoding process), got -1 (--num-workers)" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr("llmasr.export.transcribe.load_decode_model", no_load)
    clip = manifest.parent / "wav" / "test0.wav"
    assert transcribe_main(["--model", str(exported_dir), "--beam", "0", str(clip)]) == 2
    assert "llmasr transcribe: error: decode.num_beams: must be >= 1, got 0 (--beam)" in capsys.readouterr().err


def test_the_python_settings_are_checked_the_same_way():
    with pytest.raises(ConfigError, match="decode.batch_seconds: must be > 0"):
        DecodeConfig(batch_seconds=0).validate("decode")
    with pytest.raises(ConfigError, match="decode.vad_max_end_silence_ms: must be > 0 ms"):
        DecodeConfig(vad_max_end_silence_ms=float("inf")).validate("decode")
    with pytest.raises(ConfigError, match="num_workers: must be >= 0"):
        DecodeOptions(num_workers=-2)
    with pytest.raises(ConfigError, match="features_on: expected worker, device or auto, got 'gpu'"):
        DecodeOptions(features_on="gpu")


def test_an_empty_manifest_is_an_error_not_a_run_of_nothing(exported_dir, manifest, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    out = tmp_path / "out"
    rc = decode_main(
        ["--model", str(exported_dir), "--data", str(empty), "--data", str(manifest), "--output", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"manifest {empty}: no records (the file is empty or holds only blank lines)" in err
    assert not (out / "empty").exists()  # no empty folder is left for it
    assert (out / "test" / "wer.json").is_file()  # the other manifest is still decoded
    assert (out / "wer.txt").read_text().splitlines()[-1] == f"{empty}: not decoded (see the error printed for it)"


def test_a_manifest_not_decoded_leaves_no_earlier_results_in_its_folder(exported_dir, manifest, tmp_path):
    other = write_corpus(tmp_path / "other", ["four five"], name="other")
    out = tmp_path / "out"
    args = ["--model", str(exported_dir), "--data", str(manifest), "--data", str(other), "--num-workers", "0",
            "--max-new-tokens", "2", "--output", str(out)]  # fmt: skip
    assert decode_main(args) == 0 and (out / "other" / "hyp.txt").is_file()
    other.write_text("\n")  # refused when it is read, this time
    assert decode_main(args) == 2
    assert (out / "wer.txt").read_text().splitlines()[-1] == f"{other}: not decoded (see the error printed for it)"
    assert sorted(p.name for p in (out / "other").iterdir()) == []  # not the first decode's hyp.txt, wer.txt ...
    assert (out / "test" / "wer.json").is_file()


def test_missing_inputs_are_named_before_the_model_loads(exported_dir, manifest, tmp_path, monkeypatch, capsys):
    """A mistyped manifest or audio file: exit 2 naming each, before the model loads (it had been found after the
    load, and after every manifest before it was decoded); nothing is written."""

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("llmasr.commands.decode.load_decode_model", no_load)
    monkeypatch.setattr("llmasr.export.transcribe.load_decode_model", no_load)
    out, gone = tmp_path / "out", tmp_path / "gone.jsonl"
    data = ["--data", str(manifest), "--data", str(gone), "--data", str(tmp_path)]
    assert decode_main(["--model", str(exported_dir), *data, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--data: {gone}: no such manifest file; {tmp_path}: a directory, not a manifest file" in err
    assert not out.exists()
    # an empty name (an unset shell variable) is no directory: Path("") had been the working directory
    assert decode_main(["--model", str(exported_dir), "--data", "", "--output", str(out)]) == 2
    assert "--data: '': an empty path, not a manifest file" in capsys.readouterr().err
    clip = manifest.parent / "wav" / "test0.wav"
    assert transcribe_main(["--model", str(exported_dir), str(clip), str(tmp_path / "gone.wav"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"llmasr transcribe: error: {tmp_path / 'gone.wav'}: no such audio file; {tmp_path}: a directory" in err


def test_the_flags_set_the_decode_settings_they_name():
    from llmasr.commands.decode import DECODE_FLAGS, build_parser
    from llmasr.models.decoding import decode_config

    def resolved(*flags):
        args = build_parser().parse_args(["--model", "m", "--data", "d", "--output", "o", *flags])
        return decode_config(DecodeConfig(), **{field: getattr(args, dest) for field, dest in DECODE_FLAGS.items()})

    assert (resolved().timestamps, resolved().trim_leading_silence) == (False, True)  # unset: the saved values
    both = resolved("--timestamps", "--keep-leading-silence")
    assert (both.timestamps, both.trim_leading_silence) == (True, False)
    saved = DecodeConfig(timestamps=True, trim_leading_silence=False)  # a model exported with them: kept
    args = build_parser().parse_args(["--model", "m", "--data", "d", "--output", "o"])
    kept = decode_config(saved, **{field: getattr(args, dest) for field, dest in DECODE_FLAGS.items()})
    assert (kept.timestamps, kept.trim_leading_silence) == (True, False)


def test_features_on_the_device_for_a_whisper_model_is_refused_naming_the_decode_setting(tiny_llm_dir, tmp_path):
    """--features-on device with a Whisper frontend: refused before anything is written, as decode's own setting
    (it had failed per manifest, after the output folder was made, naming the recipe key data.features_on)."""
    from llmasr.export.decode import search_boost
    from llmasr.models.builder import build_model
    from llmasr.testing.tiny_recipe import tiny_model_section
    from llmasr.testing.tiny_whisper import write_tiny_whisper_dir

    section = tiny_model_section(tiny_llm_dir, encoder_dir=write_tiny_whisper_dir(tmp_path / "w"))
    section["encoder"].update(type="whisper", conf={})
    model = build_model(section)
    assert search_boost(model, DecodeConfig(), DecodeOptions(features_on="auto")) >= 0.0
    with pytest.raises(ConfigError, match=r"features_on \(decode --features-on\): device computes Kaldi fbank "
                                          r"features; this encoder's frontend is 'whisper'"):  # fmt: skip
        search_boost(model, DecodeConfig(), DecodeOptions(features_on="device"))


@pytest.fixture(scope="module")
def short_context(tmp_path_factory):
    """A tiny model whose LLM holds 80 positions, and a manifest with a 12 s utterance (no duration stated)."""
    import json

    import numpy as np
    import soundfile as sf

    from llmasr.models.builder import build_model
    from llmasr.testing.tiny_llm import write_tiny_llm_dir
    from llmasr.testing.tiny_recipe import tiny_model_section

    root = tmp_path_factory.mktemp("short_context")
    model = build_model(
        tiny_model_section(write_tiny_llm_dir(root / "llm", max_position_embeddings=80)), weights="random"
    )
    wave = np.random.default_rng(0).standard_normal(12 * 16000).astype(np.float32) * 0.1
    sf.write(str(root / "long.wav"), wave, 16000)
    manifest = root / "long.jsonl"
    manifest.write_text(json.dumps({"key": "long", "source": str(root / "long.wav"), "target": "one two"}) + "\n")
    return model, manifest


def test_decode_windows_fit_the_llm_context(short_context, tmp_path, monkeypatch, caplog):
    import llmasr.models.llm_search as llm_search
    from llmasr.export.decode import DecodeError, decode_manifest, window_limit
    from llmasr.models.context import audio_tokens

    model, manifest = short_context
    cfg, opts = DecodeConfig(max_new_tokens=4), DecodeOptions(num_workers=0, training_max_seconds=None)
    prompt = len(model.prompt.encode(None).ids)
    fit = window_limit(model, cfg, opts)  # no training maximum known: lowered to the longest window that fits
    assert (
        2.0 <= fit < 12 and audio_tokens(model, fit) + prompt + 4 <= 80 < audio_tokens(model, fit + 0.02) + prompt + 4
    )
    assert f"long audio is decoded in windows of at most {fit:g} s" in caplog.text
    assert "pass the LLM's context of 80 tokens (config.json's max_position_embeddings)" in caplog.text
    seen, search = [], llm_search.llm_search

    def spy(model, merged, *args, **kwargs):
        seen.extend(merged.attention_mask.sum(1).tolist())
        return search(model, merged, *args, **kwargs)

    monkeypatch.setattr(llm_search, "llm_search", spy)
    summary = decode_manifest(model, manifest, tmp_path / "hyp", cfg, opts)
    assert summary["windows"] > 1 and summary["max_window_seconds"] == fit
    assert seen and max(seen) + 4 <= 80
    # a set window that does not fit is refused with its numbers
    with pytest.raises(DecodeError) as err:
        window_limit(model, DecodeConfig(max_new_tokens=4, max_window_seconds=10), opts)
    assert str(err.value) == (
        f"decode.max_window_seconds: a decode window of 10 s gives {audio_tokens(model, 10.0)} audio tokens, which "
        f"beside the prompt ({prompt} tokens) and the tokens decoding may write (decode.max_new_tokens, else "
        "tokens_per_second x seconds + 8) pass the LLM's context of 80 tokens (config.json's max_position_embeddings);"
        f" {fit:g} s fit; set it to at most {fit:g}"
    )
    with pytest.raises(DecodeError, match=r"one second of audio .* lower decode.max_new_tokens"):
        window_limit(model, DecodeConfig(max_new_tokens=60, max_window_seconds=10), opts)


def test_decode_windows_count_a_lines_own_list_at_its_cap(short_context, tmp_path, monkeypatch):
    """A line's own biasing list goes into its prompt (over --hotwords): with model.prompt.hotwords_max_tokens it
    counts at that cap, so every window with its list still fits the context."""
    import json

    import llmasr.models.llm_search as llm_search
    from llmasr.export.decode import decode_manifest

    model, manifest = short_context
    line = json.loads(manifest.read_text())
    listed = tmp_path / "listed.jsonl"
    listed.write_text(json.dumps({**line, "hotwords": ["one two three four", "five six seven eight"]}) + "\n")
    monkeypatch.setattr(model.prompt, "hotwords_max_tokens", 12)
    seen, search = [], llm_search.llm_search

    def spy(model, merged, *args, **kwargs):
        seen.extend(merged.attention_mask.sum(1).tolist())
        return search(model, merged, *args, **kwargs)

    monkeypatch.setattr(llm_search, "llm_search", spy)
    cfg, opts = DecodeConfig(max_new_tokens=4), DecodeOptions(num_workers=0, training_max_seconds=None)
    summary = decode_manifest(model, listed, tmp_path / "hyp", cfg, opts)
    assert summary["windows"] > 1 and seen and max(seen) + 4 <= 80


def _listed(short_context, tmp_path, hotwords):
    import json

    _, manifest = short_context
    listed = tmp_path / "listed.jsonl"
    listed.write_text(json.dumps({**json.loads(manifest.read_text()), "hotwords": hotwords}) + "\n")
    return listed


def _prompt_lengths(monkeypatch) -> list[int]:
    import llmasr.models.llm_search as llm_search

    seen, search = [], llm_search.llm_search

    def spy(model, merged, *args, **kwargs):
        seen.extend(merged.attention_mask.sum(1).tolist())
        return search(model, merged, *args, **kwargs)

    monkeypatch.setattr(llm_search, "llm_search", spy)
    return seen


def test_decode_windows_count_a_lines_own_list_without_a_cap(short_context, tmp_path, monkeypatch, caplog):
    """Without model.prompt.hotwords_max_tokens a line's own biasing list had not been counted: its windows were cut
    for the plain prompt and the list took them to 92 positions of the 80, without an error. The longest line's
    prompt counts as it renders, and the warning names the line."""
    from llmasr.export.decode import decode_manifest

    model, _ = short_context
    listed = _listed(short_context, tmp_path, ["one two three four"])
    seen = _prompt_lengths(monkeypatch)
    cfg, opts = DecodeConfig(max_new_tokens=4), DecodeOptions(num_workers=0, training_max_seconds=None)
    summary = decode_manifest(model, listed, tmp_path / "hyp", cfg, opts)
    assert summary["windows"] > 1 and seen and max(seen) + 4 <= 80
    prompt = len(model.prompt.encode(None, hotwords=["one two three four"]).ids)
    assert f"beside the prompt ({prompt} tokens, {listed}:1 (key long)'s hotwords)" in caplog.text


def test_a_list_that_leaves_no_window_is_refused_naming_it(short_context, tmp_path, monkeypatch):
    """A line's own list (or a --hotwords list, or a Transcriber's) that leaves less than a window of audio in the
    context is refused before anything is written, named with its tokens; the --hotwords one had been refused as
    if decode.max_new_tokens alone were at fault."""
    from llmasr.export.decode import DecodeError, decode_manifest, window_limit

    model, manifest = short_context
    phrases = ["one two three four", "five six seven eight"]
    prompt = len(model.prompt.encode(None, hotwords=phrases).ids)
    cfg, opts = DecodeConfig(max_new_tokens=4), DecodeOptions(num_workers=0, training_max_seconds=None)
    listed = _listed(short_context, tmp_path, phrases)
    with pytest.raises(DecodeError) as err:
        decode_manifest(model, listed, tmp_path / "hyp", cfg, opts)
    assert f"beside the prompt ({prompt} tokens, {listed}:1 (key long)'s hotwords)" in str(err.value)
    assert str(err.value).endswith(f", or shorten {listed}:1 (key long)'s hotwords") and not (tmp_path / "hyp").exists()
    with pytest.raises(DecodeError) as err:
        Transcriber(model, cfg, opts).transcripts([str(manifest.parent / "long.wav")], hotwords=phrases)
    assert f"beside the prompt ({prompt} tokens, the biasing list given)" in str(err.value)
    big = [f"phrase number {i}" for i in range(40)]
    file_opts = DecodeOptions(num_workers=0, hotwords=big, hotwords_file="big.txt")
    with pytest.raises(DecodeError) as err:
        window_limit(model, cfg, file_opts)
    prompt = len(model.prompt.encode(None, hotwords=big).ids)
    assert f"beside the prompt ({prompt} tokens, the biasing list of --hotwords big.txt)" in str(err.value)
    assert str(err.value).endswith("lower decode.max_new_tokens, or shorten the biasing list of --hotwords big.txt")


def test_a_transcriber_list_without_a_cap_counts(short_context, monkeypatch):
    """Transcriber(hotwords=...) renders its list into every clip's prompt: without a cap it had not been counted,
    and a 12 s clip's windows reached past the LLM's context."""
    model, manifest = short_context
    seen = _prompt_lengths(monkeypatch)
    asr = Transcriber(model, DecodeConfig(max_new_tokens=4), DecodeOptions(training_max_seconds=None))
    rows = asr.transcripts([str(manifest.parent / "long.wav")], hotwords=["one two three four"])
    assert rows[0]["windows"] > 1 and seen and max(seen) + 4 <= 80


def test_whisper_decoded_whole_fits_the_context_at_its_chunk(tmp_path, caplog):
    """decode.max_window_seconds 0 under Whisper: an utterance longer than the encoder's 30 s chunk is a bad item, so
    the context need hold the chunk only. The warning had said an utterance of any length passes the context, and
    how many seconds "fit" (98.52 s), beside the point where the encoder stops at its chunk."""
    import logging

    from llmasr.export.decode import window_limit
    from llmasr.models.builder import build_model
    from llmasr.models.context import audio_tokens
    from llmasr.testing.tiny_llm import write_tiny_llm_dir
    from llmasr.testing.tiny_recipe import tiny_model_section
    from llmasr.testing.tiny_whisper import write_tiny_whisper_dir

    encoder = write_tiny_whisper_dir(tmp_path / "w")

    def whisper_model(context: int):
        section = tiny_model_section(write_tiny_llm_dir(tmp_path / f"llm{context}", max_position_embeddings=context),
                                     encoder_dir=encoder)  # fmt: skip
        section["encoder"].update(type="whisper", conf={})
        return build_model(section, weights="random")

    cfg = DecodeConfig(max_new_tokens=4, max_window_seconds=0)
    probe = whisper_model(4096)
    chunk = float(probe.frontend.chunk_seconds)  # the tiny encoder's (Whisper's own: 30 s)
    need = audio_tokens(probe, chunk) + len(probe.prompt.encode(None).ids) + 4
    opts = DecodeOptions(num_workers=0, training_max_seconds=None)
    with caplog.at_level(logging.WARNING, logger="llmasr"):
        assert window_limit(whisper_model(need), cfg, opts) == 0.0
    assert "fit" not in caplog.text  # the chunk fits: nothing to warn of
    with caplog.at_level(logging.WARNING, logger="llmasr"):
        assert window_limit(whisper_model(need - 8), cfg, opts) == 0.0
    assert f"a decode window of {chunk:g} s gives" in caplog.text and "decodes longer utterances whole" in caplog.text
