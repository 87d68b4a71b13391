"""`SpeechDataLoader`: the torch DataLoader training and decoding iterate. Beyond torch's, it
- feeds every batch to its `bad_data` tracker in the main process (workers cannot share counters), raising
  TooMuchBadData when data.max_bad_fraction is passed (after enough items, and at the end of every epoch; a
  validation loader's tracker only counts: the trainer checks the ranks' sum at the pass's end); the lines
  screened bad before loading count in step with the epoch's batches, and a padding repeat of a batch (to keep the
  ranks in step) counts nothing again;
- counts the batches the training loop has received, so `state_dict()` resumes exactly even though workers
  prefetch ahead of the loop, and each rank takes up its own bad-data counts on a resume;
- `set_epoch(e)` sets the sampler's epoch and the dataset's (augmentation randomness follows it);
- starts its workers with the stop signals blocked, each marking its start (llmasr.data.worker_start).
"""

from __future__ import annotations

import functools

from torch.utils.data import DataLoader

from llmasr.data.bad_data import BadDataTracker
from llmasr.data.sampler import DynamicBucketSampler
from llmasr.data.screen import static_visits
from llmasr.data.worker_signals import workers_born_blocked
from llmasr.data.worker_start import WorkerStarts, start_workers, worker_init


class SpeechDataLoader(DataLoader):
    """A DataLoader over a DynamicBucketSampler that accounts bad data and resumes exactly (see module doc)."""

    bad_data: BadDataTracker
    _bad_state: dict | None = None  # this rank's saved counts, taken up when the resumed epoch starts
    consumed: int
    screened: list | tuple = ()  # every line the start-up screen found bad (BadItems, by index), not this rank's share
    fork_hazard: bool = False  # this Python can deadlock a worker forked beside a collective's thread (worker_start)

    def set_epoch(self, epoch: int) -> None:
        changed = int(epoch) != self.batch_sampler.epoch
        self.batch_sampler.set_epoch(epoch)
        if changed:  # a state saved before the new epoch's first batch resumes at its start, not at the last count
            self.consumed = self.batch_sampler._yielded

    def __iter__(self):
        sampler: DynamicBucketSampler = self.batch_sampler
        resume = sampler._resume
        resuming = resume is not None and resume[0] == sampler.epoch
        start = resume[1] if resuming else 0
        items = sampler.epoch_indices(sampler.epoch) if sampler.epoch_indices is not None else None
        visits = static_visits([r["index"] for r in self.bad_data.static], items)
        saved, self._bad_state = self._bad_state, None
        # another world size deals the rest afresh: its counts start at 0, also when that remainder is resumed again
        if resuming and (sampler.resharded or sampler.remainder_pass):
            visits = [0] * len(self.bad_data.static)
        self.bad_data.new_epoch(visits)
        if resuming and not sampler.resharded:
            if saved is not None:  # this rank's counts of the epoch so far
                self.bad_data.load_state_dict(saved)
            else:  # a state without this rank's counts: the known-bad lines of the epoch so far, at least
                self.bad_data.advance(start / max(len(sampler), 1))
        self.consumed = start
        checked = False
        duplicates = sampler.duplicate_steps()
        restore = functools.partial(setattr, sampler, "_resume", resume)  # the sampler clears it on iterating
        batches = start_workers(self._start, self.num_workers, self.fork_hazard, restore)
        for batch in batches:
            self.consumed += 1
            batch.duplicate = self.consumed - 1 in duplicates
            self.bad_data.advance(self.consumed / max(len(sampler), 1))
            if not batch.duplicate:  # a padding repeat of a batch another rank counts: its items are no new data
                self.bad_data.update(batch)
            if self.consumed >= len(sampler):
                # Before the epoch's last batch reaches the loop: a loop that stops after it (the training loop
                # does, at the end of its last window) never resumes this generator past the yield.
                self.bad_data.end_epoch()
                checked = True
            yield batch
        if not checked:
            self.bad_data.end_epoch()

    def _start(self, watch: WorkerStarts | None):
        """torch's iterator: the workers start here, each marking `watch` first (llmasr.data.worker_start)."""
        if self.num_workers > 0:
            self.worker_init_fn = functools.partial(worker_init, watch=watch)
        with workers_born_blocked():
            return super().__iter__()

    def state_dict(self) -> dict:
        return {
            "sampler": self.batch_sampler.state_dict(consumed=getattr(self, "consumed", None)),
            "bad_data": self.bad_data.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """`state["bad_data"]`: every rank's tracker state in rank order (the trainer gathers them: each rank counts
        its own share); this rank's is taken up when the epoch resumes, none at another world size."""
        sampler = self.batch_sampler
        sampler.load_state_dict(state["sampler"])
        self.consumed = sampler._yielded  # 0 when resharded: the remainder is the epoch dealt afresh
        ranks = state.get("bad_data")
        if isinstance(ranks, dict):  # saved before the ranks' counts were gathered: rank 0's alone
            self._bad_state = ranks if sampler.rank == 0 else None
        else:
            same = isinstance(ranks, list) and len(ranks) == sampler.world_size
            self._bad_state = ranks[sampler.rank] if same else None
