"""What a threshold on `avg_logprob` buys `llmasr data pseudo-label`: on a labelled set decoded with --confidence, the
lines each threshold keeps (count, hours) and the error rate of the kept lines and of those it leaves out.

    python bench/pseudo_labels.py --model exp/demo/model --data exp/demo/corpus/test.jsonl --snr-db 10 0
    python bench/pseudo_labels.py --quick      # a tiny random model (numbers mean nothing)

The set is decoded through `llmasr decode`'s own loop with the model's saved settings and decode.confidence, as it
is and, per `--snr-db`, with white noise mixed into every clip at that signal-to-noise ratio (harder audio, where
the model errs more: what untranscribed data from another source looks like). Each threshold then runs the real
pseudo-label filter (llmasr.export.pseudo_labels) over that decode's results.jsonl.
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

THRESHOLDS = (None, -0.05, -0.1, -0.2, -0.3, -0.5, -1.0)


def noisy(manifest: Path, snr_db: float, out: Path) -> Path:
    """`manifest` with every clip's audio mixed with white noise at `snr_db` (its own power), written under `out`."""
    import soundfile as sf

    from llmasr.data.manifest import Manifest

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for utt in Manifest.open(manifest):
        wave, rate = sf.read(utt.source, dtype="float32", always_2d=False)
        if wave.ndim > 1:
            wave = wave.mean(axis=1)
        power = float(np.mean(wave.astype(np.float64) ** 2)) or 1e-10
        mixed = wave + rng.standard_normal(wave.size).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
        path = out / f"{utt.key}.wav"
        sf.write(str(path), mixed.astype(np.float32), rate, subtype="FLOAT")
        line = {"key": utt.key, "source": str(path), "target": utt.target}
        for name in ("start", "end", "duration"):
            if getattr(utt, name):
                line[name] = getattr(utt, name)
        lines.append(json.dumps(line, ensure_ascii=False))
    (out / "noisy.jsonl").write_text("\n".join(lines) + "\n")
    return out / "noisy.jsonl"


def thresholds(decoded: Path, root: Path, keep_truncated: bool) -> list[dict]:
    """Each threshold's lines kept, their hours and error rate, and the rate of the lines it left out."""
    from llmasr.export.pseudo_labels import LabelFilter, PseudoLabelError, pseudo_labels
    from llmasr.scoring import score_corpus

    rows = [json.loads(line) for line in (decoded / "results.jsonl").read_text().splitlines()]
    got = []
    for t in THRESHOLDS:
        filt = LabelFilter(min_avg_logprob=t, keep_truncated=keep_truncated)
        try:
            written = pseudo_labels(decoded, root / f"pl_{t}.jsonl", filt)
            kept_count, hours = written.kept, written.seconds / 3600
        except PseudoLabelError:  # no line kept
            kept_count, hours = 0, 0.0
        kept = [r for r in rows if filt.reason(r) is None]
        left = [r for r in rows if filt.reason(r) is not None]
        assert len(kept) == kept_count  # the filter as the command applies it
        rate = {name: score_corpus([(r["ref"], r["hyp"]) for r in part])[0].rate if part else None
                for name, part in (("kept", kept), ("left_out", left))}  # fmt: skip
        got.append({"threshold": t, "kept": kept_count, "lines": len(rows), "hours": hours, "wer_kept": rate["kept"],
                    "wer_left_out": rate["left_out"]})  # fmt: skip
    return got


def run(model, cfg, opts, manifest: Path, snrs: list[float], root: Path, keep_truncated: bool) -> dict:
    from llmasr.export.decode import decode_manifest

    model.eval()
    cfg = dataclasses.replace(cfg, confidence=True)
    opts = dataclasses.replace(opts, num_workers=0)
    sets = [("as recorded", manifest)] + [(f"white noise at {s:g} dB SNR", noisy(manifest, s, root / f"snr{s:g}"))
                                          for s in snrs]  # fmt: skip
    res = []
    for name, path in sets:
        out = root / f"decoded_{len(res)}"
        summary = decode_manifest(model, path, out, cfg, opts)
        res.append({"set": name, "wer": summary["rate"], "thresholds": thresholds(out, root, keep_truncated)})
    return {"manifest": str(manifest), "search": summary["mode"], "keep_truncated": keep_truncated, "sets": res}


def table(res: dict) -> list[str]:
    lines = [f"Pseudo-labels of {Path(res['manifest']).name} by avg_logprob threshold (search: {res['search']}"
             f"{'; cut transcripts kept' if res['keep_truncated'] else ''})", ""]  # fmt: skip
    for s in res["sets"]:
        head = "| avg_logprob >= | lines kept | hours kept | WER kept | WER left out |"
        lines += [f"{s['set']}: WER {100 * s['wer']:.2f}%", "", head, "|---|---|---|---|---|"]
        for t in s["thresholds"]:
            pct = [("n/a" if v is None else f"{100 * v:.2f}%") for v in (t["wer_kept"], t["wer_left_out"])]
            lines.append(f"| {'none' if t['threshold'] is None else t['threshold']} | {t['kept']} of {t['lines']} | "
                         f"{t['hours']:.3f} | {pct[0]} | {pct[1]} |")  # fmt: skip
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = decode_bench_parser(__doc__, "an exported model directory (llmasr export)", "a test manifest with transcripts")
    ap.add_argument("--snr-db", type=float, nargs="*", default=[], help="also decode it with white noise at these SNRs")
    args = parse_decode_bench(ap, argv)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        root = Path(tmp)
        model, cfg, opts, manifest = decode_setup(root, args)
        # the random model writes on to the length cap: under --quick its cut transcripts are kept, to have lines
        res = run(model, cfg, opts, manifest, args.snr_db, root / "out", keep_truncated=args.quick)
    res["command"] = reproduce_command("bench/pseudo_labels.py", argv)
    emit(res, [*table(res), f"Reproduce: `{res['command']}`"], args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
