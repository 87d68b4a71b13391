"""What CTC-guided decoding costs a step at a real model's shapes: a Qwen-size vocabulary, long windows, a batch.

    python bench/ctc_guidance_cost.py [--rows 16] [--seconds 30] [--vocab 151936] [--frame-ms 60]
    python bench/ctc_guidance_cost.py --quick      # small shapes, for the suite's smoke test
    python bench/ctc_guidance_cost.py --rows 64 --seconds 15 --vocab 20000 --cpu-time   # beams x rows, CPU seconds

Synthetic but shaped like a trained head: per row a random token sequence, each token firing on 1-2 frames with
1-6 blank frames after it and now and then a pause of 10-40 blank frames; the firing frames are peaked as a CTC
head's are. A scripted LLM ranks the right next token first among 8 (the rest of its vocabulary far below), and
greedy search runs through models.ctc_guidance.CTCPrefixGuide until every row has ended. Reported: the guide's
milliseconds per step (the whole batch), candidates scored per row and step, the frames each extension is computed
over, and whether every row decoded its token sequence.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _common import emit, reproduce_command

from llmasr.models.ctc_guidance import CANDIDATES, CTCPrefixGuide
from llmasr.models.ctc_prefix import CTCPrefixScorer


def synthetic_head(rows: int, frames: int, vocab: int, blank: int, seed: int = 0):
    """(log_probs [rows, frames, vocab] float32, lens [rows], token sequences): peaked CTC posteriors."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, frames, vocab, generator=g)
    truth = []
    for r in range(rows):
        t, seq = int(torch.randint(0, 8, (1,), generator=g)), []
        logits[r, :t, blank] += 20.0
        while True:
            token = int(torch.randint(2, vocab, (1,), generator=g))
            fire = int(torch.randint(1, 3, (1,), generator=g))
            gap = int(torch.randint(1, 7, (1,), generator=g))
            if torch.rand(1, generator=g) < 0.05:
                gap += int(torch.randint(10, 41, (1,), generator=g))
            if t + fire + gap > frames:
                break
            logits[r, t : t + fire, token] += 20.0
            logits[r, t : t + fire, blank] += 12.0
            logits[r, t + fire : t + fire + gap, blank] += 20.0
            seq.append(token)
            t += fire + gap
        logits[r, t:, blank] += 20.0
        truth.append(seq)
    return logits.log_softmax(-1), torch.full((rows,), frames), truth


def scripted_scores(prefixes: list[list[int]], truth: list[list[int]], vocab: int, end_id: int, g) -> torch.Tensor:
    """An LLM's log-probs [rows, vocab]: the right next token (or the end) first, 7 random tokens next, the rest far
    below."""
    scores = torch.full((len(prefixes), vocab), -25.0)
    for r, (prefix, want) in enumerate(zip(prefixes, truth)):
        others = torch.randint(2, vocab, (CANDIDATES - 1,), generator=g)
        scores[r, others] = -3.0 - 2.0 * torch.rand(CANDIDATES - 1, generator=g)
        scores[r, want[len(prefix)] if len(prefix) < len(want) else end_id] = -0.1
    return scores


def run(args) -> dict:
    clock = time.process_time if args.cpu_time else time.perf_counter
    blank, end_id = 0, 1
    frames = int(args.seconds * 1000 / args.frame_ms)
    t0 = clock()
    log_probs, lens, truth = synthetic_head(args.rows, frames, args.vocab, blank)
    built = clock() - t0
    t0 = clock()
    guide = CTCPrefixGuide(CTCPrefixScorer(log_probs, lens, blank), args.weight, end_id, num_beams=1)
    setup = clock() - t0
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(args.rows, 0, dtype=torch.long)
    step_ms, cands = [], []
    while True:
        live = [r for r in range(args.rows) if end_id not in ids[r].tolist()]
        if not live:
            break
        prefixes = [[t for t in row if t != end_id] for row in ids.tolist()]
        scores = scripted_scores(prefixes, truth, args.vocab, end_id, g)
        t0 = clock()
        guided = guide(ids, scores)
        step_ms.append(1000 * (clock() - t0))
        cands.append(sum(map(len, guide.kept.values())) / len(live))
        nxt = guided.argmax(1)
        nxt[[r for r in range(args.rows) if r not in live]] = end_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    decoded = [[t for t in row if t != end_id] for row in ids.tolist()]
    return {
        "rows": args.rows, "frames": frames, "vocab": args.vocab, "tokens_per_row": statistics.mean(map(len, truth)),
        "steps": len(step_ms), "guide_ms_per_step": statistics.mean(step_ms), "guide_ms_max": max(step_ms),
        "guide_total_s": sum(step_ms) / 1000, "setup_s": setup, "synthesis_s": built,
        "candidates_per_row_step": statistics.mean(cands),
        "rows_decoded_right": sum(d == t for d, t in zip(decoded, truth)), "cpu_time": bool(args.cpu_time),
    }  # fmt: skip


def markdown(res: dict) -> list[str]:
    return [
        f"CTC-guided greedy search, {res['rows']} rows x {res['frames']} frames, vocabulary {res['vocab']:,}, "
        f"{res['tokens_per_row']:.0f} tokens a row:",
        f"- guide: {res['guide_ms_per_step']:.1f} ms a step (max {res['guide_ms_max']:.1f})"
        f"{' of CPU time, one thread' if res['cpu_time'] else ''}, "
        f"{res['guide_total_s']:.2f} s over {res['steps']} steps; set-up {res['setup_s']:.2f} s",
        f"- candidates scored: {res['candidates_per_row_step']:.1f} per row and step",
        f"- rows decoded right: {res['rows_decoded_right']} of {res['rows']}",
        "",
        f"Reproduce: `{res['command']}`",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--frame-ms", type=float, default=60.0, help="encoder frame shift (Paraformer's LFR: 60 ms)")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--weight", type=float, default=0.5)
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--cpu-time", action="store_true",
        help="time in this process's CPU seconds on one torch thread: comparable on a machine with other load",
    )  # fmt: skip
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    if args.cpu_time:
        torch.set_num_threads(1)
    if args.quick:
        args.rows, args.seconds, args.vocab = 2, 3.0, 500
    with torch.no_grad():
        res = run(args)
    res["command"] = reproduce_command("bench/ctc_guidance_cost.py", argv)
    emit(res, markdown(res), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
