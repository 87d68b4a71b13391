"""The demo's hotword stage: the held-out-voice `hotword` split decoded with its biasing lists (in the prompt and
boosted in the search, the defaults), with the lists in the prompt only (`--hotword-boost 0`), and with the same
lists unused (`llmasr decode --hotwords-unprompted`), so B-WER, U-WER and distractor leaks are read side by side on
the same utterances and the same lists, and the prompt's share of the gain apart from the search's.

Each utterance's list holds its made-up name (which training heard 40 times) among four other names; a fifth of
the lists hold no name of the utterance at all (demo.hotword_split).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from llmasr.demo.run import State, _decode_model, fingerprint, say
from llmasr.export.decode import decode_manifest

# decode directory suffix -> (lists unprompted, hotword_boost: None for the model's default)
RUNS = {"hotword": (False, None), "hotword_prompt_only": (False, 0.0), "hotword_unprompted": (True, None)}
HOW = {
    "hotword": "biasing lists in the prompt and boosted in the search",
    "hotword_prompt_only": "biasing lists in the prompt only",
    "hotword_unprompted": "the same lists scored, not used",
}


def stage_hotwords(workdir: Path, state: State, model_dir: Path, corpus: dict) -> dict | None:
    """Decode the hotword split both ways (reusing results of the same export); None when the corpus has none."""
    manifest = corpus["manifests"].get("hotword")
    if manifest is None:
        return None
    model = None
    for name, (unprompted, boost) in RUNS.items():
        out = workdir / f"decode_{name}"
        fp = fingerprint("decode", name, state.data["export"]["fingerprint"])
        if state.done(f"decode_{name}", fp) and (out / "wer.json").is_file():
            continue
        say(f"5/5 decode: hotword split (held-out voices, made-up names; {HOW[name]})")
        start = time.time()
        state.forget(f"decode_{name}")
        if model is None:
            model, cfg, opts, device = _decode_model(model_dir)
        opts = dataclasses.replace(opts, ctc=False, hotwords_unprompted=unprompted)
        run_cfg = dataclasses.replace(cfg, hotword_boost=boost) if boost is not None else cfg
        summary = decode_manifest(model, manifest, out, run_cfg, opts, device=device)
        print(summary["text"])
        if summary["too_much_bad_data"]:
            raise RuntimeError(f"decoding the hotword split failed: {summary['too_much_bad_data']}")
        state.mark(f"decode_{name}", fp, time.time() - start)
    return {name: hotword_scores(workdir / f"decode_{name}") for name in RUNS}


def hotword_scores(hyp_dir: Path) -> dict:
    """WER, B-WER, U-WER, phrase recall and leak rate of one decoding run (its wer.json)."""
    summary = json.loads((hyp_dir / "wer.json").read_text(encoding="utf-8"))
    hot = summary.get("hotwords")
    if hot is None:
        raise RuntimeError(f"{hyp_dir / 'wer.json'}: no hotword scores (were the lists lost from the manifest?)")
    return {
        "wer": float(summary["rate"]),
        "b_wer": hot["biased"]["rate"],
        "u_wer": hot["unbiased"]["rate"],
        "recall": hot["recall"],
        "leak_rate": hot["leak_rate"],
        "leaked": hot["leaked"],
        "distractors": hot["distractors"],
        "dir": str(hyp_dir),
    }


def report_lines(scores: dict) -> list[str]:
    """The demo's closing lines for the hotword split."""
    on, prompt, off = scores["hotword"], scores["hotword_prompt_only"], scores["hotword_unprompted"]

    def pct(x) -> str:
        return "n/a" if x is None else f"{x:.2%}"

    return [
        f"  hotword split B-WER      {pct(on['b_wer'])} with lists, {pct(off['b_wer'])} without "
        f"(errors on the made-up names; lists in the prompt only: {pct(prompt['b_wer'])})",
        f"  hotword split U-WER      {pct(on['u_wer'])} with lists, {pct(off['u_wer'])} without (the other words; "
        f"prompt only: {pct(prompt['u_wer'])})",
        f"  hotword leaks            {on['leaked']} of {on['distractors']} distractor names ({pct(on['leak_rate'])}); "
        f"name recall {pct(on['recall'])} with lists, {pct(off['recall'])} without",
    ]
