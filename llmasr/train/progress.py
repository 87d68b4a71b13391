"""What a run reports, on rank 0 only: a tqdm bar, TensorBoard scalars and a plain-text RUN_DIR/train.log (whose
logger and console handler run_log sets up).

The log lines are `key=value` pairs after a fixed prefix, so they can be grepped and parsed back (parse_log_line;
a resume reads the train lines back by logged_updates):

    train update=120 epoch=1 loss=2.3141 llm_loss=2.3141 acc=0.4120 lr/llm=1.00e-05 ... grad_norm=0.88 utt/s=31.2 ...

The rates and shares after grad_norm are over the interval since the previous logged line (efficiency.Interval).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch

from llmasr.atomic_file import write_atomic
from llmasr.train import run_log
from llmasr.train.efficiency import Interval
from llmasr.train.validate import rate_shown

log = logging.getLogger("llmasr.train")

TRAIN_LINE = "train"  # the label of an update's line (`train update=120 ...`), which a resume reads back
TAIL_BYTES = 1 << 20  # how much of train.log's end a resume reads for the updates logged before it

# TensorBoard names of the logged efficiency figures (tags cannot hold "/s" readably).
TB_NAMES = {"utt/s": "utt_per_s", "audio_s/s": "audio_s_per_s", "tok/s": "llm_tokens_per_s"}


# a window's figures train.log and TensorBoard show, where the run has them (router_aux_loss: an MoE's router
# load-balancing loss, llmasr.models.router_aux)
WINDOW_FIGURES = ("loss", "llm_loss", "ctc_loss", "router_aux_loss", "acc")


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def memory_gb(device: torch.device | None = None) -> dict[str, float]:
    """This process's peak resident memory and, when it runs on a CUDA `device`, the peak that torch's allocator
    handed out there (this process's tensors: not the allocator's cache, the CUDA context or NCCL's buffers). A
    CPU run on a host with CUDA has no device figure (it read 0)."""
    out = {"mem/host_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device is not None and torch.device(device).type == "cuda":
        out["mem/device_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def format_pairs(values: dict) -> str:
    parts = []
    for key, value in values.items():
        if isinstance(value, float):
            text = f"{value:.3e}" if (key.startswith("lr") or (value != 0 and abs(value) < 1e-3)) else f"{value:.4f}"
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def done_line(result: dict) -> str:
    """The last line of a run that finished (trainer.Run.fit's result): what this run trained, or that it had
    nothing to."""
    metrics = result.get("metrics") or {}
    last = result["history"][-1] if result["history"] else {}
    summary = {k: v for k, v in rate_shown(metrics).items() if isinstance(v, float) and not math.isnan(v)}
    here, total = len(result["history"]), result.get("updates", last.get("update", 0))
    early = " (stopped early: train.patience)" if result.get("stopped_early") else ""
    # a validation a stop had put off runs even where nothing is left to train; its figures as a valid line has them
    validation = f", validation {format_pairs(summary)}" if summary else ""
    if here == 0:  # a resume at the run's end: no loss to show
        ends = result.get("ends_after", total)
        at = f"had stopped at update {total}" if early else f"had reached update {total} of {ends}"
        if not early and total > ends:
            at = f"is at update {total}, past the {ends} it ends after now"
        return f"done{early}: nothing to train (the run {at}){validation}"
    # a resume's history holds its own updates, the update numbers count the run's from its start
    updates = f"{here} update{'s' * (here != 1)}" + ("" if here == total else f" this run, {total} in all")
    return f"done{early}: {updates}, last loss {last.get('loss', math.nan):.4f}{validation}"


def parse_log_line(line: str) -> dict:
    """key=value pairs of a train.log line (numbers as float/int)."""
    out = {}
    for part in line.split():
        if "=" not in part:
            continue
        key, value = part.split("=", 1)
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def logged_updates(text: str) -> list[int]:
    """The update of each train line in `text` (train.log's), as Progress writes them."""
    lines = [m for m in run_log.logged_messages(text, log.name) if m.startswith(f"{TRAIN_LINE} update=")]
    return [parse_log_line(m)["update"] for m in lines]


def relogged(log_path: Path, update: int) -> str | None:
    """What a resume at `update` says when train.log already holds later train lines (a run killed after its last
    checkpoint, a resume from an earlier one): those updates are logged twice, and the later lines are the run's."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    last = max(logged_updates(tail), default=0)
    if last <= update:
        return None
    held = f"update {last}" if last == update + 1 else f"updates {update + 1}-{last}"
    return (f"train.log above holds {held} from before this resume at update {update} (a run that ended after its "
            f"last checkpoint, or a resume from an earlier one): the run trains from update {update + 1} again below, "
            "and the lines below are its own; TensorBoard drops its events of the earlier ones")  # fmt: skip


class Progress:
    """Rank-0 reporting of one run. On other ranks every method is a no-op.

    On a terminal a tqdm bar; otherwise (a cluster job's log) one plain line every `progress_every_s` seconds,
    so the log holds no carriage-return redraws. Each logged update's train.log line and the TensorBoard
    `throughput/` scalars hold the efficiency of the interval since the previous logged line (efficiency.Interval).
    """

    def __init__(self, run_dir: Path, rank: int, total_updates: int, start_update: int = 0, log_every: int = 1, *,
                 progress_every_s: float = 30.0, peak_total: dict | float | None = None, stream=None,
                 device: torch.device | None = None, speed_squeeze: float = 1.0,
                 validations: list[int] = ()):  # fmt: skip
        self.enabled = rank == 0
        self.device = device  # the rank's: its CUDA memory peak is logged
        self.total = total_updates
        self.log_every = max(1, log_every)
        self.start_update = start_update
        self.t0 = time.monotonic()
        # The updates after which the run validates (check_course.validation_updates); each pass's seconds, once timed,
        # count into the eta as validations, not as training pace (which, before the first, knew none of them).
        self.validations, self.valid_s, self.valid_n = sorted(validations), 0.0, 0
        self.interval = Interval()
        self.peak_total = peak_total  # summed over the ranks: {dtype: FLOP/s} or one for every dtype
        self.every_s = progress_every_s
        self.stream = stream if stream is not None else sys.stderr
        self.next_line = self.t0 + progress_every_s
        self.unaligned_noted = False
        self.speed_squeeze = speed_squeeze  # data.augment's fastest speed factor: it shortens audio, not transcripts
        self.unlogged = None  # the last update's line, until it is logged
        self.bar = None
        self.writer = None
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        # A resumed run logs again the updates a stopped one had logged after its last checkpoint: TensorBoard drops
        # the old events from the first update on, instead of drawing two curves over them.
        purge = {"purge_step": start_update + 1} if start_update > 0 else {}
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), **purge)
        if _is_terminal(self.stream):
            self.bar = tqdm(total=total_updates, initial=start_update, unit="upd", dynamic_ncols=True, file=self.stream)
            if self.stream is sys.stderr:  # where the console handler writes the log's records
                run_log.console_bar(self.bar)

    def update(self, update: int, epoch: int, stats: dict, lrs: dict, extra: dict, wait_s: float = 0.0) -> None:
        """One optimizer update: `stats` are the window's (already all-reduced) losses and counts, `wait_s` the
        seconds the rank that waited longest for its batches waited (run_window's data_wait_s)."""
        if not self.enabled:
            return
        self.interval.add(stats, wait_s)
        self._note_unaligned(update, stats)
        self._note_nonfinite(update, stats, extra)
        eta, untimed = self._eta(update)
        self._show(update, stats, lrs, eta, untimed)
        w = self.writer
        for key in WINDOW_FIGURES:
            if key in stats:
                w.add_scalar(f"train/{key}", stats[key], update)
        for name, lr in lrs.items():
            w.add_scalar(f"lr/{name}", lr, update)
        for key, value in extra.items():
            if value is not None:
                w.add_scalar(f"train/{key}", value, update)
        mem = memory_gb(self.device)
        for key, value in mem.items():
            w.add_scalar(key, value, update)
        self.unlogged = (update, epoch, stats, lrs, extra, (eta, untimed), mem)
        if update % self.log_every == 0 or update == self.total:
            self._log_line(*self.unlogged)

    def _eta(self, update: int) -> tuple[float, int]:
        """(seconds left after `update`: the updates left at the training pace so far, with the validations still to
        come at their mean so far; the validations ahead not in it, as none has been timed yet)."""
        done = update - self.start_update
        if done <= 0:
            return math.nan, 0
        ahead = len(self.validations) - bisect.bisect_left(self.validations, update)  # this update's is still ahead
        pace = max(time.monotonic() - self.t0 - self.valid_s, 0.0) / done
        if not self.valid_n:
            return (self.total - update) * pace, ahead
        return (self.total - update) * pace + ahead * self.valid_s / self.valid_n, 0

    def _log_line(self, update: int, epoch: int, stats: dict, lrs: dict, extra: dict, eta: tuple, mem: dict) -> None:
        """train.log's line for `update`, with the throughput of the updates since the last line."""
        self.unlogged = None
        w = self.writer
        figures = self.interval.figures(self.peak_total)
        self.interval = Interval()
        for key, value in figures.items():
            if not isinstance(value, str):
                w.add_scalar(f"throughput/{TB_NAMES.get(key, key)}", value, update)
        row = {"update": update, "epoch": epoch}
        row.update({k: float(stats[k]) for k in WINDOW_FIGURES if k in stats})
        row.update({f"lr/{k}": v for k, v in lrs.items()})
        row.update({k: v if isinstance(v, int) else float(v) for k, v in extra.items() if v is not None})  # a count
        row.update(figures)
        seconds, untimed = eta
        row["eta_s"] = round(seconds, 1) if seconds == seconds else -1.0
        if untimed:  # validations ahead and none timed yet: eta_s holds the training alone
            row["eta_untimed_valid"] = untimed
        row.update(mem)
        log.info("%s %s", TRAIN_LINE, format_pairs(row))

    def _note_unaligned(self, update: int, stats: dict) -> None:
        """Once a run: the first utterances whose CTC labels outnumber their encoder frames (each logged line counts
        them after that as ctc_unaligned)."""
        n = stats.get("ctc_unaligned", 0)
        if not n or self.unaligned_noted:
            return
        self.unaligned_noted = True
        keys = stats.get("ctc_unaligned_keys") or []
        shown = f" (on this rank: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})" if keys else ""
        sped = (
            f", or speed perturbation: data.augment.speed_perturb's fastest factor {self.speed_squeeze:g} leaves a "
            f"clip 1/{self.speed_squeeze:g} of its frames, so a transcript that aligns at speed 1 may not"
            if self.speed_squeeze > 1.0
            else ""
        )
        log.warning(
            "update %d: %d utterance(s) have more CTC labels than encoder frames%s: CTC has no path for them, so their "
            "CTC loss is 0 and the head learns nothing from them (the LLM still does). A transcript too long for its "
            "audio is the usual cause (`llmasr data check --vad DIR` lists speaking rates far from the median)%s; each "
            "train line counts them as ctc_unaligned",
            update, n, shown, sped,
        )  # fmt: skip

    @staticmethod
    def _note_nonfinite(update: int, stats: dict, extra: dict) -> None:
        """Every update whose loss was NaN or infinite on some rank: the keys of those micro batches, per rank."""
        ranks = stats.get("nonfinite_keys")
        if not ranks:
            return
        shown = "; ".join(f"rank {r}: {', '.join(k for keys in batches for k in keys)}"
                          for r, batches in enumerate(ranks) if batches)  # fmt: skip
        log.warning(
            "update %d: non-finite loss (NaN or inf) in the micro batch(es) of %s. An update whose gradients are not "
            "finite is skipped where the optimizer checks them (skipped_steps=%d; not with "
            "zero_optimization.compute_grad_norm false outside fp16); a batch that does this every epoch points at its "
            "data (`llmasr data check`) or, every update after one, at a diverged model (lower lr, grad_clip)",
            update, shown, int(extra.get("skipped_steps") or 0),
        )  # fmt: skip

    def _show(self, update: int, stats: dict, lrs: dict, eta: float, untimed: int = 0) -> None:
        """The bar on a terminal; elsewhere a plain line when `progress_every_s` has passed (and at the last update)."""
        text = f"loss {stats['loss']:.3f} " + " ".join(f"{k} {v:.1e}" for k, v in lrs.items())
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(text)
            return
        now = time.monotonic()
        if now < self.next_line and update != self.total:
            return
        self.next_line = now + self.every_s
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        left = f"{eta:.0f}s" if eta == eta else "?"
        if untimed:
            left += f" + {untimed} validation(s)"
        print(f"{stamp} progress update {update}/{self.total} ({100 * update / max(self.total, 1):.0f}%) {text} "
              f"eta {left}", file=self.stream, flush=True)  # fmt: skip

    def aside(self, seconds: float) -> None:
        """`seconds` spent on something other than training (validation, saving): out of the efficiency figures."""
        self.interval.aside_s += seconds

    def validated(self, seconds: float) -> None:
        """A validation pass that took `seconds`: aside, and timed for the eta of those still to come."""
        self.aside(seconds)
        self.valid_s, self.valid_n = self.valid_s + seconds, self.valid_n + 1

    def validation(self, update: int, metrics: dict, by_set: dict | None = None) -> None:
        """The pool's metrics (`valid` line, valid/KEY), then each manifest's of `by_set` ({name: metrics}, empty
        for one manifest: llmasr.train.valid_sets) as a `valid[NAME]` line and valid/NAME/KEY scalars."""
        if not self.enabled:
            return
        shown_sets = [(f"valid/{name}", f"valid[{name}]", m) for name, m in (by_set or {}).items()]
        for prefix, label, values in [("valid", "valid", metrics), *shown_sets]:
            shown = rate_shown(values)
            for key, value in shown.items():
                if isinstance(value, (int, float)) and value == value:
                    self.writer.add_scalar(f"{prefix}/{key}", value, update)
            log.info("%s %s", label, format_pairs({"update": update, **shown}))
        self.writer.flush()

    def finish(self) -> None:
        """The run's last update logged, when it was not (a run that ends before its total: max_updates past what
        the epochs hold, a stop)."""
        if self.enabled and self.unlogged is not None:
            self._log_line(*self.unlogged)

    def close(self) -> None:
        if self.bar is not None:
            run_log.console_bar(None, self.bar)
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def write_lr_csv(path: str | Path, curves: dict) -> None:
    """CSV with columns update, <group>...: the lr each update uses (from llmasr.train.schedulers.lr_curve), updates
    numbered from 1 as train.log and TensorBoard number them."""
    names = list(curves)
    total = len(next(iter(curves.values()))) if curves else 0
    lines = [",".join(["update", *names])]
    for u in range(total):
        lines.append(",".join([str(u + 1), *(repr(float(curves[n][u])) for n in names)]))
    write_atomic(path, "\n".join(lines) + "\n")  # resume reads the rows before its start back


def plot_lr(curves: dict, path: str | Path) -> None:
    """A PNG of the per-group learning rates; a group's `_no_decay` twin follows the same curve and is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {n: v for n, v in curves.items() if not (n.endswith("_no_decay") and n[: -len("_no_decay")] in curves)}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in shown.items():
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_xlabel("optimizer update")
    ax.set_ylabel("learning rate")
    ax.set_title("per-group learning rate")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
