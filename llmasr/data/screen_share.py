"""The start-up screen of a manifest shared by the ranks of a node.

Screening parses every line and stats its audio (and probes the header where the duration is unknown); on a large
manifest that is seconds to minutes a rank, and every rank of a node used to do all of it, on the same files. With a
share, local rank r of L screens the lines i with i % L == r, and the ranks of a node exchange what they found, so
each of them ends with the whole screen (bad lines, probed durations, target lengths) at 1/L of the work. Each node
still screens every line itself: the ranks' findings are compared across nodes before training
(llmasr.train.rank_agreement), which is what finds a file missing from one node's copy of the data.
The hotword sampler's pass over the training texts (llmasr.data.corpus_stats) is split the same way, in an exchange
of its own before the screen's.

Every rank of a multi-rank run takes part in every exchange, a rank alone on its node too (nodes may run different
numbers of ranks): one that skipped it would meet its peers' gather with its next collective. The exchange is one
all_gather of llmasr.rank_verdict's verdicts; a rank that failed before it (or in it) sends why instead of its
share, and every rank stops: the others with RankFailure, that rank with its own error, both marked `ranks_told` so
that no rank waits in a later gather for one that has left.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llmasr.rank_verdict import node_name, rank_failure, verdict


@dataclass(frozen=True)
class ScreenShare:
    """This rank's part (`part` of `parts`, its node's local rank and size) and the run's all_gather_object; `data`
    names what the ranks build in a peer's failure."""

    part: int
    parts: int
    gather: Callable[[object], list]
    node: str = ""
    data: str = "training data"

    @classmethod
    def of_node(cls, gather, environ=os.environ) -> ScreenShare:
        """From the launcher's LOCAL_RANK and LOCAL_WORLD_SIZE (torchrun) or LOCAL_SIZE (deepspeed), for a run of
        more than one rank. A rank alone on its node (or one the launcher does not number) is a share of one part:
        it screens everything, yet still takes part in each exchange, since every rank of the run gathers together
        (a hostfile may give nodes different numbers of ranks)."""
        try:
            part = int(environ.get("LOCAL_RANK", ""))
            parts = int(environ.get("LOCAL_WORLD_SIZE") or environ.get("LOCAL_SIZE") or "")
        except ValueError:
            part, parts = 0, 1
        if not 0 <= part < parts:
            part, parts = 0, 1
        return cls(part, parts, gather, node_name(environ))

    def indices(self, n: int, part: int | None = None) -> np.ndarray:
        """The lines of `n` that `part` (default: this rank's) takes: every `parts`-th from it (lines of unknown
        duration spread evenly)."""
        return np.arange(self.part if part is None else part, n, self.parts, dtype=np.int64)

    def exchange(self, work: Callable[[], dict]) -> list[dict] | None:
        """Run `work` (this rank's share -> a dict) and gather; returns the shares of this node's ranks by part, or
        None when the ranks that say they share this node are not exactly one of each part (two hosts of one name,
        a launcher that numbers otherwise): the caller then screens everything itself. A share of one part keeps
        its result and sends none (no rank needs it). Raises as the module says."""
        try:
            found, failure = work(), None
            mine = verdict(None, screen=found if self.parts > 1 else None, node=self.node, part=self.part,
                           parts=self.parts)  # fmt: skip
        except Exception as err:
            found, failure = None, err
            mine = verdict(err)  # named by this node (decoding's share names none)
        everyone = self.gather(mine)
        if failure is not None:
            failure.ranks_told = True
            raise failure
        # a peer that met this gather from another (a failure before it, in the data's check) sent no share either
        failed = [(rank, _failed(other)) for rank, other in enumerate(everyone)
                  if not isinstance(other, dict) or "screen" not in other]  # fmt: skip
        if failed:
            raise rank_failure(f"build its {self.data}", failed)
        if self.parts == 1:
            return [found]
        node = [o for o in everyone if (o["node"], o["parts"]) == (self.node, self.parts)]
        if sorted(o["part"] for o in node) != list(range(self.parts)):
            return None
        return [o["screen"] for o in sorted(node, key=lambda o: o["part"])]


def _failed(other) -> dict:
    """A peer's gathered object that holds no share, as a failed verdict."""
    if isinstance(other, dict) and "failed" in other:
        return other
    return {"node": other.get("node") if isinstance(other, dict) else None, "failed": other}


def shared_fill(manifest, share: ScreenShare) -> list:
    """manifest.fill_durations() (a Manifest: the audio headers of its lines without a duration probed) with the
    probes split between the ranks of `share`, every rank ending with every duration and every BadRecord (in line
    order). Ranks that do not make up the share each probe everything."""
    mine = share.indices(len(manifest))

    def probe() -> dict:
        bad = manifest.fill_durations(mine)
        return {"bad": bad, "durations": np.asarray(manifest.durations(), dtype=np.float32)[mine]}

    shares = share.exchange(probe)
    if shares is None:
        return manifest.fill_durations()
    bad = []
    for part, found in enumerate(shares):
        if part != share.part:
            manifest.set_durations(share.indices(len(manifest), part), found["durations"])
        bad.extend(found["bad"])
    return sorted(bad, key=lambda b: b.line)
