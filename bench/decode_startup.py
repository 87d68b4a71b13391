"""`llmasr decode` start-up on a large manifest whose lines carry their own biasing lists, with decode.max_llm_tokens.

    python bench/decode_startup.py                      # 20k and 100k lines
    python bench/decode_startup.py --lines 300000 --json-out startup.json
    python bench/decode_startup.py --quick              # smoke run (numbers mean nothing)
    python bench/decode_startup.py --lines 100000 --ranks 2   # the start-up of each of 2 ranks (gloo, this machine)

Before its first batch, decode reads the manifest for two things: the longest prompt a line renders (the window that
fits the LLM's context: llmasr.models.context.decoding_prompt) and each item's prompt in its LLM positions for the
budget (llmasr.train.decode_rows.DecodeRows). Stages, each timed alone on the tiny test model (its byte-level BPE
tokenizer and ChatML template), µs per manifest line: Manifest.open (the index), decoding_prompt, DecodeRows, and the
whole start-up as decode_manifest runs it, up to the moment it would decode its first batch (every rank pays it).
Lines: a 1-7 s duration each (no audio is read) and a list of 3-9 two-word phrases of their own.

--ranks N: the whole start-up only, on N processes of one gloo group on this machine (llmasr.export.decode_world, as
the launcher starts them), started together once each has built its model: each rank's seconds and the prompts it
tokenized (PromptBuilder.prompt_sizes). The ranks share this machine's cores, and any other job's.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import emit, reproduce_command  # noqa: E402


class _FirstBatch(Exception):
    """Raised where decode_manifest would start decoding: the start-up is over."""


def write_manifest(path: Path, lines: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    words = np.asarray([f"word{i}" for i in range(5000)])  # an array: choice() would convert a list each call
    picks = rng.integers(0, words.size, size=(lines, 9, 2))
    sizes = rng.integers(3, 10, size=lines)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            listed = [f"{words[a]} {words[b]}" for a, b in picks[i, : sizes[i]].tolist()]
            rec = {"key": f"u{i}", "source": "a.wav", "duration": float(1 + i % 7), "hotwords": listed}
            f.write(json.dumps(rec) + "\n")
    return path


def startup_seconds(model, path: Path, cfg, opts, out: Path, world=None) -> float:
    """decode_manifest's seconds until it would decode its first batch (`world`: this rank's, else one process)."""
    import llmasr.export.decode as decode

    def stop(*args, **kwargs):
        raise _FirstBatch

    real, decode.transcribe_loader = decode.transcribe_loader, stop
    t0 = time.perf_counter()
    try:
        decode.decode_manifest(model, path, out, cfg, opts, world=world or decode.SOLO)
    except _FirstBatch:
        return time.perf_counter() - t0
    finally:
        decode.transcribe_loader = real
    raise RuntimeError("decode_manifest returned without decoding a batch")


def measure(model, root: Path, lines: int, seed: int) -> dict:
    from llmasr.data.config import DataConfig
    from llmasr.data.manifest import Manifest
    from llmasr.data.sampler_settings import decode_batching
    from llmasr.export.decode import DecodeOptions
    from llmasr.models.context import decoding_prompt
    from llmasr.models.decoding import DecodeConfig
    from llmasr.train.decode_rows import DecodeRows

    path = write_manifest(root / f"m{lines}.jsonl", lines, seed)
    cfg = DecodeConfig(max_llm_tokens=4000, max_window_seconds=0)
    seconds = {}
    t0 = time.perf_counter()
    manifest = Manifest.open(path, need_target=False)
    seconds["Manifest.open"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoding_prompt(model.prompt, None, manifest)
    seconds["decoding_prompt"] = time.perf_counter() - t0
    durations = np.asarray(manifest.durations(), dtype=np.float64)
    data_cfg = DataConfig(batching=decode_batching(cfg.batch_seconds, len(durations), cfg.max_llm_tokens))
    t0 = time.perf_counter()
    DecodeRows(model, cfg)(manifest, durations, data_cfg)
    seconds["DecodeRows"] = time.perf_counter() - t0
    seconds["decode start-up"] = startup_seconds(model, path, cfg, DecodeOptions(num_workers=0), root / "out")
    return {"lines": lines, "seconds": seconds, "us_per_line": {k: v / lines * 1e6 for k, v in seconds.items()}}


def _tiny_model(llm_dir: Path, seed: int):
    import torch

    import llmasr
    from llmasr.testing.tiny_recipe import tiny_model_section

    torch.manual_seed(seed)
    return llmasr.build_model(tiny_model_section(llm_dir)).eval()


def _rank(rank: int, ranks: int, port: int, llm_dir: Path, path: Path, seed: int, done) -> None:
    """One rank of measure_ranks: its start-up seconds and the prompts it tokenized, put on `done`."""
    import os

    import torch

    from llmasr.export.decode import DecodeOptions
    from llmasr.export.decode_world import DecodeWorld
    from llmasr.models.decoding import DecodeConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world = DecodeWorld(rank, ranks)
    world.start(torch.device("cpu"))
    try:
        model = _tiny_model(llm_dir, seed)
        sizes, asked = model.prompt.prompt_sizes, []

        def prompt_sizes(prompts):  # this rank's share of the pass: what it tokenizes
            asked.append(len(prompts))
            return sizes(prompts)

        model.prompt.prompt_sizes = prompt_sizes
        cfg = DecodeConfig(max_llm_tokens=4000, max_window_seconds=0)
        world.gather(None)  # every rank built its model: they start together
        seconds = startup_seconds(model, path, cfg, DecodeOptions(num_workers=0), path.parent / "out", world)
        done.put((rank, seconds, sum(asked)))
    finally:
        torch.distributed.destroy_process_group()


def measure_ranks(root: Path, llm_dir: Path, lines: int, seed: int, ranks: int) -> dict:
    """The start-up on `ranks` processes of one gloo group on this machine: each rank's seconds and prompts."""
    import multiprocessing

    from llmasr.train.process_group import free_port

    path = write_manifest(root / f"m{lines}.jsonl", lines, seed)
    ctx = multiprocessing.get_context("spawn")
    done, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank, args=(r, ranks, port, llm_dir, path, seed, done)) for r in range(ranks)]
    for proc in procs:
        proc.start()
    got = {}
    try:
        while len(got) < ranks:
            try:
                rank, seconds, prompts = done.get(timeout=5)
            except queue.Empty:
                if not any(proc.is_alive() for proc in procs):
                    raise RuntimeError(
                        f"--ranks {ranks}: rank(s) {sorted(set(range(ranks)) - set(got))} ended early"
                    ) from None
                continue
            got[rank] = (seconds, prompts)
    finally:
        for proc in procs:
            proc.join(timeout=60)
    seconds = [got[r][0] for r in range(ranks)]
    slowest = max(seconds)
    return {
        "lines": lines, "ranks": ranks, "rank_seconds": seconds, "rank_prompts": [got[r][1] for r in range(ranks)],
        "seconds": {"decode start-up": slowest}, "us_per_line": {"decode start-up": slowest / lines * 1e6},
    }  # fmt: skip


def ranks_table(res: dict) -> list[str]:
    return [
        "| lines | ranks | decode start-up s, slowest rank (µs/line) | each rank's s | prompts each rank tokenized |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {r['lines']} | {r['ranks']} | {r['seconds']['decode start-up']:.2f} "
            f"({r['us_per_line']['decode start-up']:.0f}) | {' / '.join(f'{s:.2f}' for s in r['rank_seconds'])} | "
            f"{' / '.join(str(n) for n in r['rank_prompts'])} |"
            for r in res["runs"]
        ),
        f"Reproduce: `{res['command']}`",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, nargs="+", default=[20000, 100000], help="manifest sizes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="200 lines (the suite's smoke run)")
    p.add_argument("--ranks", type=int, default=0, help="the start-up on N ranks of one gloo group (this machine)")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    from llmasr.testing.run_dirs import write_wav
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    if args.ranks < 0:
        p.error(f"--ranks: must be >= 1 (0: one process, every stage), got {args.ranks}")
    sizes = [200] if args.quick else args.lines
    res = {"command": reproduce_command("bench/decode_startup.py", list(argv if argv is not None else sys.argv[1:]))}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        llm_dir = write_tiny_llm_dir(root / "llm")
        write_wav(root / "a.wav", 1.0, seed=0)
        if args.ranks:
            res["runs"] = [measure_ranks(root, llm_dir, n, args.seed, args.ranks) for n in sizes]
        else:
            model = _tiny_model(llm_dir, args.seed)
            res["runs"] = [measure(model, root, n, args.seed) for n in sizes]
    if args.ranks:
        emit(res, ranks_table(res), args.json_out)
        return 0
    stages = list(res["runs"][0]["seconds"])
    lines = [
        "| lines | " + " | ".join(f"{s} s (µs/line)" for s in stages) + " |",
        "|---:|" + "---:|" * len(stages),
        *(
            f"| {r['lines']} | "
            + " | ".join(f"{r['seconds'][s]:.2f} ({r['us_per_line'][s]:.0f})" for s in stages)
            + " |"
            for r in res["runs"]
        ),
        f"Reproduce: `{res['command']}`",
    ]
    emit(res, lines, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
