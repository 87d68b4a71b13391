"""PNG plots of the benchmark results (matplotlib, Agg backend): one function per benchmark, each taking the
benchmark's JSON result and an output path, returning the path written (None when there is nothing to plot)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MIB = 2**20
COLORS = {"llmasr": "tab:blue", "reference": "tab:red"}
LABELS = {"llmasr": "llmasr", "reference": "FunASR-style"}


def _series(ax, rows, x_key, y_fn, ylabel, xlabel):
    xs = [r[x_key] for r in rows]
    for v in ("reference", "llmasr"):
        ys = [y_fn(r[v]) for r in rows]
        ax.plot(xs, ys, "o-", color=COLORS[v], label=LABELS[v])
        # linear in the audio of the batch, anchored at the first point
        work = [r["audio_seconds"] / rows[0]["audio_seconds"] for r in rows]
        ax.plot(xs, [ys[0] * w for w in work], ":", color=COLORS[v], alpha=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def plot_train_step(res: dict, path: Path) -> Path | None:
    panels = [(k, t) for k, t in (("sweep_seconds", "audio length"), ("sweep_batch", "batch size")) if res.get(k)]
    if not panels:
        return None
    fig, axes = plt.subplots(2, len(panels), figsize=(5.5 * len(panels), 7.5), squeeze=False)
    for col, (key, title) in enumerate(panels):
        rows = res[key]
        x_key = "seconds" if key == "sweep_seconds" else "batch"
        xlabel = "seconds per utterance" if x_key == "seconds" else "utterances per batch"
        if x_key == "seconds":
            xlabel += f" (batch {rows[0]['batch']})"
        else:
            xlabel += f" ({rows[0]['seconds']:g} s each)"
        _series(axes[0, col], rows, x_key, lambda r: r["step_s"], "step time (s)", xlabel)
        _series(axes[1, col], rows, x_key, lambda r: r["peak_bytes"] / MIB, "peak memory above start (MiB)", xlabel)
        axes[0, col].set_title(f"scaling with {title}")
    axes[0, 0].legend(title="dotted: linear in audio")
    h = res["headline"]
    fig.suptitle(
        f"forward+backward, {h['speedup']:.2f}x faster, {h['memory_ratio']:.2f}x memory at batch {h['batch']} x "
        f"{h['seconds']:g} s\n{res['device']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_zero_memory(res: dict, path: Path) -> Path | None:
    rows = res.get("rows") or []
    if not rows:
        return None
    precisions = list(dict.fromkeys(r["precision"] for r in rows))
    fig, axes = plt.subplots(1, len(precisions), figsize=(6 * len(precisions), 4.2), squeeze=False)
    for ax, prec in zip(axes[0], precisions):
        sub = [r for r in rows if r["precision"] == prec]
        x = range(len(sub))
        width = 0.27
        measured = [r["measured_states_peak"] / MIB for r in sub]
        ours = [r["estimates"]["llmasr"]["device"] / MIB for r in sub]
        ds = [(r["estimates"]["deepspeed_device"] or 0) / MIB for r in sub]
        ax.bar([i - width for i in x], measured, width, label="measured (busiest rank)")
        ax.bar(list(x), ours, width, label="llmasr estimate")
        ax.bar([i + width for i in x], ds, width, label="DeepSpeed estimator (stages 2-3)")
        ax.set_xticks(list(x), [r["preset"] for r in sub])
        ax.set_ylabel("model states per rank (MiB)")
        ax.set_title(f"{prec}, {sub[0]['world_size']} ranks, {sub[0]['num_params'] / 1e6:.0f}M params")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_data_pipeline(res: dict, path: Path) -> Path | None:
    thr = res.get("throughput") or []
    pad = res.get("padding") or []
    if not thr and not pad:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if thr:
        workers = [r["workers"] for r in thr]
        axes[0].plot(workers, [r["utt_per_s"] for r in thr], "o-", label="utterances/s")
        axes[0].plot(workers, [r["utt_per_s_per_worker"] for r in thr], "s--", label="per worker")
        axes[0].set_xlabel("DataLoader workers (0 = in the main process)")
        axes[0].set_ylabel("utterances/s")
        axes[0].set_xticks(workers)
        axes[0].legend()
        axes[0].grid(alpha=0.3)
    if pad:
        axes[1].barh([r["batching"] for r in pad], [r["efficiency"] for r in pad])
        axes[1].set_xlim(0, 1)
        axes[1].set_xlabel("padding efficiency (real / padded audio)")
        axes[1].tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PLOTTERS = {"train_step": plot_train_step, "zero_memory": plot_zero_memory, "data_pipeline": plot_data_pipeline}
