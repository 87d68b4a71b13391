"""`llmasr demo`: synthesize speech, pretrain a tiny LLM, fine-tune a speech LLM under DeepSpeed, export, decode.

    llmasr demo [--workdir exp/demo] [--quick] [--voices V1,V2...] [--test-voices V...] [--ranks 2] [key=value ...]

Stages, each reused on a rerun when its inputs have not changed (WORKDIR/demo_state.json holds a fingerprint per
stage; the corpus also keeps its own corpus.json):

    1 corpus   espeak-ng digit strings and word phrases, train/dev from the training voices, test from held-out
               voices (WORKDIR/corpus); global CMVN of the training features (WORKDIR/corpus/am.mvn)
    2 llm      word-level byte-level BPE tokenizer + a 4-layer Qwen2 pretrained on chat text (WORKDIR/llm)
    3 train    `deepspeed --num_gpus N --module llmasr train --config recipes/demo.yaml --deepspeed
               ds_configs/zero2.json key=value...` in a subprocess: the same path as every recipe (WORKDIR/run);
               an interrupted run resumes from its latest checkpoint
    4 export   `llmasr export` of the newest checkpoint, LoRA merged (WORKDIR/model)
    5 decode   `llmasr decode` of the held-out-voice test split (WORKDIR/decode_test) and the dev split; then
               minute-long utterances joined from test clips, decoded in windows (WORKDIR/long_audio, see
               llmasr.demo.long_audio) and scored beside the same clips one by one; then the hotword split with its
               biasing lists, with the lists in the prompt only, and with them unused (demo.hotword_eval)

Extra `key=value` arguments are recipe overrides for the training stage (e.g. train.epochs=4).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from llmasr.config_io import ConfigError
from llmasr.data.cmvn import compute_global_cmvn
from llmasr.data.frontend import FrontendConfig
from llmasr.demo.hotword_split import SYLLABLES
from llmasr.demo.launch import run_launcher
from llmasr.demo.long_audio import join_clips, score_long_audio
from llmasr.demo.synth import (
    CorpusConfig,
    SynthError,
    corpus_done,
    make_text,
    synthesize_corpus,
    transcripts,
    try_install_espeak,
)
from llmasr.demo.text_lm import TextLMConfig, build_text_lm
from llmasr.export.decode import decode_manifest, load_decode_model
from llmasr.export.export import export_model
from llmasr.run_dir import checkpoints_dir, latest
from llmasr.scoring_bootstrap import improvement_probability
from llmasr.train.ds_config import PRESET_DIR
from llmasr.train.process_group import free_port

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "demo.yaml"
DS_CONFIG = PRESET_DIR / "zero2.json"
QUICK_TRAIN_VOICES = ["en-us+m3", "en-gb+f2"]
QUICK_TEST_VOICES = ["en-us+m6"]


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class State:
    """WORKDIR/demo_state.json: per stage, the fingerprint of its inputs and how long it took."""

    def __init__(self, workdir: Path):
        self.path = workdir / "demo_state.json"
        self.data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}

    def done(self, stage: str, fp: str) -> bool:
        return (self.data.get(stage) or {}).get("fingerprint") == fp

    def mark(self, stage: str, fp: str, seconds: float, **info) -> None:
        self.data[stage] = {"fingerprint": fp, "seconds": round(seconds, 1), **info}
        self._save()

    def forget(self, stage: str) -> None:
        """Drop `stage`'s entry before its outputs are remade: an interrupted remake must not leave the old
        fingerprint vouching for what it left behind."""
        if self.data.pop(stage, None) is not None:
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2), encoding="utf-8")
        tmp.replace(self.path)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launcher() -> list[str]:
    """DeepSpeed's launcher in this Python (a `deepspeed` first on PATH may belong to another environment, whose
    ranks would run another torch and llmasr, or none)."""
    return [sys.executable, "-m", "deepspeed.launcher.runner"]


def chance_wer(results_jsonl: str | Path, metric: str = "auto") -> float:
    """Error rate of each hypothesis scored against another utterance's reference (the next one, cyclically): what
    a model with the same output habits would score if it ignored the audio. Scored as decode scores (the same
    normalisation and unit), so that it compares with the model's own rate."""
    from llmasr.scoring import score_corpus

    rows = [json.loads(line) for line in open(results_jsonl, encoding="utf-8") if line.strip()]
    if len(rows) < 2:
        raise ValueError(f"{results_jsonl}: need at least two decoded utterances for a chance baseline")
    return score_corpus(((r["ref"], rows[(i + 1) % len(rows)]["hyp"]) for i, r in enumerate(rows)), metric)[0].rate


def read_wer(hyp_dir: Path) -> dict:
    summary = json.loads((hyp_dir / "wer.json").read_text(encoding="utf-8"))
    return {
        "wer": float(summary["rate"]),
        "ci95": summary.get("rate_ci95"),
        "metric": summary.get("metric", "WER"),
        "summary": summary,
    }


# -- stages ------------------------------------------------------------------------------------------------------


def stage_corpus(args, workdir: Path, state: State) -> dict:
    if args.quick:  # two voices, digit strings only: the smallest task on which learning shows in a minute
        cfg = CorpusConfig(
            n_train=300, n_dev=40, n_test=40, digit_fraction=1.0, n_hotword=20, n_hotword_dev=0, name_repeats=12
        )
        cfg.names = cfg.names[:8]
        cfg.train_voices, cfg.test_voices = list(QUICK_TRAIN_VOICES), list(QUICK_TEST_VOICES)
    else:
        cfg = CorpusConfig()
    if args.voices:
        cfg.train_voices = args.voices
    if args.test_voices:
        cfg.test_voices = args.test_voices
    cfg.validate()
    out = workdir / "corpus"
    fp = fingerprint("corpus", cfg.__dict__)
    if corpus_done(out, cfg) and state.done("corpus", fp) and (out / "am.mvn").is_file():
        say(f"1/5 corpus: reusing {out}")
        summary = json.loads((out / "corpus.json").read_text(encoding="utf-8"))
        # the manifests beside corpus.json, wherever the workdir has been moved or copied since
        summary["manifests"] = {split: str(out / Path(path).name) for split, path in summary["manifests"].items()}
        return summary
    say("1/5 corpus: synthesizing speech with espeak-ng")
    start = time.time()
    state.forget("corpus")
    if shutil.which("espeak-ng") is None and not try_install_espeak(say):
        raise SynthError(
            "espeak-ng is needed to synthesize the demo corpus and is not installed; install it with "
            "`apt-get install -y espeak-ng` (or `sudo apt-get install -y espeak-ng`), then rerun `llmasr demo`"
        )
    summary = synthesize_corpus(out, cfg, workers=args.workers, log=lambda m: say("  " + m))
    say("  global CMVN over the training features")

    tmp = out / "am.mvn.tmp"
    compute_global_cmvn(summary["manifests"]["train"], FrontendConfig(n_mels=80, lfr_m=7, lfr_n=6), tmp, max_utts=600)
    tmp.replace(out / "am.mvn")
    state.mark("corpus", fp, time.time() - start, counts=summary["counts"], hours=summary["hours"])
    return summary


def stage_llm(args, workdir: Path, state: State, corpus: dict) -> Path:
    import numpy as np

    cfg = TextLMConfig(steps=150 if args.quick else 600)
    out = workdir / "llm"
    # the hotword names in their syllables, as a real tokenizer spells rare names in pieces
    spelled = {name: SYLLABLES.get(name, list(name)) for name in corpus["config"].get("names") or []}
    fp = fingerprint("llm", cfg.__dict__, state.data["corpus"]["fingerprint"], spelled)
    if state.done("llm", fp) and (out / "config.json").is_file():
        say(f"2/5 LLM: reusing {out}")
        return out
    say("2/5 LLM: word-level tokenizer and a Qwen2 pretrained on text")
    start = time.time()
    state.forget("llm")
    import torch

    # Training and dev transcripts plus fresh text of the same grammar (not the test split's transcripts, though
    # short fresh draws can coincide with some of them, as training transcripts do).
    texts = transcripts(corpus["manifests"]["train"]) + transcripts(corpus["manifests"]["dev"])
    rng = np.random.default_rng(1234)
    ccfg = CorpusConfig(**{k: v for k, v in corpus["config"].items() if k in ("digit_fraction",)})
    texts += [make_text(rng, ccfg) for _ in range(len(texts))]
    if out.exists():
        shutil.rmtree(out)
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():
        # Tiny matrices: one thread is as fast as two here, and far faster when other processes share the cores.
        # Only for this stage: decoding later in this process (or in a rerun that skips this stage) uses them all.
        torch.set_num_threads(1)
    try:
        info = build_text_lm(out, texts, cfg, log=lambda m: say("  " + m), spelled=spelled)
    finally:
        torch.set_num_threads(threads)
    state.mark("llm", fp, time.time() - start, **info)
    return out


def train_overrides(args, workdir: Path, corpus: dict, llm_dir: Path) -> list[str]:
    m = corpus["manifests"]

    def quoted(path) -> str:  # a YAML string whatever the path holds (",", ": ", "[", " #")
        return json.dumps(str(Path(path).resolve()))

    out = [
        f"model.llm.path={quoted(llm_dir)}",
        f"model.encoder.frontend.cmvn_file={quoted(workdir / 'corpus' / 'am.mvn')}",
        f"data.train=[{quoted(m['train'])}]",
        f"data.valid=[{quoted(m['dev'])}]",
        f"train.output_dir={quoted(workdir / 'run')}",
    ]
    if args.quick:
        out += ["train.epochs=20", "data.batching.max_seconds=20", "train.log_every=10", "data.valid_max_utts=20"]
    return out + list(args.overrides)


def check_overrides(args, workdir: Path) -> None:
    """The training recipe with every override, loaded before the first stage: a misspelt key (train.epoch=4) is
    refused at once, not by the training ranks after the corpus and the LLM are made (ConfigError). So is a
    train.output_dir other than WORKDIR/run, where the export and a rerun look for the run."""
    from llmasr.recipe import load_recipe

    corpus = {"manifests": {split: workdir / "corpus" / f"{split}.jsonl" for split in ("train", "dev")}}
    recipe = load_recipe(RECIPE, train_overrides(args, workdir, corpus, workdir / "llm"))
    if Path(recipe.train.output_dir).resolve() != (workdir / "run").resolve():
        raise ConfigError(
            f"train.output_dir={recipe.train.output_dir}: the demo trains in WORKDIR/run ({workdir / 'run'}); "
            "choose the place with --workdir instead"
        )


def stage_train(args, workdir: Path, state: State, corpus: dict, llm_dir: Path) -> Path:
    run_dir = workdir / "run"
    overrides = train_overrides(args, workdir, corpus, llm_dir)
    ranks = args.ranks
    gpus = gpu_count()
    if gpus:
        ranks = min(ranks, gpus)
    fp = fingerprint(
        "train",
        overrides,
        ranks,
        RECIPE.read_text(encoding="utf-8"),
        DS_CONFIG.read_text(encoding="utf-8"),
        state.data["llm"],
    )
    has_checkpoint = latest(checkpoints_dir(run_dir)) is not None
    if state.done("train", fp) and has_checkpoint:
        say(f"3/5 train: reusing {run_dir}")
        return run_dir
    previous = (state.data.get("train_started") or {}).get("fingerprint")
    resume = previous == fp and has_checkpoint
    state.forget("train")  # the run directory is about to hold another run, or more of this one
    if run_dir.exists() and not resume:
        say(f"3/5 train: {run_dir} is removed and trained again from the start: {_retrain_reason(previous, fp)}")
        shutil.rmtree(run_dir)
    state.mark("train_started", fp, 0.0)
    cmd = [*launcher(), "--num_gpus", str(ranks), "--master_port", str(free_port()), "--module", "llmasr", "train"]
    cmd += ["--config", str(RECIPE), "--deepspeed", str(DS_CONFIG), *(["--resume"] if resume else []), *overrides]
    where = f"{ranks} GPU rank(s)" if gpus else f"{ranks} CPU rank(s) (gloo)"
    say(f"3/5 train: DeepSpeed ZeRO-2 on {where}{', resuming from the latest checkpoint' if resume else ''}")
    say("  $ " + shlex.join(cmd))
    env = dict(os.environ)  # CPU ranks split the cores between them (llmasr.train.process_group.share_cpu_cores)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.time()
    status = run_launcher(cmd, env, str(REPO), say)  # a stop signal stops the ranks too, with a checkpoint
    if status != 0:
        log_file = run_dir / "train.log"
        where = f"see {log_file}" if log_file.is_file() else "its ranks' messages are above"
        raise RuntimeError(f"training failed (exit {status}); {where}")
    state.mark("train", fp, time.time() - start, ranks=ranks, gpus=gpus)
    return run_dir


def _retrain_reason(previous: str | None, fp: str) -> str:
    """Why the demo's run folder is not reused nor resumed (`previous`: the fingerprint of the run it holds)."""
    if previous is None:
        return "demo_state.json vouches for no run there"
    if previous == fp:
        return "its run saved no checkpoint to resume"
    return (
        "its settings differ from this run's (the recipe, the DeepSpeed preset, the overrides, the ranks, the "
        "corpus or the LLM: an upgraded llmasr may ship another recipe)"
    )


def stage_export(workdir: Path, state: State, run_dir: Path) -> Path:
    out = workdir / "model"
    fp = fingerprint("export", state.data["train"]["fingerprint"])
    if state.done("export", fp) and out.is_dir():
        say(f"4/5 export: reusing {out}")
        return out
    say("4/5 export: merging LoRA into the LLM and writing a self-contained model")
    start = time.time()
    state.forget("export")
    export_model(run_dir, out, overwrite=True)
    state.mark("export", fp, time.time() - start)
    return out


def stage_decode(workdir: Path, state: State, model_dir: Path, corpus: dict) -> dict:
    results, model = {}, None
    for split in ("test", "dev"):
        out = workdir / f"decode_{split}"
        fp = fingerprint("decode", split, state.data["export"]["fingerprint"])
        stage = f"decode_{split}"
        if not (state.done(stage, fp) and (out / "wer.json").is_file() and (out / "ctc" / "wer.json").is_file()):
            say(f"5/5 decode: {split} split ({'held-out voices' if split == 'test' else 'training voices'})")
            start = time.time()
            state.forget(stage)
            if model is None:
                model, cfg, opts, device = _decode_model(model_dir)
            summary = decode_manifest(model, corpus["manifests"][split], out, cfg, opts, device=device)
            print(f"{summary['text']}\n{summary['ctc']['text']}")
            if summary["too_much_bad_data"]:
                raise RuntimeError(f"decoding the {split} split failed: {summary['too_much_bad_data']}")
            state.mark(stage, fp, time.time() - start)
        ctc, llm = read_wer(out / "ctc"), read_wer(out)
        results[split] = {
            **llm,
            "ctc": ctc["wer"],
            "ctc_ci95": ctc["summary"].get("rate_ci95"),
            "beats_ctc": beats(out / "results.jsonl", out / "ctc" / "results.jsonl"),
            "chance": chance_wer(out / "results.jsonl", llm["summary"].get("requested", "auto")),  # as decode scored
            "dir": str(out),
        }
    return results


def beats(results_a: Path, results_b: Path) -> float:
    """The probability that hypotheses A have fewer errors than hypotheses B of the same utterances (paired
    bootstrap over utterances, llmasr.scoring_bootstrap)."""
    a, b = ([json.loads(line) for line in open(p, encoding="utf-8") if line.strip()] for p in (results_a, results_b))
    if [r["key"] for r in a] != [r["key"] for r in b]:
        raise RuntimeError(f"{results_a} and {results_b} do not hold the same utterances in the same order")
    return improvement_probability([r["errors"] for r in a], [r["errors"] for r in b])


def stage_long_audio(args, workdir: Path, state: State, model_dir: Path, corpus: dict) -> dict:
    """Minute-long utterances joined from the test clips (one with --quick, else three), decoded in windows."""
    out = workdir / "long_audio"
    count = 1 if args.quick else 3
    fp = fingerprint("long_audio", count, "with subtitles", state.data["export"]["fingerprint"])
    result = out / "result.json"
    if state.done("long_audio", fp) and result.is_file():
        return json.loads(result.read_text(encoding="utf-8"))
    say("5/5 decode: minute-long utterances joined from test clips, decoded in windows")
    start = time.time()
    state.forget("long_audio")
    model, cfg, opts, device = _decode_model(model_dir)
    try:
        joined = join_clips(corpus["manifests"]["test"], out, seconds=60.0, count=count)
        parts = workdir / "decode_test" / "results.jsonl"
        scores = score_long_audio(model, joined, parts, out / "decode", cfg, opts, device=device)
    except (ValueError, KeyError) as err:
        raise RuntimeError(f"the long-audio check failed: {err}") from err
    print(scores["text"])
    result.write_text(json.dumps(scores, indent=2), encoding="utf-8")
    state.mark("long_audio", fp, time.time() - start)
    return scores


def _decode_model(model_dir: Path) -> tuple:
    """The exported model on the best device, with its own decode settings, plus the CTC branch's own WER."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, opts = load_decode_model(model_dir)
    return model.to(device), cfg, dataclasses.replace(opts, num_workers=0, ctc=True), device
