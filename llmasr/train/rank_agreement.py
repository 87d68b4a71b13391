"""Every rank reads the manifests and probes the audio headers itself, and plans its batches from what it found. If
the ranks find different things (a file missing from one node's copy of the data, a network filesystem failing a
probe once), their plans differ: ranks that run different numbers of steps wait for each other in a collective
until the job dies, and ranks with different lines or durations train some utterances twice and others never. So
each rank's findings are compared once before training, and a difference stops every rank, naming it: a line one
rank alone found bad is named as that rank read it (its node's manifest path, line, key and the screen's reason,
with the audio path it looked for), brought by a second gather only when the bad lines differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from llmasr.config_io import ConfigError
from llmasr.data.bad_data import BadItem
from llmasr.data.screen import where
from llmasr.rank_verdict import stop_together, who

SHOWN = 5


def data_digest(sampler, per_epoch: list[int]) -> dict:
    """What a rank's batch plan rests on: its steps per epoch, the lines it screened bad, the durations it read."""
    durations = np.ascontiguousarray(np.asarray(sampler.durations, dtype=np.float64))
    return {
        "steps": [int(n) for n in per_epoch],
        "bad": sorted(int(i) for i in sampler.skipped_indices("bad_line")),
        "durations": hashlib.sha256(durations.tobytes()).hexdigest(),
    }


def _findings(digest: dict) -> dict:
    return {k: v for k, v in digest.items() if k != "node"}


def check_ranks_agree(
    digest: dict, manifest, all_gather, failure: Exception | None = None, screened: Iterable[BadItem] = ()
) -> None:
    """Every rank's `digest` (rank_verdict.verdict: data_digest's findings, or "failed" from a rank that could not
    build its data: its `failure`) gathered once; every rank raises when one failed (rank_verdict.stop_together:
    that rank its own error, the others RankFailure) or when any differs from rank 0's (ConfigError). Before, a
    rank that stopped alone left the others waiting in their next collective. `screened`: this rank's screen's bad
    lines (BadItems); when the ranks' bad lines differ, a second gather brings, from the rank that found each shown
    line bad, its manifest path, line and reason as that rank saw them (the lines of `manifest`, rank 0's, else)."""
    everyone = all_gather(digest)
    stop_together(everyone, failure, "build its training data")
    first, problems = everyone[0], []
    zero = who(0, first)
    shown = _shown(everyone)
    why = _reasons(shown, screened, all_gather) if shown else {}
    for rank, other in enumerate(everyone[1:], start=1):
        if _findings(other) == _findings(first):
            continue
        this = who(rank, other)
        only, missing = _differ(first, other)
        for ids, whose, by in ((only, f"{this} only", rank), (missing, f"{zero} only", 0)):
            if ids:
                said = [why[by].get(i) or _place(manifest, i) for i in ids[:SHOWN]]
                more = [f"... and {len(ids) - SHOWN} more"] if len(ids) > SHOWN else []
                problems.append(f"{len(ids)} line(s) screened bad on {whose}:\n    " + "\n    ".join(said + more))
        if other["durations"] != first["durations"] and not (only or missing):
            problems.append(f"{this} read other audio durations than {zero}")
        if other["steps"] != first["steps"]:
            problems.append(f"{this} plans {other['steps']} steps per epoch, {zero} {first['steps']}")
    if problems:
        raise ConfigError(
            "the ranks do not see the same training data:\n  " + "\n  ".join(problems) + "\nEach rank reads the "
            "manifests and audio itself: every node needs the same files, readable (`llmasr data check` on each "
            "node finds what differs). Training would hang or train some utterances twice and others never."
        )


def _differ(first: dict, other: dict) -> tuple[list[int], list[int]]:
    """(lines only `other` found bad, lines only `first` found bad), ascending."""
    return sorted(set(other["bad"]) - set(first["bad"])), sorted(set(first["bad"]) - set(other["bad"]))


def _place(manifest, index: int) -> str:
    """Rank 0's manifest:line of a line whose rank sent no words for it (None: no manifest, its index)."""
    return "{}:{}".format(*where(manifest, index)) if manifest is not None else f"line index {index}"


def _shown(everyone: list[dict]) -> set[int]:
    """The lines the message shows (found bad by one rank and not by rank 0, or the reverse); empty when every
    rank's bad lines are rank 0's. Every rank computes the same from the gathered digests."""
    shown: set[int] = set()
    for other in everyone[1:]:
        for ids in _differ(everyone[0], other):
            shown.update(ids[:SHOWN])
    return shown


def _reasons(shown: set[int], screened: Iterable[BadItem], all_gather) -> list[dict[int, str]]:
    """Every rank's words for the lines of `shown` it found bad ("manifest:line key=K: reason", as its screen found
    them), in rank order. One gather every rank joins (each knows from the digests that they differ): only the few
    shown lines travel, not every rank's every bad line."""
    return all_gather({b.index: f"{b.where()} key={b.key}: {b.reason}" for b in screened if b.index in shown})
