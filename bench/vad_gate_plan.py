"""What a VAD gate's pass over a test set costs before decoding starts (llmasr.data.window_plan.split_long): wall
seconds and audio seconds per second, made in the decoding process and by N loader workers (what a decode rank does
with `--num-workers N`; on R ranks each rank reads 1/R of the recordings), with the plans compared.

    python bench/vad_gate_plan.py [--quick] [--files 120] [--seconds 10] [--workers 0 1 2] [--json-out F]

The VAD has fsmn-vad's real sizes with llmasr.testing.tiny_vad's loudness path; the recordings are syllable bursts
with pauses (llmasr.testing.tiny_vad.vad_case_audio), FLOAT wav files read from disk as decoding reads them.
--quick: 6 files of 3 s and the tiny VAD (the suite's smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import emit, reproduce_command  # noqa: E402
from vad_speed import write_vad  # noqa: E402

SR = 16000


def write_corpus(root: Path, files: int, seconds: float) -> Path:
    import soundfile as sf

    from llmasr.testing.tiny_vad import vad_case_audio

    lines = []
    for k in range(files):
        sf.write(str(root / f"{k}.wav"), vad_case_audio({"seconds": seconds, "seed": k}), SR, subtype="FLOAT")
        lines.append(json.dumps({"key": f"u{k}", "source": f"{k}.wav", "target": "x"}))
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")
    return root / "m.jsonl"


def time_plan(manifest_path: Path, vad_dir: Path, workers: int) -> tuple[float, tuple]:
    import numpy as np

    from llmasr.data.loader import open_manifests
    from llmasr.data.window_plan import PlanShare, WindowRules, split_long
    from llmasr.models.fsmn_vad import FsmnVad

    vad = FsmnVad.from_dir(vad_dir)

    def segments(wave):
        return [(a * SR // 1000, b * SR // 1000) for a, b in vad.segments_ms(wave)]

    manifest, _ = open_manifests([str(manifest_path)], mix=False)
    known = np.flatnonzero(~np.isnan(manifest.durations()))
    rules = WindowRules(30.0, 1.0, speech_segments=segments, gate=True)
    t0 = time.perf_counter()
    windowed = split_long(manifest, known, sample_rate=SR, rules=rules, share=PlanShare(workers=workers))
    took = time.perf_counter() - t0
    plan = (sorted(windowed.silent), sorted(windowed.lengths.items()), windowed.durations().tolist())
    return took, plan


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="6 files of 3 s, the tiny VAD (the suite's smoke run)")
    p.add_argument("--files", type=int, default=120)
    p.add_argument("--seconds", type=float, default=10.0, help="each recording's length")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    files, seconds = (6, 3.0) if args.quick else (args.files, args.seconds)
    res = {"command": reproduce_command("bench/vad_gate_plan.py", list(argv if argv is not None else sys.argv[1:]))}
    res.update(files=files, audio_seconds=files * seconds, main_threads=torch.get_num_threads(), runs={})
    plans = {}
    with tempfile.TemporaryDirectory() as tmp:
        vad_dir = write_vad(Path(tmp) / "vad", args.quick)
        manifest = write_corpus(Path(tmp), files, seconds)
        time_plan(manifest, vad_dir, 0)  # the VAD loaded and the files in the page cache, as on a second decode
        for workers in args.workers:
            took, plans[workers] = time_plan(manifest, vad_dir, workers)
            res["runs"][str(workers)] = {"seconds": took, "x_real_time": files * seconds / took}
    res["same_plan"] = all(plan == plans[args.workers[0]] for plan in plans.values())
    lines = [
        f"{files} recordings of {seconds:g} s ({files * seconds:g} s), every one through the VAD gate; "
        f"the decoding process has {res['main_threads']} torch threads, each worker 1",
        "| loader workers | seconds | x real time |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {w} | {r['seconds']:.2f} | {r['x_real_time']:.0f} |" for w, r in res["runs"].items()]
    lines += [f"the same plan every way: {res['same_plan']}", f"Reproduce: `{res['command']}`"]
    emit(res, lines, args.json_out)
    return 0 if res["same_plan"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
