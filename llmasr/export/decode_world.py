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
(`failures`): one node's launcher does not stop another's ranks, which would wait for a rank that has left. What each
rank loaded (`same_everywhere`: the model's weights, the settings, a --hotwords list) and each manifest it opens
(`same_manifest`) are compared before decoding: each rank decodes its share with its own copies, so a node's other
copy would be scored as the same one.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from llmasr import slurm_env
from llmasr.data.bad_data import BadDataTracker
from llmasr.data.manifest import BadManifest, Manifest
from llmasr.models.devices import usable_device
from llmasr.rank_verdict import check_same, failed_ranks, node_name, rank_failure, stop_together, verdict, who
from llmasr.train.process_group import meeting_port_errors

GATHER_TIMEOUT = timedelta(hours=2)


def decode_identity(model, cfg, opts) -> dict:
    """What every rank of one decode must have alike, as DecodeWorld.same_everywhere compares it: the weights it loaded
    (a node's other export at the same path, a relative --model, a `latest` one node sees older: each rank would
    decode its share with its own model), the VAD it cuts long audio with (loaded here: ConfigError naming decode.vad
    where it does not load), the decode settings and the options (a --hotwords list by its digest)."""
    from llmasr.models.fingerprint import tensors_sample

    # paths as given (a --vad, --hotwords file) are the same words on every rank: what was read there is compared
    settings = {f"decode.{k}": repr(v) for k, v in dataclasses.asdict(cfg).items() if k != "vad"}
    options = {k: repr(v) for k, v in dataclasses.asdict(opts).items() if k not in ("hotwords", "hotwords_file")}
    hotwords = zlib.crc32(repr(opts.hotwords).encode())  # a long list as one number, not each phrase compared
    return {"weights": tensors_sample(model), **_vad_identity(cfg, model.frontend.sample_rate), **settings, **options,
            "hotwords (the list read)": f"{hotwords:08x}"}  # fmt: skip


def _vad_identity(cfg, sample_rate: int) -> dict:
    """decode.vad as this rank loaded it: its network's tensors (as the model's are sampled), and its end-point
    options and frontend, CMVN statistics included (a node's other VAD at the same path cuts long audio elsewhere)."""
    if cfg.vad is None:
        return {"vad": "none"}
    from llmasr.models.fingerprint import tensors_sample
    from llmasr.models.fsmn_vad import load_vad

    vad = load_vad(cfg.vad, sample_rate)
    frontend = vad.extractor.frontend
    cmvn = Path(frontend.cmvn_file).read_bytes() if frontend.cmvn_file is not None else b""
    setup = repr((vad.opts, dataclasses.replace(frontend, cmvn_file=None))).encode() + cmvn
    return {"vad (the model read)": tensors_sample(vad.net), "vad (its settings)": f"{zlib.crc32(setup):08x}"}


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

    def same_everywhere(self, found: dict) -> None:
        """`found` (decode_identity: the model this rank loaded, its settings) gathered from every rank in one
        collective; ConfigError on every rank, naming what differs, where a rank's is not rank 0's."""
        if self.size > 1:
            check_same(self.gather(verdict(None, same=found)), "models or decode settings (a relative --model or "
                       "--checkpoint is read from each rank's working directory; --checkpoint without --tag takes the "
                       "`latest` each rank reads, which a training still running moves)")  # fmt: skip

    def same_manifest(self, path) -> Manifest | str:
        """`path` opened on this rank and checked against every rank's copy, in one gather (on one rank: `path` as
        given). Each rank decodes its share of its own copy's lines and rank 0 joins the rows with its own keys and
        references, so copies that differ (a node's stale copy, a relative --data read from each rank's working
        directory) would score one file's transcripts against another's: BadManifest on every rank, naming each
        rank's file. A rank that could not open it stops every rank (rank_verdict.stop_together)."""
        if self.size == 1:
            return path
        manifest = failure = None
        try:
            manifest = Manifest.open(path, need_target=False)
            found = {"file": str(Path(path).absolute()), "lines": len(manifest), "sha1": manifest.sha1}
        except Exception as err:  # noqa: BLE001 - every kind: the other ranks must hear of it, or they wait
            failure, found = err, {}
        everyone = self.gather(verdict(failure, **found))
        failed = failed_ranks(everyone)
        if 0 < len(failed) < self.size:  # one node's alone: the run stops, none goes on to the next manifest alone
            raise rank_failure(f"open the manifest {path}", failed)
        stop_together(everyone, failure, f"open the manifest {path}")  # every rank alike: each its own error
        first = everyone[0]
        other = next((rank for rank, theirs in enumerate(everyone) if theirs["sha1"] != first["sha1"]), None)
        if other is not None:
            theirs = everyone[other]
            copies = ", ".join(f"{who(r, v)} {v['file']} ({v['lines']} lines, sha1 {v['sha1'][:12]})"
                               for r, v in ((other, theirs), (0, first)))  # fmt: skip
            raise BadManifest(
                f"manifest {path}: the ranks read different files: {copies}. Each rank decodes its share of its own "
                "copy's lines and rank 0 scores them with its own keys and references: every node needs the same "
                "file at that path (a relative --data is read from each rank's working directory)"
            )
        return manifest

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
