"""The hotword sampler's start-up pass over the training texts (CorpusStats.from_manifest) on the ranks of one node:
each rank counting every line, against the ranks sharing it (llmasr.data.corpus_stats: each counts its part, one
all_gather over gloo combines them).

    python bench/hotword_stats.py                          # 300k lines, 1 rank then 2 (one per core here)
    python bench/hotword_stats.py --lines 1000000 --ranks 1 2 4 8

The ranks are processes on this machine with a gloo group, as `deepspeed --num_gpus N` starts them; the manifest is
bench/hotword_lists.py's (5 to 30 words a line from a Zipf vocabulary of 50k), the section data.hotwords' defaults
(unit auto, n-grams [1, 2], pool_size 100000). Reported for each number of ranks: each rank's seconds (the slowest
is what the run waits for; one pass each, the manifest's index read before), alone and shared, the bytes a rank
sends in the exchange, and whether every rank at every number of ranks ended with the same stats.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import emit  # noqa: E402


def digest(stats) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(sorted(stats.counts.items()), ensure_ascii=False).encode())
    h.update(json.dumps([stats.pool, stats.longest], ensure_ascii=False).encode())
    return h.hexdigest()


def rank_main(rank: int, ranks: int, manifest: str, port: int, out: str) -> None:
    import torch.distributed as dist

    from llmasr.config_io import from_dict
    from llmasr.data.hotwords import CorpusStats, HotwordsConfig
    from llmasr.data.manifest import Manifest
    from llmasr.data.screen_share import ScreenShare

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=ranks)
    sent = {}

    def gather(obj):
        sent["bytes"] = len(pickle.dumps(obj))
        everyone = [None] * ranks
        dist.all_gather_object(everyone, obj)
        return everyone

    cfg = from_dict(HotwordsConfig, {"enable": True}, "data.hotwords")
    res = {}
    for mode in ("alone", "shared") if ranks > 1 else ("alone",):
        m = Manifest.open(manifest)
        dist.barrier()
        share = ScreenShare(rank, ranks, gather, "bench") if mode == "shared" else None
        t0 = time.perf_counter()
        stats = CorpusStats.from_manifest(m, cfg, 0, share)
        res[mode] = {"seconds": time.perf_counter() - t0, "digest": digest(stats), "units": len(stats.counts),
                     "pool": len(stats.pool), "sent_bytes": sent.get("bytes") if share else None}  # fmt: skip
    Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def run_ranks(ranks: int, path: Path, work: Path) -> list[dict] | None:
    import torch.multiprocessing as mp

    port = 29500 + (os.getpid() + ranks) % 1000
    outs = [str(work / f"r{ranks}_rank{r}.json") for r in range(ranks)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=rank_main, args=(r, ranks, str(path), port, outs[r])) for r in range(ranks)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    if any(proc.exitcode for proc in procs):
        return None
    return [json.loads(Path(o).read_text()) for o in outs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=300_000)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--work", default=None)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)

    from hotword_lists import write_manifest

    work = Path(args.work or tempfile.mkdtemp(prefix="hotword_stats_"))
    work.mkdir(parents=True, exist_ok=True)
    path = write_manifest(work / "train.jsonl", args.lines, 50_000, 0)
    t0 = time.perf_counter()
    per = {}
    for ranks in args.ranks:
        got = run_ranks(ranks, path, work)
        if got is None:
            print(f"a rank of {ranks} failed", file=sys.stderr)
            return 1
        per[ranks] = got
    digests = {r[m]["digest"] for got in per.values() for r in got for m in r}
    same = len(digests) == 1
    first = per[args.ranks[0]][0]["alone"]
    res = {"lines": args.lines, "ranks": args.ranks, "cpu_count": os.cpu_count(), "same_stats": same,
           "units": first["units"], "pool": first["pool"], "wall_s": time.perf_counter() - t0,
           "per_ranks": {str(k): v for k, v in per.items()}}  # fmt: skip
    lines = [
        f"# hotword corpus stats at start-up, {args.lines:,} lines ({first['units']:,} units, pool {first['pool']:,})",
        "",
        "| ranks | every rank counts every line: slowest (s) | the ranks share it: slowest (s) | each rank (s) "
        "| sent |",
        "|---:|---:|---:|---|---:|",
    ]
    for ranks, got in per.items():
        alone = [r["alone"]["seconds"] for r in got]
        shared = [r["shared"]["seconds"] for r in got] if ranks > 1 else None
        each = ", ".join(f"{s:.2f}" for s in (shared or alone))
        sent = f"{max(r['shared']['sent_bytes'] for r in got) / 2**20:.1f} MiB" if shared else "-"
        lines.append(f"| {ranks} | {max(alone):.2f} | {f'{max(shared):.2f}' if shared else '-'} | {each} | {sent} |")
    lines += ["", f"every rank, at every number of ranks, alone or shared, ends with the same stats: {same}"]
    emit(res, lines, args.json_out)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
