"""What `decode.ctc_gate` does on a model and a test set: the audio it should leave empty (silence, noise, a tone) and
the speech it must not (the test set's utterances, and one-word clips cut from them at their words' times, where a
CTC head is likeliest to hear nothing the LLM gets right).

    python bench/ctc_gate.py --model exp/demo/model --data exp/demo/corpus/test.jsonl
    python bench/ctc_gate.py --quick      # a tiny random model (numbers mean nothing)

Every set is decoded through `llmasr decode`'s own loop with the model's saved settings, gate off and on. The one-word
clips are the first and last word of each utterance decoded without error, cut at its word times (`--timestamps`)
with `--margin` seconds either side. The non-speech clips are 3 s of digital silence, of low and loud white noise
and of a 440 Hz tone at the model's sample rate.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import decode_bench_parser, emit, parse_decode_bench, reproduce_command
from decode_speed import decode_setup

NON_SPEECH_SECONDS = 3.0


def non_speech(root: Path, sample_rate: int) -> Path:
    """A manifest (no transcripts) of the non-speech clips."""
    import soundfile as sf

    n = int(NON_SPEECH_SECONDS * sample_rate)
    rng = np.random.default_rng(0)
    t = np.arange(n) / sample_rate
    clips = {"silence": np.zeros(n), "noise_low": 0.003 * rng.standard_normal(n),
             "noise_loud": 0.3 * rng.standard_normal(n), "tone_440hz": 0.3 * np.sin(2 * np.pi * 440 * t)}  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for key, wave in clips.items():
        sf.write(str(root / f"{key}.wav"), wave.astype(np.float32), sample_rate, subtype="FLOAT")
        lines.append(json.dumps({"key": key, "source": str(root / f"{key}.wav")}))
    (root / "non_speech.jsonl").write_text("\n".join(lines) + "\n")
    return root / "non_speech.jsonl"


def one_word_clips(manifest: Path, timed: Path, margin: float, out: Path, exact: bool = True) -> Path:
    """A manifest of the first and last word of each utterance of `timed` (a results.jsonl with timestamps) decoded
    without error (any, without `exact`), cut from `manifest`'s audio."""
    source = {}
    for line in manifest.read_text().splitlines():
        rec = json.loads(line)
        path = Path(rec["source"])
        source[rec["key"]] = (path if path.is_absolute() else manifest.parent / path, float(rec.get("start") or 0.0))
    lines = []
    for line in timed.read_text().splitlines():
        row = json.loads(line)
        if (exact and row["errors"]) or not row.get("timestamps") or row["key"] not in source:
            continue
        path, offset = source[row["key"]]
        for where, (word, start, end) in (("first", row["timestamps"][0]), ("last", row["timestamps"][-1])):
            a, b = max(0.0, start - margin), min(row["duration"], end + margin)
            lines.append(json.dumps({"key": f"{row['key']}_{where}", "source": str(path), "target": word,
                                     "start": round(offset + a, 4), "end": round(offset + b, 4)}))  # fmt: skip
    if not lines:
        raise SystemExit(f"{manifest}: no utterance decoded without error with word times; no one-word clips to cut")
    out.write_text("\n".join(lines) + "\n")
    return out


def both_ways(model, cfg, opts, manifest: Path, root: Path, **extra) -> dict:
    """{off, on}: decode summaries of `manifest` with the gate off and on, and each way's rows."""
    from llmasr.export.decode import decode_manifest

    got = {}
    for name, gate in (("off", False), ("on", True)):
        out = root / name
        summary = decode_manifest(model, manifest, out, dataclasses.replace(cfg, ctc_gate=gate, **extra), opts)
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        got[name] = {"summary": summary, "rows": rows}
    return got


def run(model, cfg, opts, manifest: Path, margin: float, root: Path, exact: bool = True) -> dict:
    if getattr(model, "ctc_head", None) is None:
        raise SystemExit("the model has no CTC head: the gate reads its best path")
    model.eval()
    opts = dataclasses.replace(opts, num_workers=0)
    whole = both_ways(model, cfg, opts, manifest, root / "whole", timestamps=True)
    words = one_word_clips(manifest, root / "whole" / "off" / "results.jsonl", margin, root / "words.jsonl", exact)
    cut = both_ways(model, cfg, opts, words, root / "words")
    silent = both_ways(model, cfg, opts, non_speech(root / "non_speech", model.frontend.sample_rate), root / "quiet")
    sets = []
    for name, got in (("utterances", whole), ("one-word clips", cut)):
        off, on = got["off"]["summary"], got["on"]["summary"]
        emptied = [r for r in got["on"]["rows"] if r.get("no_speech")]
        sets.append({"set": name, "utterances": on["utterances"], "wer_off": off["rate"], "wer_on": on["rate"],
                     "emptied": len(emptied), "emptied_with_words": sum(bool((r["ref"] or "").strip())
                                                                        for r in emptied)})  # fmt: skip
    texts = {r["key"]: {"off": r["hyp"]} for r in silent["off"]["rows"]}
    for r in silent["on"]["rows"]:
        texts[r["key"]]["on"] = r["hyp"]
    return {"manifest": str(manifest), "search": whole["off"]["summary"]["mode"], "margin": margin, "sets": sets,
            "non_speech": texts}  # fmt: skip


def table(res: dict) -> list[str]:
    lines = [
        f"The CTC gate on {Path(res['manifest']).name} (search: {res['search']}; one-word clips cut at word times "
        f"+-{res['margin']:g} s)",
        "",
        "| set | utterances | WER gate off | WER gate on | emptied by the gate (of them with reference words) |",
        "|---|---|---|---|---|",
    ]
    for s in res["sets"]:
        lines.append(f"| {s['set']} | {s['utterances']} | {100 * s['wer_off']:.2f}% | {100 * s['wer_on']:.2f}% | "
                     f"{s['emptied']} ({s['emptied_with_words']}) |")  # fmt: skip
    lines += ["", f"| {NON_SPEECH_SECONDS:g} s of | text, gate off | text, gate on |", "|---|---|---|"]
    for key, t in res["non_speech"].items():
        lines.append(f"| {key} | {t['off']!r} | {t['on']!r} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = decode_bench_parser(
        __doc__, "an exported model directory (llmasr export) with a CTC head", "a test manifest with transcripts"
    )
    ap.add_argument("--margin", type=float, default=0.05, help="seconds kept either side of a one-word clip's word")
    args = parse_decode_bench(ap, argv)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        root = Path(tmp)
        model, cfg, opts, manifest = decode_setup(root, args)
        res = run(model, cfg, opts, manifest, args.margin, root / "out", exact=not args.quick)
    res["command"] = reproduce_command("bench/ctc_gate.py", argv)
    emit(res, [*table(res), "", f"Reproduce: `{res['command']}`"], args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
