"""Training batches under waveform augmentation that changes a clip's length (speed perturbation, pauses): cut on
the worst case for every clip (the slowest factor, the longest pauses) against cut on each clip's own draw for the
epoch (llmasr.data.clip_lengths), which llmasr does.

    python bench/augmented_batching.py [--lines 50000] [--max-seconds 60 200] [--epochs 3] [--json-out FILE]

Durations are synthetic (log-normal, median 4.5 s, clipped to 1-20 s, as read speech corpora are) unless --data
names a manifest with durations. Every batch is measured by the audio it really gets: each clip's duration over its
speed factor plus its pauses. `padding` is real audio over padded audio (B x longest), `budget use` the padded audio
over the budget, both over the epoch's batches; `plan ms` the time to plan one epoch.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from _common import emit, reproduce_command

from llmasr.config_io import from_dict
from llmasr.data.augment import AugmentConfig
from llmasr.data.clip_lengths import augmented_costs, draw_clip_lengths
from llmasr.data.frontend import FrontendConfig
from llmasr.data.manifest import Manifest
from llmasr.data.sampler import DynamicBucketSampler

SETTINGS = {  # the Paraformer recipes' speed perturbation; with the pauses the README measures (silence_augment.md)
    "speed": {"speed_perturb": {"enable": True, "factors": [0.9, 1.0, 1.1]}},
    "speed+pauses": {
        "speed_perturb": {"enable": True, "factors": [0.9, 1.0, 1.1]},
        "silence": {"enable": True, "prob": 0.3, "lead": [0.0, 0.8], "trail": [0.0, 0.4]},
    },
}


def measure(sampler: DynamicBucketSampler, cfg: AugmentConfig, durations: np.ndarray, epochs: int) -> dict:
    batches, padding, use, per_batch, plan_ms, over = [], [], [], [], [], 0
    for epoch in range(epochs):
        start = time.perf_counter()
        plan = sampler.batches(epoch)
        plan_ms.append((time.perf_counter() - start) * 1000)
        drawn = draw_clip_lengths(cfg, sampler.seed, epoch, np.arange(durations.size))
        real = durations / drawn.factor + drawn.lead + drawn.trail
        padded = np.array([len(b) * real[b].max() for b in plan])
        audio = np.array([real[b].sum() for b in plan])
        batches.append(len(plan))
        padding.append(audio.sum() / padded.sum())
        use.append(padded.mean() / sampler.budget)
        per_batch.append(audio.mean())
        over += int((padded > sampler.budget + 1e-6).sum())
    return {
        "batches": float(np.mean(batches)),
        "padding": float(np.mean(padding)),
        "budget_use": float(np.mean(use)),
        "audio_per_batch": float(np.mean(per_batch)),
        "over_budget": over,
        "plan_ms": float(np.median(plan_ms)),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=50_000, help="synthetic utterances")
    ap.add_argument("--data", help="a manifest whose durations to batch instead")
    ap.add_argument("--max-seconds", type=float, nargs="+", default=[60.0, 200.0], help="batch budgets")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    if args.data:
        durations = np.asarray(Manifest.open(args.data).durations(), dtype=np.float64)
        durations = durations[~np.isnan(durations)]
    else:
        durations = np.clip(np.random.default_rng(0).lognormal(np.log(4.5), 0.5, args.lines), 1.0, 20.0)
    rows = []
    for name, setting in SETTINGS.items():
        cfg = from_dict(AugmentConfig, setting, "augment")
        costs = augmented_costs(cfg, 0, FrontendConfig())
        for budget in args.max_seconds:
            common = dict(max_seconds=budget, max_duration=30.0, seed=0)
            worst = DynamicBucketSampler(durations, **common, **{**costs, "epoch_costs": None})
            drawn = DynamicBucketSampler(durations, **common, **costs)
            for how, sampler in (("worst case", worst), ("each clip's draw", drawn)):
                rows.append({"augment": name, "max_seconds": budget, "costed": how,
                             **measure(sampler, cfg, durations, args.epochs)})  # fmt: skip
    lines = [f"{durations.size} utterances, {durations.sum() / 3600:.1f} h; means over {args.epochs} epochs", "",
             "| augmentation | max_seconds | batches cut on | batches an epoch | audio a batch (s) | padding | "
             "budget use | over budget | plan ms |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    lines += [
        f"| {r['augment']} | {r['max_seconds']:g} | {r['costed']} | {r['batches']:.0f} | {r['audio_per_batch']:.1f} | "
        f"{r['padding']:.3f} | {r['budget_use']:.3f} | {r['over_budget']} | {r['plan_ms']:.0f} |"
        for r in rows
    ]
    command = reproduce_command("bench/augmented_batching.py", argv)
    lines += ["", f"Reproduce: `{command}`"]
    res = {"benchmark": "augmented_batching", "command": command, "utterances": int(durations.size), "rows": rows}
    emit(res, lines, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
