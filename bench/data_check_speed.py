"""`llmasr data check` on a large manifest of short clips, durations given (FunASR's source_len), every line's audio
header probed as the command does by default: the whole command in this process, imports aside.

    python bench/data_check_speed.py                   # 100,000 lines over 8 wav files
    python bench/data_check_speed.py --lines 200000 --no-probe

Reported: the command's seconds and CPU seconds (steadier on a shared machine; the faster of --repeats), and its
batching lines (the same before and after a speed-up).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import emit  # noqa: E402
from manifest_scale import write_corpus  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--wavs", type=int, default=8)
    ap.add_argument("--no-probe", action="store_true", help="pass --no-probe: durations from the lines alone")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    from llmasr.commands.data_check import main as check_main

    took, cpu, report = float("inf"), float("inf"), ""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_corpus(Path(tmp), args.lines, args.wavs, "funasr", seed=0)
        for _ in range(args.repeats):
            buf = io.StringIO()
            t0, c0 = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(buf):
                rc = check_main([str(path), *(["--no-probe"] if args.no_probe else [])])
            took, cpu = min(took, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
            report = buf.getvalue()
    batching = "; ".join(line.strip() for line in report.splitlines() if line.startswith(("batches", "mean batch")))
    res = {"lines": args.lines, "probe": not args.no_probe, "seconds": took, "cpu_seconds": cpu, "rc": rc}
    line = f"{args.lines} lines{' (no probe)' if args.no_probe else ''}: llmasr data check {took:.2f} s "
    emit(res, [line + f"({cpu:.2f} s of CPU), exit {rc}; {batching}"], args.json_out)


if __name__ == "__main__":
    main()
