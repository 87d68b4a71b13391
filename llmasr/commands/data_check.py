"""`llmasr data check [MANIFEST...] [--recipe R [--valid] [key=value ...]] [batching options] [--vad DIR]`: validate
manifests, preview batches, and with a VAD list the transcripts their audio does not bear out.

With a recipe whose CTC head spells a vocabulary file, transcripts it cannot spell are bad lines, as training's
start-up screen finds them; with a CTC branch (model.ctc.weight > 0), the lines whose CTC labels outnumber their
encoder frames are named (their CTC loss would be 0). With the LLM (--llm DIR, or a recipe's model.llm.path), the
transcripts its tokenizer cannot write (its unk token) are named, as training's start-up warns of them."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmasr.command_run import command
from llmasr.commands.data_cmvn import at_least_one
from llmasr.config_io import ConfigError, from_dict, to_dict
from llmasr.config_overrides import split_overrides
from llmasr.data.check import check_data
from llmasr.data.check_report import format_report
from llmasr.data.config import DataConfig
from llmasr.data.dataset import CTCRule
from llmasr.data.frontend import FrontendConfig
from llmasr.data.noise_list import noise_problem
from llmasr.data.speech_check import hear_speech
from llmasr.data.write_durations import check_out, write_durations
from llmasr.models.ctc import build_ctc_tokenizer
from llmasr.models.encoder_spec import encoder_frontend
from llmasr.models.fsmn_vad import load_vad
from llmasr.recipe import Recipe, load_recipe
from llmasr.train.check_languages import data_check_text, per_line_recipe

# command-line option -> data.batching key
BATCHING_OPTIONS = (
    "max_seconds", "max_frames", "max_target_tokens", "num_buckets", "min_duration", "max_duration", "max_target_len"
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmasr data check", description=__doc__.split(":", 1)[1].strip())
    p.add_argument(
        "manifests", nargs="*",
        help="manifest files (default: the recipe's data.train), and recipe overrides (key.path=value) as train takes",
    )  # fmt: skip
    p.add_argument("--recipe", help="recipe YAML: its data: section gives batching, filters and max_bad_fraction")
    p.add_argument("--valid", action="store_true", help="with --recipe and no manifests: check data.valid")
    p.add_argument(
        "--llm", metavar="DIR",
        help="an LLM directory (default: the recipe's model.llm.path): name the transcripts its tokenizer cannot "
        "write (spells as its unk token)",
    )  # fmt: skip
    p.add_argument("--world-size", type=at_least_one, default=1)
    budget = p.add_mutually_exclusive_group()  # the batch budget is one or the other
    budget.add_argument("--max-seconds", type=float)
    budget.add_argument("--max-frames", type=int)
    p.add_argument("--max-target-tokens", type=int)
    p.add_argument("--num-buckets", type=int)
    p.add_argument("--min-duration", type=float)
    p.add_argument("--max-duration", type=float)
    p.add_argument("--max-target-len", type=int)
    p.add_argument("--max-bad-fraction", type=float)
    p.add_argument("--frame-shift-ms", type=float, help="feature frame shift (for --max-frames); default 10")
    p.add_argument("--lfr-n", type=int, help="low-frame-rate stride (for --max-frames); default 1")
    p.add_argument("--no-probe", action="store_true", help="parse lines only; do not open the audio files")
    p.add_argument(
        "--write-durations", metavar="OUT",
        help="write the one manifest checked to OUT (beside it) with a duration on each line that states none, as "
        "probed: training's start-up then opens no audio header for them",
    )  # fmt: skip
    p.add_argument(
        "--decode", action="store_true",
        help="manifests to decode: a line without a transcript is audio to transcribe, not a bad line",
    )  # fmt: skip
    p.add_argument(
        "--vad", metavar="DIR",
        help="a FunASR FSMN VAD directory: list transcripts over audio without speech and speaking rates far from "
        "the median (every line's audio is read)",
    )  # fmt: skip
    p.add_argument(
        "--vad-max-end-silence-ms", type=int, default=None,
        help="silence (ms) that ends a VAD segment, FunASR's max_end_silence_time (default: FunASR's schedule)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="processes that run the VAD (--vad; 0: this one)")
    p.add_argument("--threads", type=int, default=8, help="parallel header probes")
    p.add_argument("--show", type=int, default=50, help="bad lines to list")
    return p


def configs(args: argparse.Namespace, recipe: Recipe | None) -> tuple[DataConfig, FrontendConfig]:
    """The data section and the encoder's frontend: the recipe's (when given), the command line's options on top."""
    data_dict: dict = {}
    front_dict: dict = {}
    if recipe is not None:
        data_dict = to_dict(recipe.data)
        # The encoder's own frontend (a FunASR directory's LFR/CMVN, Whisper's mel), no weights loaded.
        front_dict = to_dict(encoder_frontend(recipe.model.encoder))
    batching = dict(data_dict.get("batching") or {})
    for key in BATCHING_OPTIONS:
        value = getattr(args, key)
        if value is not None:
            batching[key] = value
            if key == "max_frames":
                batching["max_seconds"] = None
            if key == "max_seconds":
                batching["max_frames"] = None
    data_dict["batching"] = batching
    if args.max_bad_fraction is not None:
        data_dict["max_bad_fraction"] = args.max_bad_fraction
    if args.frame_shift_ms is not None:
        front_dict["frame_shift_ms"] = args.frame_shift_ms
    if args.lfr_n is not None:
        front_dict["lfr_n"] = args.lfr_n
    front_dict.pop("cmvn_file", None)  # not needed to count frames
    return from_dict(DataConfig, data_dict, "data"), from_dict(FrontendConfig, front_dict, "model.encoder.frontend")


def ctc_rule(recipe: Recipe | None):
    """The recipe's CTC spelling rule when its head spells a vocabulary file, else None."""
    ctc = recipe.model.ctc if recipe is not None else None
    if ctc is None or ctc.weight <= 0 or ctc.vocab == "llm":
        return None
    return CTCRule(build_ctc_tokenizer(ctc))


def ctc_frames(args: argparse.Namespace, recipe: Recipe | None, rule):
    """(the CTC rule, seconds -> the encoder frames its head reads, or why they are not counted) for a recipe that
    trains a CTC branch, so that the lines whose labels outnumber their frames are named (llmasr.data.ctc_frames);
    (rule, None) otherwise. A head over the LLM's vocabulary spells with the LLM's tokenizer, as training does."""
    if recipe is None or args.decode or recipe.model.ctc.weight <= 0:
        return rule, None
    from llmasr.models.builder import audio_side
    from llmasr.models.context import encoder_frames
    from llmasr.train.resolve import text_side

    try:
        rule = rule if rule is not None else CTCRule(text_side(recipe.model).ctc_tokenizer)
        audio = audio_side(recipe.model)
    except (ConfigError, OSError) as err:
        return rule, f"not counted: the model {recipe.model.llm.path} cannot be read here ({err})"
    return rule, lambda seconds: encoder_frames(audio, seconds)


def hear(args: argparse.Namespace, manifests: list[str], sample_rate: int):
    """--vad's findings (llmasr.data.speech_check); ConfigError for a VAD that does not load or reads audio at
    another sample rate than the encoder's frontend."""
    if args.vad_max_end_silence_ms is not None and not args.vad_max_end_silence_ms > 0:
        raise ConfigError(f"--vad-max-end-silence-ms: must be > 0 ms, got {args.vad_max_end_silence_ms}")
    vad = load_vad(args.vad, sample_rate, key="--vad")
    per_ms = sample_rate / 1000

    def segments(wave):
        return [(a * per_ms, b * per_ms) for a, b in vad.segments_ms(wave, args.vad_max_end_silence_ms)]

    return hear_speech(manifests, segments, sample_rate, vad=args.vad, workers=max(args.workers, 0))


def llm_unk(args: argparse.Namespace, recipe: Recipe | None):
    """What the LLM's tokenizer spells unk (llmasr.data.llm_unk.LLMUnk; a recipe's asks the text its labels spell,
    through its prompt builder), a line saying why it is not asked, or None without an LLM to ask."""
    from llmasr.data.llm_unk import LLMUnk, unk_of_prompt, unk_reach
    from llmasr.models.chat_template import PromptError
    from llmasr.models.llm import check_llm_dir
    from llmasr.models.tokenizer import load_tokenizer

    if args.decode or (args.llm is None and recipe is None):
        return None
    where = args.llm if args.llm is not None else recipe.model.llm.path
    try:
        if args.llm is not None:
            tokenizer = load_tokenizer(check_llm_dir(args.llm, key="--llm"))
            found = LLMUnk.of(tokenizer, source=f"the tokenizer of {args.llm}")
        else:
            from llmasr.train.resolve import text_side

            tokenizer = (side := text_side(recipe.model)).tokenizer
            found = unk_of_prompt(side.prompt)
    except (ConfigError, PromptError, OSError) as err:
        if args.llm is not None:
            raise
        return f"not asked: the LLM {where} cannot be read here ({err})"
    return found or f"{where}: its tokenizer spells any text ({unk_reach(tokenizer)[1]}): no transcript is unk"


def budget_rows(recipe: Recipe | None, data_cfg: DataConfig):
    """The recipe's count of each line's LLM positions when data.batching.max_llm_tokens is set (its LLM's tokenizer
    and the encoder and adaptor on the meta device are read for it), else None."""
    if recipe is None or data_cfg.batching.max_llm_tokens is None:
        return None
    from llmasr.train.resolve import llm_rows, text_side

    return llm_rows(recipe.model, data_cfg, text_side(recipe.model))


@command("llmasr data check")
def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_intermixed_args(argv)  # overrides may come before and after the options
    named, overrides = split_overrides(args.manifests)
    if overrides and not args.recipe:
        p.error(f"{overrides[0]}: a recipe override needs --recipe")
    # typed, manifest paths resolved against it; its am.mvn may not be written yet (llmasr data cmvn writes it) and
    # is not read here
    recipe = load_recipe(args.recipe, [*overrides, "model.encoder.frontend.cmvn_file=null"]) if args.recipe else None
    data_cfg, frontend = configs(args, recipe)
    key = None if named else f"data.{'valid' if args.valid else 'train'}"  # the recipe's list: named by its place
    specs = named or list(data_cfg.valid_manifests if args.valid else data_cfg.train_manifests)
    if not specs:
        p.error(f"no manifests: name them, or give --recipe with data.{'valid' if args.valid else 'train'}")
    if args.write_durations and (len(specs) != 1 or args.no_probe):
        p.error("--write-durations: check one manifest, with its audio probed (not --no-probe)")
    if args.write_durations:  # refused before the audio is probed, not after
        check_out(Path(getattr(specs[0], "path", specs[0])), Path(args.write_durations))
    rule, frames = ctc_frames(args, recipe, None if args.decode else ctc_rule(recipe))
    report = check_data(
        specs, data_cfg, frontend, world_size=args.world_size, probe=not args.no_probe, threads=args.threads,
        need_target=not args.decode, ctc_labels=rule, train=not args.valid, llm_rows=budget_rows(recipe, data_cfg),
        llm_unk=llm_unk(args, recipe), ctc_frames=None if isinstance(frames, str) else frames, key=key,
        ctc_vocab_kind=recipe.model.ctc.vocab_kind if recipe is not None else "token_list",
    )  # fmt: skip
    if isinstance(frames, str):
        report.ctc_frames_text = frames
    if recipe is not None and not (args.valid or args.decode) and (why := noise_problem(data_cfg.augment.noise)):
        report.errors.append(why)  # training refuses it at start-up: said here with the rest of its data
    if args.vad:
        report.speech = hear(args, report.manifests, frontend.sample_rate)
    if recipe is not None and per_line_recipe(recipe):  # SenseVoice's query: each line's language, or "auto"
        report.language_text = data_check_text(report.languages, key or "manifest")
    print(format_report(report, max_examples=args.show))
    if args.write_durations and not report.errors:
        path = getattr(specs[0], "path", specs[0])
        counts = write_durations(path, report.durations, args.write_durations)
        print(f"wrote {args.write_durations}: {counts['added']} line(s) given the duration probed, {counts['stated']} "
              f"already stating one, {counts['left']} left without (bad lines, above)")  # fmt: skip
    if report.errors:  # a manifest that cannot be opened is bad input (2), as every command reports it
        return 2
    return 0 if report.ok else 1
