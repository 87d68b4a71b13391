"""Decoding on N ranks: `deepspeed --num_gpus N --module llmasr decode ...` or `torchrun --nproc_per_node N -m
llmasr decode ...`.

Every rank plans the same duration-sorted batches of the manifest and decodes every N-th one (the sampler's rank
contract: rank r takes batch r of each group of N, so ranks get batches of about the same cost; the padding batch a
rank may repeat to keep the count even is skipped). Rank 0 then gathers the decoded rows and the bad lines of all
ranks and writes the outputs alone, so they are those of one process: every line once, in manifest order, the bad
lines counted once. Nothing is exchanged while decoding: one collective at the end of each manifest, and before it
the prompt counts of the lines, each rank counting its share (line_share, merge_lines; llmasr.models.line_prompts),
and the audio that long-audio windows or a VAD gate need, when the ranks share reading it (llmasr.data.window_plan).
The ranks join before anything a node may lack is read (the manifests, the model) and gather their verdicts
(`failures`): one node's launcher does not stop another's ranks, which would wait for a rank that has left.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from llmasr import slurm_env
from llmasr.data.bad_data import BadDataTracker
from llmasr.models.devices import usable_device
from llmasr.rank_verdict import failed_ranks, node_name, stop_together, verdict
from llmasr.train.process_group import meeting_port_errors

GATHER_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class DecodeWorld:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, environ=os.environ) -> DecodeWorld:
        """The launcher's RANK / WORLD_SIZE / LOCAL_RANK, or an srun step's (llmasr.slurm_env); one process without
        them."""
        slurm_env.adopt(environ)
        try:
            size, rank = int(environ.get("WORLD_SIZE", "1")), int(environ.get("RANK", "0"))
            local = int(environ.get("LOCAL_RANK", "0"))
        except ValueError as err:
            raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {err}") from err
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"RANK {rank} with WORLD_SIZE {size}: not a rank of that world")
        return cls(rank=rank, size=size, local_rank=local)

    def device(self, requested: str | None) -> torch.device:
        """--device as given, a bare `cuda` (or none, with a GPU) meaning this rank's own GPU."""
        if requested is None:
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        device = usable_device(requested)
        if device.type == "cuda" and device.index is None:
            device = usable_device(torch.device("cuda", self.local_rank if self.size > 1 else 0))
        return device

    def start(self, device: torch.device) -> None:
        """Join the launcher's process group (nccl on GPUs, gloo on CPU ranks)."""
        if self.size == 1 or torch.distributed.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        # The collectives are gathers (a manifest's window plans, its decoded rows): a rank that finishes its share
        # first waits there for the slowest (a rank that fails ends the launch: the launcher stops the others).
        with meeting_port_errors():
            torch.distributed.init_process_group(backend, rank=self.rank, world_size=self.size, timeout=GATHER_TIMEOUT)

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank (one collective: every rank calls it)."""
        if self.size == 1:
            return [obj]
        everyone: list = [None] * self.size
        torch.distributed.all_gather_object(everyone, obj)
        return everyone

    def failures(self, failure: BaseException | None) -> list[tuple[int, dict]]:
        """Every rank's start-up verdict gathered (one collective: every rank calls it, failed or not;
        llmasr.rank_verdict's, with the failure's exit status): (rank, verdict) of the other ranks that failed, so
        that every rank stops with them (rank_verdict.rank_failure says it)."""
        if self.size == 1:
            return []
        everyone = self.gather(verdict(failure))  # with its exit status: every rank returns the worst one
        return [(rank, other) for rank, other in failed_ranks(everyone) if rank != self.rank]

    def line_share(self, lines: np.ndarray) -> np.ndarray:
        """The lines of `lines` (every rank's the same) whose decode prompts this rank counts: every size-th one from
        its rank, so that each rank gets lines of every length (decoding_prompt asks for the longest first)."""
        return lines[self.rank :: self.size]

    def merge_lines(self, lines: np.ndarray, tokens: np.ndarray, fields: np.ndarray, failure=None) -> None:
        """Every rank's counts of its line_share of `lines` into `tokens` and `fields` (indexed by line; this rank's
        share counted already, `failure`: what counting it raised), in one gather (llmasr.models.line_prompts). Every
        rank raises where one failed (rank_verdict.stop_together), or where the ranks asked for other lines
        (ValueError: they read different manifests)."""
        if self.size == 1:
            if failure is not None:
                raise failure
            return
        mine = self.line_share(lines)
        asked = (int(lines.size), zlib.crc32(np.ascontiguousarray(lines, dtype=np.int64).tobytes()))
        everyone = self.gather(verdict(failure, asked=asked, tokens=tokens[mine], fields=fields[mine]))
        stop_together(everyone, failure, "count the decode prompts of its share of the manifest's lines")
        other = [rank for rank, theirs in enumerate(everyone) if theirs["asked"] != everyone[0]["asked"]]
        if other:
            raise ValueError(
                f"decode prompts: rank {other[0]} asked for the counts of {everyone[other[0]]['asked'][0]} lines, "
                f"rank 0 for {everyone[0]['asked'][0]} (or other lines): the ranks read different manifests"
            )
        for rank, theirs in enumerate(everyone):
            share = lines[rank :: self.size]
            tokens[share], fields[share] = theirs["tokens"], theirs["fields"]

    def merge(self, items: dict[int, dict], tracker: BadDataTracker) -> tuple[dict[int, dict], BadDataTracker, list]:
        """Every rank's decoded items (by item index) and bad lines, on every rank: the items joined, the bad lines
        counted once (each rank holds the ones found before loading; the ones loading found are its own), and how
        many items each rank decoded."""
        if self.size == 1:
            return items, tracker, [len(items)]
        static = len(tracker.static)
        # each with the rank that met it: a clip one node's copy lacks is met only by the rank that decodes it, at a
        # path that reads the same on every node
        mine = [{**rec, "found_on": f"rank {self.rank} (node {node_name()})"} for rec in tracker.examples[static:]]
        everyone = self.gather((items, mine))
        merged: dict[int, dict] = {}
        keep = static + sum(len(found) for _, found in everyone) + 1  # every rank's, not this one's times the ranks
        out = BadDataTracker(tracker.max_bad_fraction, name=tracker.name, keep_examples=keep, enforce=False)
        out.add_static(tracker.static, quiet=True)
        seen = set()
        for rank_items, found in everyone:
            merged.update(rank_items)
            for rec in found:
                where = (rec.get("manifest"), rec.get("line"), rec.get("index"))
                if where not in seen:  # a padding batch repeats a rank's own items
                    seen.add(where)
                    out.add_static([rec], quiet=True)
        out.add_good(len(merged))
        return dict(sorted(merged.items())), out, [len(rank_items) for rank_items, _ in everyone]
