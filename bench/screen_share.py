"""The start-up screen of a large manifest on the ranks of one node: each rank screening every line, against the
ranks sharing it (llmasr.data.screen_share: each screens its part, one all_gather over gloo exchanges them).

    python bench/screen_share.py                          # 300k FunASR lines, 2 ranks (one per core here)
    python bench/screen_share.py --lines 1000000 --ranks 8 --unknown 0.1

The ranks are processes on this machine with a gloo group, as `deepspeed --num_gpus N` starts them; the manifest's
lines point at a handful of short wav files (bench/manifest_scale.py's corpus), `--unknown` of them without a
duration, so their headers are probed at start-up. Reported: each rank's screen seconds (the slowest rank is what the
run waits for; the faster of two passes each), alone and shared, and whether every rank ended with the screen that
each rank alone found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import emit  # noqa: E402


def rank_main(rank: int, ranks: int, manifest: str, port: int, out: str) -> None:
    import torch.distributed as dist

    from llmasr.data.manifest import Manifest
    from llmasr.data.screen import screen
    from llmasr.data.screen_share import ScreenShare

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=ranks)

    def gather(obj):
        everyone = [None] * ranks
        dist.all_gather_object(everyone, obj)
        return everyone

    res = {}
    for mode in ("alone", "shared") * 2:  # twice each, taking the faster: the first pass warms the page cache
        m = Manifest.open(manifest)
        lens = np.zeros(len(m), dtype=np.int64)
        dist.barrier()
        share = ScreenShare(rank, ranks, gather, "bench") if mode == "shared" else None
        bad, took = screen(m, None, lens, share)
        found = np.asarray([b.index for b in bad], dtype=np.int64).tobytes()
        digest = hashlib.sha256(found + np.asarray(m.durations()).tobytes() + lens.tobytes()).hexdigest()
        took = min(took, res.get(mode, {}).get("seconds", took))
        res[mode] = {"seconds": took, "digest": digest, "bad": len(bad)}
    Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=300_000)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--unknown", type=float, default=0.0, help="fraction of lines without a duration (probed)")
    p.add_argument("--work", default=None)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)

    import torch.multiprocessing as mp
    from manifest_scale import write_corpus

    work = Path(args.work or tempfile.mkdtemp(prefix="screen_share_"))
    work.mkdir(parents=True, exist_ok=True)
    path = write_corpus(work, args.lines, 8, "funasr", 0)
    if args.unknown > 0:  # drop source_len from a share of the lines: their durations are probed from headers
        rng = np.random.default_rng(0)
        lines = path.read_text().splitlines()
        for i in np.flatnonzero(rng.random(len(lines)) < args.unknown):
            rec = json.loads(lines[i])
            rec.pop("source_len")
            lines[i] = json.dumps(rec)
        path.write_text("\n".join(lines) + "\n")
    port = 29500 + os.getpid() % 1000
    outs = [str(work / f"rank{r}.json") for r in range(args.ranks)]
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=rank_main, args=(r, args.ranks, str(path), port, outs[r])) for r in range(args.ranks)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    if any(proc.exitcode for proc in procs):
        print("a rank failed", file=sys.stderr)
        return 1
    per_rank = [json.loads(Path(o).read_text()) for o in outs]
    alone = [r["alone"]["seconds"] for r in per_rank]
    shared = [r["shared"]["seconds"] for r in per_rank]
    same = len({r[m]["digest"] for r in per_rank for m in ("alone", "shared")}) == 1
    res = {"lines": args.lines, "ranks": args.ranks, "unknown": args.unknown, "alone_s": alone, "shared_s": shared,
           "same_screen": same, "cpu_count": os.cpu_count(), "wall_s": time.perf_counter() - t0}  # fmt: skip
    lines = [
        f"# start-up screen, {args.lines:,} lines ({args.unknown:.0%} probed), {args.ranks} ranks of one node",
        "",
        "| | slowest rank (s) | each rank (s) |",
        "|---|---:|---|",
        f"| every rank screens every line | {max(alone):.2f} | {', '.join(f'{s:.2f}' for s in alone)} |",
        f"| the ranks share it | {max(shared):.2f} | {', '.join(f'{s:.2f}' for s in shared)} |",
        "",
        f"speed-up {max(alone) / max(shared):.2f}x; every rank ends with the same screen: {same}",
    ]
    emit(res, lines, args.json_out)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
