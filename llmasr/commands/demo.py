"""`llmasr demo [--workdir exp/demo] [--quick] [--voices V...] [--test-voices V...] [--ranks N] [key=value ...]`
(llmasr.demo.run documents the stages)."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
import time
from pathlib import Path

from llmasr.config_io import ConfigError
from llmasr.demo.hotword_eval import report_lines, stage_hotwords
from llmasr.demo.run import (
    DS_CONFIG,
    RECIPE,
    State,
    check_overrides,
    say,
    stage_corpus,
    stage_decode,
    stage_export,
    stage_llm,
    stage_long_audio,
    stage_train,
)
from llmasr.demo.synth import SynthError
from llmasr.errors import Interrupted, signal_name, signal_status, stop_signals_raise
from llmasr.train.run_log import command_logging


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="llmasr demo",
        description="Synthesize speech with espeak-ng, train a small speech LLM under DeepSpeed, export and decode.",
    )
    p.add_argument("--workdir", default="exp/demo", help="where everything goes (default exp/demo)")
    p.add_argument("--quick", action="store_true", help="tiny corpus and a short run (a smoke test, 3-5 minutes)")
    p.add_argument("--voices", type=_voice_list, help="training voices, comma-separated (espeak-ng accent+variant)")
    p.add_argument("--test-voices", type=_voice_list, help="held-out test voices, comma-separated")
    p.add_argument("--ranks", type=int, default=2, help="DeepSpeed ranks (CPU processes, or GPUs when present)")
    p.add_argument("--workers", type=int, default=2, help="processes synthesizing speech")
    p.add_argument("overrides", nargs="*", help="recipe overrides for training, e.g. train.epochs=4")
    args = p.parse_args(argv)
    if args.ranks < 1:
        p.error("--ranks must be >= 1")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"overrides must look like key.path=value, got {bad}")
    return args


def _voice_list(text: str) -> list[str]:
    voices = [v.strip() for v in text.replace(" ", ",").split(",") if v.strip()]
    if not voices:
        raise argparse.ArgumentTypeError("give at least one voice, e.g. en-us+m3,en-gb+f2")
    return voices


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    command_logging(logging.INFO)
    workdir = Path(args.workdir).resolve()
    if workdir.exists() and not workdir.is_dir():
        print(f"llmasr demo: error: --workdir {args.workdir}: a file, not a folder; choose another --workdir",
              file=sys.stderr)  # fmt: skip
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    for path, what in ((RECIPE, "recipe"), (DS_CONFIG, "DeepSpeed config")):
        if not path.is_file():
            print(f"llmasr demo: error: the demo {what} {path} is missing (run from a checkout)", file=sys.stderr)
            return 2
    state = State(workdir)
    t0 = time.time()
    try:
        with stop_signals_raise("during the demo"):
            check_overrides(args, workdir)
            corpus = stage_corpus(args, workdir, state)
            llm_dir = stage_llm(args, workdir, state, corpus)
            run_dir = stage_train(args, workdir, state, corpus, llm_dir)
            model_dir = stage_export(workdir, state, run_dir)
            scores = stage_decode(workdir, state, model_dir, corpus)
            long_audio = stage_long_audio(args, workdir, state, model_dir, corpus)
            hot = stage_hotwords(workdir, state, model_dir, corpus)
    except (SynthError, ConfigError, RuntimeError) as err:
        print(f"llmasr demo: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1  # a bad override: bad input, as train says it
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM or SIGUSR1 (Interrupted)
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        print(f"llmasr demo: stopped by {signal_name(signum)}; rerun the same command to continue: the stages it "
              "finished are reused, an unfinished one is made again, and training resumes from its latest "
              "checkpoint", file=sys.stderr, flush=True)  # fmt: skip
        return signal_status(signum)
    total = time.time() - t0
    summary = {
        "workdir": str(workdir),
        "wall_seconds": round(total, 1),
        "stage_seconds": {k: v["seconds"] for k, v in state.data.items() if k != "train_started"},
        "test_wer": scores["test"]["wer"],
        "test_chance_wer": scores["test"]["chance"],
        "test_wer_ci95": scores["test"]["ci95"],
        "test_ctc_wer": scores["test"]["ctc"],
        "test_ctc_wer_ci95": scores["test"]["ctc_ci95"],
        "test_llm_beats_ctc": scores["test"]["beats_ctc"],
        "dev_wer": scores["dev"]["wer"],
        "long_audio_wer": long_audio["wer"],
        "long_audio_parts_wer": long_audio["parts_wer"],
        "long_audio_ctc_wer": long_audio["ctc_wer"],
        "corpus": state.data["corpus"].get("counts"),
        "hotwords": hot,
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    say("done")
    _print_scores(scores, long_audio, hot)
    _print_places(summary, total, run_dir, model_dir, scores["test"]["dir"], long_audio["subtitles_dir"])
    return 0


def _print_scores(scores: dict, long_audio: dict, hot: dict | None) -> None:
    """The demo's closing lines on accuracy: test and dev WER, the CTC branch, long audio, hotwords."""
    test = scores["test"]
    print(f"  held-out-voice test WER  {test['wer']:.2%}  ({_ci(test['ci95'])}chance level {test['chance']:.2%})")
    print(f"  training-voice dev WER   {scores['dev']['wer']:.2%}")
    print(
        f"  encoder CTC branch alone {test['ctc']:.2%} test ({_ci(test['ctc_ci95'])}greedy), "
        f"{scores['dev']['ctc']:.2%} dev; the decoded test WER is the lower in {test['beats_ctc']:.0%} of paired "
        "utterance resamples"
    )
    la = long_audio
    print(
        f"  minute-long audio        {la['wer']:.2%} in {la['windows']} windows (the same test clips one by one "
        f"{la['parts_wer']:.2%}; CTC branch {la['ctc_wer']:.2%} vs {la['parts_ctc_wer']:.2%})"
    )
    if hot is not None:
        print("\n".join(report_lines(hot)))


def _print_places(summary: dict, total: float, run_dir: Path, model_dir: Path, test_dir: str, subtitles: str) -> None:
    """The demo's closing lines on time and where its outputs are."""
    print("  stage seconds            " + ", ".join(f"{k} {v:.0f}" for k, v in summary["stage_seconds"].items())
          + " (when each stage was made)")  # fmt: skip
    print(f"  wall time                {total:.0f} s (this run; stages it reused from an earlier one count 0)")
    print(f"  run directory            {run_dir}")
    board = run_dir / "tensorboard"
    print(f"  TensorBoard logs         {board}   (tensorboard --logdir {shlex.quote(str(board))})")
    print(f"  learning-rate schedule   {run_dir / 'lr_schedule.png'} ({run_dir / 'lr_schedule.csv'})")
    use = f"llmasr transcribe --model {shlex.quote(str(model_dir))} [--timestamps] [--subtitles srt] YOUR.wav"
    print(f"  exported model           {model_dir}   ({use})")
    print(f"  decoding results         {test_dir}/results.jsonl, wer.txt")
    print(f"  subtitles                {subtitles}   (the minute-long audio's, cues timed by its words)")


def _ci(interval) -> str:
    return "" if interval is None else f"95% CI {interval[0]:.2%}-{interval[1]:.2%}; "
