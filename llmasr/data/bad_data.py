"""The accounting of unusable data: `BadItem` (what SpeechDataset returns for a line it cannot use) and
`BadDataTracker`, which the main process feeds every batch: it counts bad items by their reason's class
(llmasr.data.bad_reasons), logs them (rate-limited), keeps the first few as examples, and raises `TooMuchBadData`
once the bad fraction passes `max_bad_fraction`; and across ranks, `ranks_summary` (the line of every rank's counts
summed) and `refuse_summed` (validation's limit, on the sum).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass

from llmasr.data.bad_reasons import reason_category

log = logging.getLogger("llmasr.data")


@dataclass
class BadItem:
    """Marker returned by SpeechDataset for an unusable item (plain fields, so it pickles across workers)."""

    manifest: str
    line: int
    key: str | None
    reason: str
    index: int = -1

    @classmethod
    def from_record(cls, record, index: int = -1) -> BadItem:
        return cls(
            manifest=str(getattr(record, "manifest", "?")),
            line=int(getattr(record, "line", -1) or -1),
            key=getattr(record, "key", None),
            reason=str(getattr(record, "reason", None) or record),
            index=int(index),
        )

    @property
    def record(self):
        """The same information as a manifest BadRecord."""
        from llmasr.data.manifest import BadRecord

        return BadRecord(self.manifest, self.line, self.reason, self.key)

    def where(self) -> str:
        return f"{self.manifest}:{self.line}"

    def to_dict(self) -> dict:
        return asdict(self)


def as_record_dict(item) -> dict:
    """A BadItem, a manifest BadRecord, or a dict -> dict with manifest, line, key, reason."""
    if isinstance(item, dict):
        return dict(item)
    if isinstance(item, BadItem):
        return item.to_dict()
    return BadItem.from_record(item).to_dict()


class TooMuchBadData(RuntimeError):
    """More than max_bad_fraction of the items seen are unusable."""


class BadDataTracker:
    """Counts good and bad items, logs bad ones (rate-limited) and enforces max_bad_fraction.

    The check runs after every update once `min_items` items have been seen, and unconditionally at epoch end
    (`end_epoch`). Counts and examples are per epoch (`new_epoch` resets them); `state_dict` carries them across a
    resume.
    Each rank keeps its own tracker over its own share of the data (`rank` of `world_size`), and says so: its counts
    are not the whole data's, and ranks reach the limit at different times, so no collective can sum them there (the
    trainer sums them where every rank is, at the end of each epoch: `share`, `ranks_summary`). Validation's tracker
    only counts: the trainer sums the ranks' after each pass and checks the sum (`refuse_summed`).

    The lines known bad before loading (`static`) are never batched, so an epoch counts them in step with its
    progress (`advance`): all at once at its start, beside the few good items seen by then, they would read as a
    bad fraction many times their share and stop a run whose data is well within the limit.
    """

    def __init__(
        self,
        max_bad_fraction: float = 0.01,
        *,
        min_items: int = 1000,
        keep_examples: int = 20,
        log_first: int = 20,
        log_interval_s: float = 60.0,
        name: str = "train",
        enforce: bool = True,
        quiet: bool = False,
        rank: int = 0,
        world_size: int = 1,
        end_of: str = "epoch end",
    ):
        """`enforce`: False counts without ever raising (decoding checks `exceeded` itself, after its outputs are
        written; validation checks the ranks' sum, `refuse_summed`). `quiet`: no bad item is logged (the caller
        names each one itself, by what its user gave). `rank`, `world_size`: whose share of the data this tracker
        counts (decoding merges every rank's into one of world size 1). `end_of`: what the final check ends ("epoch
        end", or a validation pass's end)."""
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.end_of = end_of
        self.max_bad_fraction = float(max_bad_fraction)
        self.enforce = bool(enforce)
        self.quiet = bool(quiet)
        self.min_items = int(min_items)
        self.keep_examples = int(keep_examples)
        self.log_first = int(log_first)
        self.log_interval_s = float(log_interval_s)
        self.name = name
        self.good = 0
        self.bad = 0
        self.by_reason: Counter[str] = Counter()
        self.examples: list[dict] = []
        self.static: list[dict] = []  # bad lines found before loading (manifest parse / header probe)
        self._static_due: list[list] = []  # this epoch's [category, visits] of static lines, not yet counted
        self.static_epoch = 0  # the epoch's visits to static lines
        self.static_counted = 0  # how many of them `advance` has counted so far
        self._logged = 0
        self._named: set[str] = set()  # the places a warning has named: a later epoch or pass meets them again
        self._suppressed = 0
        self._last_log = 0.0

    # ------------------------------------------------------------------------------------------------- counting
    @property
    def seen(self) -> int:
        return self.good + self.bad

    @property
    def fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def add_static(self, records, *, quiet: bool = False) -> None:
        """Bad items known up front (never batched: the sampler skips them). They count in every epoch. `quiet`:
        not logged one by one (the caller has reported them)."""
        for rec in records:
            rec = as_record_dict(rec)
            self.static.append(rec)
            self._count_bad(rec)
            if not quiet:
                self._log(rec)

    def new_epoch(self, visits=None) -> None:
        """Reset the counts and examples for a new epoch (the static bad items are counted again, silently, and are
        its first examples). `visits`: how many times this epoch visits each static item, in order (a weighted mix
        visits a line 0, 1 or more times; good items count per visit too); None: once each."""
        counts = [1] * len(self.static) if visits is None else [int(v) for v in visits]
        if len(counts) != len(self.static):
            raise ValueError(f"{len(counts)} visit counts for {len(self.static)} static bad items")
        self.good = 0
        self.bad = 0
        self.by_reason = Counter()
        # the epoch's own: a line found bad every epoch is one example, and a resume at an epoch's start has the same
        self.examples = [r for r, c in zip(self.static, counts) if c][: self.keep_examples]
        self._static_due = [[reason_category(str(r.get("reason", ""))), c] for r, c in zip(self.static, counts) if c]
        self.static_epoch = sum(counts)
        self.static_counted = 0

    def advance(self, progress: float) -> None:
        """Count the epoch's static bad visits up to `progress` (0..1, the share of its batches received)."""
        target = self.static_epoch if progress >= 1 else int(self.static_epoch * max(progress, 0.0))
        self._take(target - self.static_counted, count=True)

    def _take(self, n: int, *, count: bool) -> None:
        while n > 0 and self._static_due:
            due = self._static_due[0]
            k = min(n, due[1])
            if count:
                self.bad += k
                self.by_reason[due[0]] += k
            self.static_counted += k
            due[1] -= k
            n -= k
            if not due[1]:
                self._static_due.pop(0)

    def add_good(self, n: int = 1) -> None:
        self.good += int(n)

    def add_bad(self, item) -> None:
        """`item`: a BadItem, a BadRecord, or a dict with manifest/line/key/reason."""
        rec = as_record_dict(item)
        self._count_bad(rec)
        self._log(rec)

    def _count_bad(self, rec: dict) -> None:
        self.bad += 1
        self.by_reason[reason_category(str(rec.get("reason", "")))] += 1
        if len(self.examples) < self.keep_examples and not _named_in(rec, self.examples):
            self.examples.append(rec)

    def _log(self, rec: dict) -> None:
        if self.quiet:
            return
        where = f"{rec.get('manifest')}:{rec.get('line')}"
        if where in self._named:  # named once: each validation pass (or epoch) meets the same bad lines again
            return
        if self._logged < self.log_first:
            self._named.add(where)
            self._logged += 1
            log.warning("%s: skipping bad item %s (key %s): %s", self.name, where, rec.get("key"), rec.get("reason"))
            if self._logged == self.log_first:
                log.warning("%s: further bad items are summarised at most every %.0f s", self.name, self.log_interval_s)
            self._last_log = time.monotonic()
            return
        self._suppressed += 1
        now = time.monotonic()
        if now - self._last_log >= self.log_interval_s:
            log.warning(
                "%s: %d more bad items (latest %s: %s); %d bad of %s seen (%.3f%%) by reason %s",
                self.name,
                self._suppressed,
                where,
                rec.get("reason"),
                self.bad,
                self._whose(),
                100 * self.fraction,
                dict(self.by_reason),
            )
            self._suppressed = 0
            self._last_log = now

    def update(self, batch) -> None:
        """Account one collated Batch (its real items and its dropped bad items), then check the threshold."""
        for rec in batch.bad:
            self.add_bad(rec)
        if not batch.empty:
            self.add_good(batch.size)
        if self.seen >= self.min_items:
            self.check()

    # ------------------------------------------------------------------------------------------------- checking
    @property
    def exceeded(self) -> bool:
        return bool(self.bad) and self.fraction > self.max_bad_fraction

    def check(self, *, final: bool = False) -> None:
        if self.enforce and self.exceeded:
            raise TooMuchBadData(self.message(final=final))

    def end_epoch(self) -> None:
        self.advance(1.0)
        self.check(final=True)

    def message(self, *, final: bool = False, setting: str = "data.max_bad_fraction") -> str:
        """What TooMuchBadData says; `setting`: the recipe key or flag that sets the limit (decode: its flag)."""
        lines = [
            f"{self.name}: too much bad data: {self.bad} of {self._whose()} items ({100 * self.fraction:.2f}%"
            f"{self._share()}) are unusable, above {setting} = {self.max_bad_fraction} "
            f"({100 * self.max_bad_fraction:.2f}%)" + (f" at {self.end_of}" if final else ""),
            "by reason: " + ", ".join(f"{r}: {c}" for r, c in self.by_reason.most_common()),
            f"first {len(self.examples)} bad items:",
        ]
        lines += [f"  {e.get('manifest')}:{e.get('line')} key={e.get('key')}: {e.get('reason')}"
                  + (f" (met by {e['found_on']})" if e.get("found_on") else "") for e in self.examples]  # fmt: skip
        lines.append(f"Fix or remove these lines (`llmasr data check MANIFEST` lists them all), or raise {setting}.")
        return "\n".join(lines)

    def _whose(self) -> str:
        """The items seen, as "rank R's N" where they are one rank's share of the data."""
        return f"rank {self.rank}'s {self.seen}" if self.world_size > 1 else str(self.seen)

    def _share(self) -> str:
        return f"; each of the {self.world_size} ranks counts its own share of the data" if self.world_size > 1 else ""

    def summary(self) -> str:
        if not self.bad:
            return f"{self.name}: no bad items in {self._whose()} seen"
        reasons = ", ".join(f"{r}: {c}" for r, c in self.by_reason.most_common())
        return f"{self.name}: {self.bad} bad of {self._whose()} items ({100 * self.fraction:.3f}%): {reasons}"

    def share(self, examples: int = 5) -> dict:
        """This rank's counts and first `examples` bad items, for `ranks_summary` (gathered from every rank)."""
        return {"good": self.good, "bad": self.bad, "by_reason": dict(self.by_reason),
                "examples": self.examples[:examples]}  # fmt: skip

    def state_dict(self) -> dict:
        return {
            "good": self.good,
            "bad": self.bad,
            "by_reason": dict(self.by_reason),
            "examples": list(self.examples),
            "static_counted": self.static_counted,
        }

    def load_state_dict(self, state: dict) -> None:
        """The counts of an epoch resumed mid-way, over the epoch `new_epoch` has just set up. The static lines stay
        this tracker's own (this rank's share, screened at start-up), whatever rank saved the state."""
        self.good = int(state["good"])
        self.bad = int(state["bad"])
        self.by_reason = Counter({str(k): int(v) for k, v in state.get("by_reason", {}).items()})
        self.examples = list(state.get("examples", []))[: self.keep_examples]
        # already in bad and by_reason (a state saved before the in-step counting counted them all at the start)
        self._take(int(state.get("static_counted", self.static_epoch)), count=False)


def ranks_summary(shares: list[dict], name: str, when: str, max_bad_fraction: float, examples: int = 5, *,
                  summed: bool = False, full_list: str | None = None) -> str | None:  # fmt: skip
    """The log line of the bad data every rank counted in `when` ("epoch 0"), summed over `shares` (each rank's
    BadDataTracker.share(), in rank order); None when there was none. Training checks data.max_bad_fraction against
    each rank's own share as it loads (the others are elsewhere then: no collective can sum there), so the sum is
    reported where every rank is anyway, and names the ranks' shares beside it. `summed`: the limit holds the sum
    (validation: `refuse_summed`). `examples`: the bad lines named (0: none, a line before named them). `full_list`:
    the command that lists every bad line."""
    bad, seen = sum(s["bad"] for s in shares), sum(s["good"] + s["bad"] for s in shares)
    if not bad:
        return None
    reasons: Counter[str] = Counter()
    for share in shares:
        reasons.update(share["by_reason"])
    head = f"{name}: {when}: {bad} bad of {seen} items"
    limit = f"data.max_bad_fraction = {max_bad_fraction}"
    if len(shares) > 1:
        each = ", ".join(f"rank {r}: {s['bad']} of {s['good'] + s['bad']}" for r, s in enumerate(shares))
        head += f" on the {len(shares)} ranks together ({100 * bad / seen:.2f}%; {each})"
        limit += " holds their sum" if summed else " holds each rank's share to it"
    else:
        head += f" ({100 * bad / seen:.2f}%)"
    first = _distinct(e for s in shares for e in s["examples"])[:examples]
    named = "; ".join(f"{e.get('manifest')}:{e.get('line')} key={e.get('key')}: {e.get('reason')}" for e in first)
    tail = f". All {bad}: `{full_list}` lists them" if full_list and bad > len(first) else ""
    return (f"{head}, {limit}. By reason: " + ", ".join(f"{r}: {c}" for r, c in reasons.most_common())
            + (f". First: {named}" if first else "") + tail)  # fmt: skip


def refuse_summed(shares: list[dict], tracker: BadDataTracker) -> None:
    """TooMuchBadData on every rank alike when the ranks' `shares` (BadDataTracker.share(), in rank order) together
    pass `tracker`'s max_bad_fraction. Validation's check: a rank that refused its own share at the pass's last
    batch left the others in that batch's collectives (and a share's fraction is not the validation set's)."""
    whole = BadDataTracker(tracker.max_bad_fraction, name=tracker.name, end_of=tracker.end_of,
                           keep_examples=tracker.keep_examples)  # fmt: skip
    whole.good, whole.bad = sum(s["good"] for s in shares), sum(s["bad"] for s in shares)
    for share in shares:
        whole.by_reason.update(share["by_reason"])
    whole.examples = _distinct(e for s in shares for e in s["examples"])[: whole.keep_examples]
    if whole.exceeded:
        err = TooMuchBadData(whole.message(final=True))  # the validation set's counts: no rank's share
        err.every_rank = True  # every rank raises it: rank 0 alone reports it (llmasr.errors.rank_specific)
        raise err


def _named_in(rec: dict, examples: list[dict]) -> bool:
    """Whether `examples` already name `rec`'s manifest line: a line a weighted mix visits twice, or two ranks meet,
    is one bad line, named once (its visits are counted apart)."""
    if rec.get("line") is None:  # no line to name it by: each is its own
        return False
    return any(e.get("manifest") == rec.get("manifest") and e.get("line") == rec.get("line") for e in examples)


def _distinct(examples) -> list[dict]:
    out: list[dict] = []
    for e in examples:
        if not _named_in(e, out):
            out.append(e)
    return out
