"""Decoding speed and accuracy per search mode: greedy, beam, and the CTC-guided ones, through `llmasr decode`'s own
loop (decode_manifest), so the numbers are those its wer.txt reports.

    python bench/decode_speed.py --model EXPORTED_DIR --data test.jsonl [--limit 300] [--beam 4] [--ctc-weight 0.5]
    python bench/decode_speed.py --quick     # a tiny random model on six synthetic utterances (numbers mean nothing)

For each mode: utterances/s, real-time factor (decoding seconds / audio seconds), WER with its insertions, and
the truncations the guards made. Modes: greedy, beam N, greedy + CTC, beam N + CTC (CTC modes need a CTC head).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from _common import decode_bench_parser, emit, parse_decode_bench, reproduce_command


def modes(beam: int, weight: float, has_ctc: bool) -> list[tuple[str, dict]]:
    """(name, DecodeConfig changes) of every mode this model can run."""
    out = [("greedy", {"num_beams": 1, "ctc_weight": 0.0}), (f"beam {beam}", {"num_beams": beam, "ctc_weight": 0.0})]
    if has_ctc:
        out += [(f"greedy + CTC {weight:g}", {"num_beams": 1, "ctc_weight": weight})]
        out += [(f"beam {beam} + CTC {weight:g}", {"num_beams": beam, "ctc_weight": weight})]
    return out


def quick_setup(root: Path):
    """A tiny random SpeechLLM with a CTC head and a six-utterance manifest."""
    import llmasr
    from llmasr.testing.run_dirs import write_corpus
    from llmasr.testing.tiny_llm import write_tiny_llm_dir
    from llmasr.testing.tiny_recipe import tiny_model_section

    torch.manual_seed(0)
    model = llmasr.build_model(tiny_model_section(write_tiny_llm_dir(root / "llm"), ctc_weight=0.3))
    texts = ["zero one two", "three four", "five six seven eight", "nine", "hello world", "the quick brown fox"]
    return model, write_corpus(root / "data", texts)


def decode_setup(root: Path, args) -> tuple:
    """(model, DecodeConfig, DecodeOptions, manifest): quick_setup's with a 4-token cap under `args.quick`, else
    `args.model` with its saved settings and `args.data`."""
    from llmasr.export.decode import DecodeOptions, load_decode_model
    from llmasr.models.decoding import DecodeConfig

    if args.quick:
        model, manifest = quick_setup(root)
        return model, DecodeConfig(max_new_tokens=4), DecodeOptions(), manifest
    model, cfg, opts = load_decode_model(args.model)
    return model, cfg, opts, Path(args.data)


def limited(manifest: Path, limit: int | None, root: Path) -> Path:
    """The manifest's first `limit` lines, in a copy beside it (relative audio paths keep working)."""
    if not limit:
        return manifest
    lines = manifest.read_text().splitlines()[:limit]
    out = manifest.parent / f".decode_speed_{limit}_{manifest.name}"
    out.write_text("\n".join(lines) + "\n")
    return out


def run(model, manifest: Path, args, root: Path) -> dict:
    from llmasr.export.decode import DecodeOptions, decode_manifest
    from llmasr.models.decoding import DecodeConfig, decode_config

    model.eval()
    base = DecodeConfig(batch_seconds=args.batch_seconds)
    opts = DecodeOptions(num_workers=args.num_workers)
    rows = []
    for name, changes in modes(args.beam, args.ctc_weight, model.ctc_head is not None):
        cfg = decode_config(base, **changes)
        s = decode_manifest(model, manifest, root / name.replace(" ", "_"), cfg, opts)
        rows.append({
            "mode": name, "search": s["mode"], "utts_per_second": s["utts_per_second"], "rtf": s["rtf"],
            "wer": s["rate"], "insertions": s["insertions"], "deletions": s["deletions"],
            "substitutions": s["substitutions"], "truncated": s["truncated"], "utterances": s["utterances"],
            "audio_seconds": s["audio_seconds"],
        })  # fmt: skip
    return {"manifest": str(manifest), "device": "cpu", "threads": torch.get_num_threads(), "modes": rows}


def table(res: dict) -> list[str]:
    lines = [
        f"Decoding speed per mode ({res['modes'][0]['utterances']} utterances, "
        f"{res['modes'][0]['audio_seconds']:.0f} s of audio, CPU, {res['threads']} threads)",
        "",
        "| mode | utterances/s | RTF | WER | ins | del | sub | truncated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in res["modes"]:
        lines.append(
            f"| {m['mode']} | {m['utts_per_second']:.2f} | {m['rtf']:.4f} | {100 * m['wer']:.2f}% | "
            f"{m['insertions']} | {m['deletions']} | {m['substitutions']} | {m['truncated']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = decode_bench_parser(__doc__, "an exported model directory (llmasr export)", "a manifest to decode")
    ap.add_argument("--limit", type=int, default=None, help="decode only the manifest's first N lines")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--ctc-weight", type=float, default=0.5)
    ap.add_argument("--batch-seconds", type=float, default=120.0)
    ap.add_argument("--num-workers", type=int, default=1)
    args = parse_decode_bench(ap, argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.quick:
            model, manifest = quick_setup(root)
        else:
            from llmasr.models.exported import load_exported

            model, manifest = load_exported(args.model), Path(args.data)
        manifest = limited(manifest, args.limit, root)
        try:
            res = run(model, manifest, args, root / "out")
        finally:
            if manifest.name.startswith(".decode_speed_"):
                manifest.unlink()
    res["command"] = reproduce_command("bench/decode_speed.py", argv)
    emit(res, [*table(res), "", f"Reproduce: `{res['command']}`"], args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
