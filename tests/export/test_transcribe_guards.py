"""`llmasr transcribe` and the guards against LLM-ASR's runaway output, as `llmasr decode` has them: a transcript a
guard cut is named (stderr, and the JSON lines' "truncated"), the search and guard flags are decode's own (one
definition), and a model's saved length cap can be unset back to the cap by duration (--max-new-tokens 0)."""

from __future__ import annotations

import json

import pytest

from llmasr.commands.decode import build_parser as decode_parser
from llmasr.commands.decode_flags import SEARCH_FLAGS
from llmasr.commands.transcribe import build_parser as transcribe_parser
from llmasr.commands.transcribe import main
from llmasr.export.decode import load_decode_model
from llmasr.export.transcribe import Transcriber
from llmasr.models.decoding import DecodeConfig, decode_config
from llmasr.testing.run_dirs import write_corpus


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    manifest = write_corpus(tmp_path_factory.mktemp("guards"), ["zero one two"])
    return str(manifest.parent / "wav" / "test0.wav")


def _settings_seen(monkeypatch) -> list[DecodeConfig]:
    """The settings each transcribe call decodes with."""
    seen, real = [], Transcriber.transcripts
    monkeypatch.setattr(Transcriber, "transcripts", lambda self, *a, **k: seen.append(self.cfg) or real(self, *a, **k))
    return seen


def test_a_transcript_the_length_cap_cut_is_named_and_stdout_keeps_its_format(exported_dir, clip, capsys):
    """The cut text had printed as any other, with no sign (Transcriber's rows had "truncated"; the command dropped
    it): a script over files could not tell it."""
    (row,) = Transcriber.load(exported_dir, max_new_tokens=1).transcripts([clip])
    assert row["truncated"] == "max_tokens"  # the case is real: one token cannot hold the model's answer
    assert main(["--model", str(exported_dir), clip, "--max-new-tokens", "1", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{clip}\t{' '.join(row['hyp'].split())}"]
    assert (
        f"llmasr transcribe: warning: {clip}: transcript cut at the length cap, decode.max_new_tokens 1 tokens: raise "
        "--max-new-tokens, or give 0 for the cap by duration"
    ) in err
    assert main(["--model", str(exported_dir), clip, "--max-new-tokens", "1", "--confidence"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["truncated"] == "max_tokens" and f"warning: {clip}: transcript cut" in err


def test_a_transcript_the_repetition_stop_ended_is_named(exported_dir, clip, monkeypatch, capsys):
    import llmasr.export.transcribe as transcribe  # each clip's row as it is made (the command prints it then)

    real = transcribe.clip_row
    monkeypatch.setattr(transcribe, "clip_row", lambda name, row: {**real(name, row), "truncated": "repetition"})
    assert main(["--model", str(exported_dir), clip, "--repeat-limit", "2", "--timestamps"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["truncated"] == "repetition"
    assert (
        f"llmasr transcribe: warning: {clip}: transcript ended by the repetition stop, an n-gram repeated back to back "
        "more than 2 times: --repeat-limit sets it (0: off)"
    ) in err


def test_the_command_takes_decodes_search_and_guard_flags(exported_dir, clip, tmp_path, monkeypatch, capsys):
    """--max-new-tokens, --tokens-per-second, --repeat-limit, --keep-leading-silence and the rest had been
    "unrecognized arguments": only a model's saved values or Transcriber.load could set them."""
    seen = _settings_seen(monkeypatch)
    flags = ["--max-new-tokens", "3", "--tokens-per-second", "5", "--repeat-limit", "2", "--repetition-penalty",
             "1.5", "--no-repeat-ngram", "3", "--keep-leading-silence", "--beam", "2", "--batch-seconds", "50",
             "--max-llm-tokens", "4000"]  # fmt: skip
    assert main(["--model", str(exported_dir), clip, "--device", "cpu", *flags]) == 0
    cfg = seen[-1]
    got = (cfg.max_new_tokens, cfg.tokens_per_second, cfg.repeat_limit, cfg.repetition_penalty,
           cfg.no_repeat_ngram_size, cfg.trim_leading_silence, cfg.num_beams, cfg.batch_seconds,
           cfg.max_llm_tokens)  # fmt: skip
    assert got == (3, 5.0, 2, 1.5, 3, False, 2, 50.0, 4000)
    # a flag that would change nothing is refused naming it, as decode refuses it
    assert main(["--model", str(exported_dir), clip, "--no-vad-gate"]) == 2
    assert "llmasr transcribe: error: --no-vad-gate: a setting of the VAD's segments" in capsys.readouterr().err
    assert main(["--model", str(exported_dir), clip, "--hotword-boost", "1"]) == 2
    assert "--hotword-boost scores the phrases of --hotwords, and none is given" in capsys.readouterr().err
    (tmp_path / "hw.txt").write_text("nine\n", encoding="utf-8")
    assert main(["--model", str(exported_dir), clip, "--hotwords", str(tmp_path / "hw.txt"), "--hotword-boost",
                 "1.5", "--ctc-weight", "0.5"]) == 0  # fmt: skip
    assert seen[-1].hotword_boost == 1.5


def test_decode_and_transcribe_share_one_definition_of_the_flags():
    """Each search and guard flag is the same option, with the same help, in both commands (defined once)."""
    ours, theirs = ({a.dest: a for a in p()._actions} for p in (transcribe_parser, decode_parser))
    for dest in SEARCH_FLAGS.values():
        assert ours[dest].option_strings == theirs[dest].option_strings and ours[dest].help == theirs[dest].help


def test_max_new_tokens_0_unsets_a_saved_cap_and_a_negative_one_is_refused_naming_the_flag(
    exported_dir, clip, monkeypatch, capsys
):  # fmt: skip
    """A model's saved decode.max_new_tokens could not be unset from the command line: 0 was refused ("must be >= 1
    (or unset: by duration)"), and there was no other spelling."""
    assert load_decode_model(exported_dir)[1].max_new_tokens is not None  # the model has a saved cap to unset
    assert decode_config(DecodeConfig(max_new_tokens=6), max_new_tokens=0).max_new_tokens is None
    assert decode_config(DecodeConfig(max_new_tokens=6)).max_new_tokens == 6  # unset: the saved value
    assert Transcriber.load(exported_dir, max_new_tokens=4).cfg.max_new_tokens == 4
    seen = _settings_seen(monkeypatch)
    assert main(["--model", str(exported_dir), clip, "--max-new-tokens", "0", "--device", "cpu"]) == 0
    assert seen[-1].max_new_tokens is None
    for bad in ("-1", "-5"):
        assert main(["--model", str(exported_dir), clip, "--max-new-tokens", bad]) == 2
        assert (
            f"llmasr transcribe: error: decode.max_new_tokens: must be >= 1, or 0 for the cap by duration "
            f"(tokens_per_second x seconds + 8), got {bad} (--max-new-tokens)"
        ) in capsys.readouterr().err
