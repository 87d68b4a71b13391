"""The flags `llmasr decode` and `llmasr transcribe` share, defined once: the model to load (model_args), the batches,
the search and its guards against runaway output (search_args: batch size, beam, CTC guidance, length cap, repetition
stop, long audio's windows, the VAD), and their mapping onto DecodeConfig overrides (search_settings, refused_flag)."""

from __future__ import annotations

import argparse

from llmasr.config_io import ConfigError
from llmasr.export.decode import DecodeOptions
from llmasr.models.decoding import AUTO_CTC_WEIGHT, AUTO_HOTWORD_BOOST, DecodeConfig, decode_config

# DecodeConfig field -> the argparse dest of its flag in search_args (unset flags keep the model's saved value)
SEARCH_FLAGS = {
    "batch_seconds": "batch_seconds",
    "max_llm_tokens": "max_llm_tokens",
    "num_beams": "beam",
    "max_new_tokens": "max_new_tokens",
    "tokens_per_second": "tokens_per_second",
    "repetition_penalty": "repetition_penalty",
    "no_repeat_ngram_size": "no_repeat_ngram",
    "ctc_weight": "ctc_weight",
    "repeat_limit": "repeat_limit",
    "hotword_boost": "hotword_boost",
    "ctc_gate": "ctc_gate",
    "max_window_seconds": "max_window_seconds",
    "window_overlap": "window_overlap",
    "window_split_pause": "window_split_pause",
    "trim_leading_silence": "trim_leading_silence",
    "vad": "vad",
    "vad_max_end_silence_ms": "vad_max_end_silence_ms",
    "vad_gate": "vad_gate",
    "vad_merge_seconds": "vad_merge_seconds",
}
# every DecodeConfig field -> its flag's dest: the shared ones, then decode's own (batching, scoring, outputs)
DECODE_FLAGS = {
    **SEARCH_FLAGS,
    "metric": "metric",
    "timestamps": "timestamps",
    "confidence": "confidence",
}

# The fields whose flags only set how a VAD cuts (decode.vad); without one each would change nothing
VAD_FIELDS = ("vad_max_end_silence_ms", "vad_merge_seconds", "vad_gate")
# the flag of a field whose flag is not --FIELD-NAME
_FLAG_NAMES = {"vad_gate": "--no-vad-gate", "trim_leading_silence": "--keep-leading-silence"}


def flag_name(field: str) -> str:
    """The command-line flag that sets DecodeConfig `field` (or an option's own name: num_workers)."""
    return _FLAG_NAMES.get(field) or f"--{DECODE_FLAGS.get(field, field).replace('_', '-')}"


def refused_flag(settings: dict, options: dict | None = None) -> str | None:
    """Why a decoding flag is out of its own range (the setting's error and the flag), found before the model loads
    (window_overlap 0 there: the model's own may be below the default); None when every one is in range.
    `settings`: DecodeConfig fields (DECODE_FLAGS), `options`: DecodeOptions fields."""
    try:
        decode_config(DecodeConfig(window_overlap=0.0), **settings)
        DecodeOptions(**{k: v for k, v in (options or {}).items() if v is not None})
    except ConfigError as err:
        key = str(err).split(":", 1)[0]  # decode.FIELD, or an option's own name (num_workers)
        return f"{err} ({flag_name(key.removeprefix('decode.'))})"
    return None


def search_settings(args) -> dict:
    """The DecodeConfig overrides search_args' flags give (None: the model's saved value)."""
    return {field: getattr(args, dest) for field, dest in SEARCH_FLAGS.items()}


def vad_flags_problem(settings: dict, cfg: DecodeConfig) -> str | None:
    """Why VAD flags given are refused: `cfg` (the settings in force) has no VAD, so each would change nothing, and
    the decode would not say so. None when none is given or there is a VAD."""
    given = [flag_name(field) for field in VAD_FIELDS if settings.get(field) is not None]
    if not given or cfg.vad is not None:
        return None
    several = len(given) > 1
    return (
        f"{', '.join(given)}: {'settings' if several else 'a setting'} of the VAD's segments, and this decode has "
        f"no VAD (no --vad DIR, and the model's decode.vad is unset): give --vad DIR, or leave "
        f"{'them' if several else 'it'} out"
    )


def model_args(p: argparse.ArgumentParser) -> None:
    """The model to decode with (an exported directory or a checkpoint) and where it runs: decode's and transcribe's."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="an exported model directory (llmasr export)")
    src.add_argument("--checkpoint", help="RUN_DIR[/checkpoints/TAG]: decode a training checkpoint directly")
    p.add_argument("--tag", help="checkpoint tag (with --checkpoint RUN_DIR)")
    p.add_argument(
        "--dtype",
        choices=("bf16", "fp16", "fp32"),
        help="LLM dtype (default: as exported; a checkpoint: its recipe's model.llm.dtype, as a default export)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow a model that needs its LLM directory's own Python files (trust_remote_code) to run them",
    )  # fmt: skip
    p.add_argument(
        "--base-llm", metavar="DIR",
        help="an adapter export's base LLM, where it is not where the export's description says (a copy on this "
        "machine; checked against the base the adapter was trained on)",
    )  # fmt: skip


def check_model_args(p: argparse.ArgumentParser, args) -> None:
    """What argparse cannot say of model_args: --tag names a checkpoint of --checkpoint RUN_DIR (it had been ignored
    beside --model), --base-llm the base of an exported --model."""
    if args.tag is not None and args.model is not None:
        p.error("--tag picks a checkpoint of --checkpoint RUN_DIR; an exported --model has none")
    if args.base_llm is not None and args.checkpoint is not None:
        p.error(
            "--base-llm is the base LLM of an adapter export (--model DIR); a checkpoint reads its recipe's "
            "model.llm.path"
        )


def search_args(p: argparse.ArgumentParser) -> None:
    """The batches, the search and its guards (SEARCH_FLAGS): batch size, beam, length cap, repetition, CTC guidance,
    hotword boost, the CTC gate, long audio's windows, the VAD. Each unset keeps the model's saved decode value."""
    p.add_argument("--batch-seconds", type=float, default=None, help="audio seconds per batch (padded)")
    p.add_argument(
        "--max-llm-tokens", type=int, default=None,
        help="LLM positions per batch: B x beams x (longest prompt and audio tokens + most new tokens); an utterance "
        "past it alone is decoded alone (default: the model's decode.max_llm_tokens, else none)",
    )  # fmt: skip
    p.add_argument("--beam", type=int, default=None, help="beam size (1: greedy; default: the model's)")
    p.add_argument(
        "--max-new-tokens", type=int, default=None,
        help="cap on the tokens written per utterance or window (0: the cap by duration, tokens-per-second x seconds "
        "+ 8, over a model's saved cap; default: the model's decode.max_new_tokens, else by duration)",
    )  # fmt: skip
    p.add_argument(
        "--tokens-per-second", type=float, default=None,
        help=f"length cap per audio second (default: the model's, else {DecodeConfig.tokens_per_second:g})",
    )  # fmt: skip
    p.add_argument("--repetition-penalty", type=float, default=None, help="generate's repetition_penalty (1: off)")
    p.add_argument("--no-repeat-ngram", type=int, default=None, help="no_repeat_ngram_size for generate (0: off)")
    p.add_argument(
        "--ctc-weight", type=float, default=None,
        help="CTC-guided decoding: weight of the CTC head's score against the LLM's (0: off; default: the model's, "
        f"else {AUTO_CTC_WEIGHT:g} with a CTC head)",
    )  # fmt: skip
    p.add_argument(
        "--repeat-limit", type=int, default=None,
        help=f"end a hypothesis whose n-gram repeats back to back more than this, an n-gram of 1 or 2 tokens more "
        f"than twice this plus one (0: off; default {DecodeConfig.repeat_limit})",
    )  # fmt: skip
    p.add_argument(
        "--hotword-boost", type=float, default=None,
        help="score per token (per character in a script written without spaces) of a listed phrase the hypothesis "
        "completes, in the search (0: the list is only in the "
        f"prompt; default: the model's, else {AUTO_HOTWORD_BOOST:g} when CTC-guided)",
    )  # fmt: skip
    p.add_argument(
        "--ctc-gate", action=argparse.BooleanOptionalAction, default=None,
        help="leave empty, unsearched, an utterance or window whose CTC best path is empty (the CTC head heard no "
        "word: silence, noise, music), where an LLM writes words; needs a CTC head (default: the model's "
        "decode.ctc_gate, else off; wer.txt counts what it would empty)",
    )  # fmt: skip
    window_args(p)
    p.add_argument(
        "--keep-leading-silence", dest="trim_leading_silence", action="store_const", const=False, default=None,
        help="decode audio from its first sample, not from where its speech starts after a leading pause "
        "(decode.trim_leading_silence)",
    )  # fmt: skip
    p.add_argument(
        "--vad", metavar="DIR", default=None,
        help="a FunASR FSMN VAD directory (fsmn-vad): long audio is cut at the speech segments it finds, and audio "
        "without speech gets an empty text (default: the model's saved decode.vad, else cuts by frame energies)",
    )  # fmt: skip
    p.add_argument(
        "--vad-max-end-silence-ms", type=int, default=None,
        help="silence (ms) that ends a VAD segment, FunASR's max_end_silence_time (default: FunASR's schedule)",
    )  # fmt: skip
    p.add_argument(
        "--vad-merge-seconds", type=float, default=None,
        help="join consecutive VAD segments into windows of up to this many seconds, pauses included (FunASR's "
        "merge_vad / merge_length_s; default 0: a window a segment)",
    )  # fmt: skip
    p.add_argument(
        "--no-vad-gate", dest="vad_gate", action="store_const", const=False, default=None,
        help="with --vad, decode audio even where the VAD finds no speech (default: its transcript is empty; "
        "decode.vad_gate)",
    )  # fmt: skip


def window_args(p: argparse.ArgumentParser) -> None:
    """Long audio's windows: a Whisper model's own 30 s, say, where the default is the longest clip the model was
    trained on."""
    p.add_argument(
        "--max-window-seconds", type=float, default=None,
        help="decode longer audio in windows cut at low-energy points (0: never split; default: the model's saved "
        "value, else the longest audio it was trained on)",
    )  # fmt: skip
    p.add_argument(
        "--window-overlap", type=float, default=None,
        help=f"seconds two windows share where no pause separates them (default {DecodeConfig.window_overlap:g})",
    )  # fmt: skip
    p.add_argument(
        "--window-split-pause", type=float, default=None,
        help="a pause at least this long ends a window before the limit (0: fill windows to the limit; default "
        f"{DecodeConfig.window_split_pause:g})",
    )  # fmt: skip
