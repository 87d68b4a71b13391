"""Every rank reads the manifests and probes the audio headers itself, and plans its batches from what it found. If
the ranks find different things (a file missing from one node's copy of the data, a network filesystem failing a
probe once), their plans differ: ranks that run different numbers of steps wait for each other in a collective
until the job dies, and ranks with different lines or durations train some utterances twice and others never. So
each rank's findings are compared once before training, and a difference stops every rank, naming it.
"""

from __future__ import annotations

import hashlib

import numpy as np

from llmasr.config_io import ConfigError
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


def check_ranks_agree(digest: dict, manifest, all_gather, failure: Exception | None = None) -> None:
    """Every rank's `digest` (rank_verdict.verdict: data_digest's findings, or "failed" from a rank that could not
    build its data: its `failure`) gathered once; every rank raises when one failed (rank_verdict.stop_together:
    that rank its own error, the others RankFailure) or when any differs from rank 0's (ConfigError). Before, a
    rank that stopped alone left the others waiting in their next collective."""
    everyone = all_gather(digest)
    stop_together(everyone, failure, "build its training data")
    first, problems = everyone[0], []
    zero = who(0, first)
    for rank, other in enumerate(everyone[1:], start=1):
        if _findings(other) == _findings(first):
            continue
        this = who(rank, other)
        only = sorted(set(other["bad"]) - set(first["bad"]))
        missing = sorted(set(first["bad"]) - set(other["bad"]))
        for ids, whose in ((only, f"{this} only"), (missing, f"{zero} only")):
            if ids:
                lines = ", ".join(f"{path}:{line}" for path, line in (where(manifest, i) for i in ids[:SHOWN]))
                problems.append(
                    f"{len(ids)} line(s) screened bad on {whose}: {lines}{', ...' if len(ids) > SHOWN else ''}"
                )
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
