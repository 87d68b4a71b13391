"""Start-up steps that one rank can fail alone end in one gather of every rank's verdict, so that a failure stops
every rank with one message naming the rank, its node and the cause.

A file only one node lacks, or holds cut short (an encoder's model.pt, the LLM's shards, that node's copy of the
DeepSpeed JSON), fails the model build or the configuration on that node's ranks only. Before, those ranks exited
and the others ran on into their next collective (deepspeed.initialize's broadcast, ZeRO-3's partitioning) and
waited there: over NCCL until the collective timeout (30 minutes by default), over gloo as long when the ranks sat
on other nodes (a launcher ends only its own node's ranks). Each step runs, then the ranks exchange what became of
it before any of them goes on to a collective.

    ds = run_together("read the DeepSpeed config", lambda: resolve(...), all_gather, same=lambda ds: flat(ds))

This module owns that exchange wherever a start-up step is gathered: the verdict each rank sends (`verdict`), who
failed (`failed_ranks`) and the one message saying it (`failure_message`, "rank R (node N) could not WHAT; every
rank stops with it: ..."). The data's check (llmasr.train.rank_agreement) and decoding's start
(llmasr.export.decode_world) and the ranks' shares of the start-up screen (llmasr.data.screen_share) send the same
verdicts in their own single gather, and add what is theirs: the data's comparison and its messages, decoding's exit
status, the screen's shares.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from llmasr.config_io import ConfigError
from llmasr.errors import describe, exit_status

T = TypeVar("T")
SHOWN = 5  # differing keys listed; the rest are counted


def node_name(environ=os.environ) -> str:
    """This node: its host name, and the launcher's number for it where it gives one (deepspeed's CROSS_RANK,
    torchrun's GROUP_RANK), which tells apart nodes whose hosts share a name."""
    number = environ.get("CROSS_RANK") or environ.get("GROUP_RANK") or ""
    return f"{socket.gethostname()}#{number}" if number else socket.gethostname()


class RankFailure(ConfigError):
    """Another rank failed a start-up step; every rank heard it in the same gather. `exit_code`: the failed ranks'
    worst exit status, which every rank exits with (a launcher reports whichever rank's status it meets first)."""

    ranks_told = True

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def who(rank: int, verdict: dict) -> str:
    """ "rank R (node N)"; "rank R" for a verdict that names no node (a rank's number alone does not say where)."""
    return f"rank {rank} (node {verdict['node']})" if verdict.get("node") else f"rank {rank}"


def verdict(failure: BaseException | None, **found) -> dict:
    """This rank's verdict for the gather: its node, and the failure's message ("failed") or what it `found` (a
    `node` among them names the node otherwise). Every exchange of start-up verdicts (see the module's docstring)
    sends this shape, so that a failure met at any of them reads alike."""
    mine: dict = {"node": node_name()}
    if failure is not None:
        mine["failed"], mine["status"] = describe(failure), exit_status(failure)
    else:
        mine.update(found)
    return mine


def failed_ranks(everyone: list) -> list[tuple[int, dict]]:
    """(rank, verdict) of every rank whose gathered verdict says it failed, in rank order."""
    return [(rank, other) for rank, other in enumerate(everyone) if isinstance(other, dict) and "failed" in other]


def failure_message(what: str, failed: list[tuple[int, dict]]) -> str:
    """The one message for ranks that failed a step (`failed`, from failed_ranks): the first named, the rest
    counted."""
    rank, other = failed[0]
    also = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
    return f"{who(rank, other)}{also} could not {what}; every rank stops with it:\n  {other['failed']}"


def rank_failure(what: str, failed: list[tuple[int, dict]]) -> RankFailure:
    """The RankFailure a rank that did not fail raises: failure_message's, with the worst status of the failed."""
    status = max(v["status"] if v.get("status") in (1, 2) else 2 for _, v in failed)
    return RankFailure(failure_message(what, failed), status)


def stop_together(everyone: list, failure: BaseException | None, what: str) -> None:
    """After the gather of verdicts (`everyone`): this rank's own `failure` raised, else RankFailure when another
    rank failed, else nothing. Every rank raises or none does."""
    if failure is not None:
        raise failure
    failed = failed_ranks(everyone)
    if failed:
        raise rank_failure(what, failed)


def flat(tree: Any, prefix: str = "") -> dict:
    """A nested dict as {dotted key: leaf}: what two ranks' configs are compared by."""
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def run_together(
    what: str, work: Callable[[], T], all_gather, *, same: Callable[[T], dict] | None = None, same_what: str = ""
) -> T:
    """`work()` on this rank, then one gather of every rank's verdict (`all_gather`: the run's all_gather_object;
    None for a run of one rank, which just runs `work`). When a rank failed, every rank raises: that rank its own
    error, the others RankFailure naming it ("rank 1 (node b) could not `what`"). `same` (the result -> a flat dict,
    `same_what` naming it) must give rank 0's dict on every rank, or every rank raises ConfigError naming the keys
    that differ. Returns work()'s result."""
    if all_gather is None:
        return work()
    try:
        result, failure = work(), None
    except Exception as err:  # noqa: BLE001 - every kind: the other ranks must hear of it, or they wait
        result, failure = None, err
    found = {"same": same(result)} if failure is None and same is not None else {}
    everyone = all_gather(verdict(failure, **found))
    stop_together(everyone, failure, what)
    if same is not None:
        check_same(everyone, same_what or what)
    return result


def check_same(everyone: list[dict], what: str) -> None:
    """ConfigError naming the keys of the first rank whose "same" dict is not rank 0's."""
    first = everyone[0]
    for rank, other in enumerate(everyone[1:], start=1):
        a, b = first["same"], other["same"]
        if a == b:
            continue
        keys = sorted(k for k in set(a) | set(b) if a.get(k, "(absent)") != b.get(k, "(absent)"))
        lines = [f"{k}: {b.get(k, '(absent)')!r} on rank {rank}, {a.get(k, '(absent)')!r} on rank 0" for k in keys]
        more = [f"... and {len(lines) - SHOWN} more"] if len(lines) > SHOWN else []
        raise ConfigError(
            f"{who(rank, other)} and {who(0, first)} read different {what}; every node needs the same one:\n  "
            + "\n  ".join(lines[:SHOWN] + more)
        )
