"""What rank 0's training sampler says of each epoch's plan (llmasr.data.sampler): the items the filters skipped, the
batches data.batching.drop_last left out and the padding-duplicates warning. Each is said once, and again only where
it changes: every epoch's plan had said the same counts again."""

from __future__ import annotations

import logging

from llmasr.data.item_filters import counts_text
from llmasr.errors import IN_CHECK_REPORT

log = logging.getLogger("llmasr.data")


class EpochNotes:
    """The last of each note said, on `rank` (the others say nothing)."""

    def __init__(self, rank: int):
        self.rank = rank
        self.skips: dict[str, int] | None = None
        self.drops = 0
        self.padding: str | None = None

    def planned(self, epoch: int, items: int, filtered: dict[str, int], dropped: int, world_size: int) -> None:
        """A plan made for `epoch` (not one read from the cache): its skipped `items` by reason and dropped batches."""
        if self.rank != 0:
            return
        if filtered and filtered != self.skips:
            log.info("epoch %d: skipped %d of %d items (%s)", epoch, sum(filtered.values()), items,
                     counts_text(filtered))  # fmt: skip
            self.skips = dict(filtered)
        if dropped and dropped != self.drops:
            log.info("epoch %d: data.batching.drop_last left out %d batch(es) over the world size %d, drawn at random",
                     epoch, dropped, world_size)  # fmt: skip
            self.drops = dropped

    def padding_warning(self, epoch: int, warning: str | None) -> None:
        """regroup.padding_warning of `epoch`'s plan, if any; llmasr check's report gives epoch 0's itself."""
        if self.rank == 0 and warning and warning != self.padding:
            log.warning("epoch %d: %s", epoch, warning, extra=IN_CHECK_REPORT if epoch == 0 else None)
            self.padding = warning
