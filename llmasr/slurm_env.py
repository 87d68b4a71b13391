"""The ranks of an `srun` step: SLURM starts one task per rank (`srun -n 8 python -m llmasr train ...`) and tells
each its place in SLURM_* variables, but sets none of the launcher variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) that torch.distributed and llmasr read. Without them every task made a 1-rank run of its
own: 8 trainings racing for one output folder, 8 decodes writing the same files.

Inside an srun step of more than one task, and only there, `adopt` writes the launcher variables from SLURM's,
under the names the deepspeed launcher uses (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_SIZE, CROSS_RANK), so that every
reader of those (the process group, the CPU cores a rank takes, the start-up screen's shares, a node's name in a
failure) sees an srun task as a launched rank. The address the ranks meet at is not guessed: MASTER_ADDR and
MASTER_PORT come from the batch script (`MASTER_HINT`), or the task refuses.

Which process is which (srun's and sbatch's OUTPUT ENVIRONMENT VARIABLES): srun sets SLURM_STEP_ID,
SLURM_STEP_NUM_TASKS and SLURM_STEP_TASKS_PER_NODE for the tasks of its step, and SLURM_PROCID, SLURM_LOCALID and
SLURM_NODEID (step-relative) for each task. The batch script's own process has SLURM_NTASKS (the job's), and
SLURM_PROCID=0, but neither SLURM_STEP_ID (slurmstepd sets it only for a step's tasks) nor SLURM_STEP_NUM_TASKS
(srun's alone): `python -m llmasr train` run in the script itself stays a plain 1-process run. RANK or WORLD_SIZE
already set (srun running torchrun or deepspeed, one per node) win: that launcher numbers the ranks.

A task bound to one GPU of its node (`--gpus-per-task=1`, or cgroups that show each task its own) sees it as device
0, while DeepSpeed takes a rank's device by LOCAL_RANK (the engine, ZeRO-3's partitioning): such a task is written as
local rank 0 of 1, a node of its own GPU to every reader (its start-up screen is then its own, not shared).
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from dataclasses import dataclass, replace

from llmasr.config_io import ConfigError

JOB_PORT = "$((20000 + SLURM_JOB_ID % 20000))"  # a port of this job's own, as a batch script writes it
MASTER_HINT = ("set them in the batch script before srun, e.g.\n"
               '    export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
               f"    export MASTER_PORT={JOB_PORT}  # a free port, one for each job that shares the node")  # fmt: skip

OWN_RANKS = (
    "run llmasr as the tasks of one srun step, or set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and "
    "MASTER_PORT yourself"
)
_REPEAT = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def tasks_per_node(text: str) -> list[int]:
    """SLURM's compressed per-node counts expanded: "2(x3),1" -> [2, 2, 2, 1]; ValueError for anything else."""
    counts: list[int] = []
    for part in text.split(","):
        match = _REPEAT.match(part.strip())
        if match is None:
            raise ValueError(f"{part!r} is not a count or COUNT(xREPEAT)")
        counts += [int(match[1])] * int(match[2] or 1)
    return counts


@dataclass(frozen=True)
class SlurmStep:
    """This task's place in its srun step."""

    rank: int
    world_size: int
    local_rank: int
    local_size: int
    node: int
    nodes: int
    step: str = ""
    job: str = ""
    bound: bool = False  # the task sees one GPU, its own, as device 0 (see the module's docstring)

    def launcher_env(self) -> dict[str, str]:
        local, size = (0, 1) if self.bound else (self.local_rank, self.local_size)
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(local),
                "LOCAL_SIZE": str(size), "CROSS_RANK": str(self.node)}  # fmt: skip

    def describe(self, environ=os.environ) -> str:
        """The one log line saying where the ranks come from."""
        where = f"{environ.get('MASTER_ADDR', '?')}:{environ.get('MASTER_PORT', '?')}"
        return (f"ranks from SLURM (job {self.job or '?'}, srun step {self.step or '?'}): rank {self.rank} of "
                f"{self.world_size} tasks on {self.nodes} node(s), local rank {self.local_rank} of {self.local_size} "
                f"on node {self.node}; the ranks meet at {where} (MASTER_ADDR:MASTER_PORT)"
                + ("; the task sees one GPU, its own: device 0, local rank 0 of 1 to DeepSpeed" if self.bound
                   else ""))  # fmt: skip


def _int(environ, *names: str) -> tuple[str, int] | None:
    """(name, value) of the first of `names` that is set; ConfigError naming it if it is not an integer."""
    for name in names:
        text = environ.get(name, "").strip()
        if text:
            try:
                return name, int(text)
            except ValueError:
                raise ConfigError(f"{name}={text!r} in the environment is not an integer") from None
    return None


def _step_tasks(environ) -> tuple[str, int] | None:
    """(name, count) of the tasks of this srun step, when it has several and no launcher numbered them; else None."""
    if "RANK" in environ or "WORLD_SIZE" in environ or not environ.get("SLURM_STEP_ID", "").strip():
        return None
    tasks = _int(environ, "SLURM_STEP_NUM_TASKS")  # not SLURM_NTASKS: the batch script has the job's, srun -E too
    return tasks if tasks is not None and tasks[1] > 1 else None


def slurm_step(environ=os.environ) -> SlurmStep | None:
    """This task's place, when it is one of several tasks of an srun step and no launcher numbered it; else None.
    ConfigError when SLURM's variables contradict each other (which ones, and their values)."""
    tasks = _step_tasks(environ)
    if tasks is None:
        return None
    size_name, size = tasks
    found = {}
    for key, names in (("rank", ("SLURM_PROCID",)), ("local_rank", ("SLURM_LOCALID",)), ("node", ("SLURM_NODEID",))):
        value = _int(environ, *names)
        if value is None:
            raise ConfigError(f"srun step of {size} tasks ({size_name}={size}) without {names[0]} in the environment: "
                              f"cannot tell which rank this task is: {OWN_RANKS}")  # fmt: skip
        found[key] = value[1]
    per_name = "SLURM_STEP_TASKS_PER_NODE"
    if not environ.get(per_name):
        raise ConfigError(f"srun step of {size} tasks ({size_name}={size}) without SLURM_STEP_TASKS_PER_NODE in the "
                          f"environment: cannot tell how many ranks share this node: {OWN_RANKS}")  # fmt: skip
    try:
        per_node = tasks_per_node(environ[per_name])
    except ValueError as err:
        raise ConfigError(f"{per_name}={environ[per_name]!r} in the environment: {err}: {OWN_RANKS}") from None
    rank, local_rank, node = found["rank"], found["local_rank"], found["node"]
    said = (f"{size_name}={size}, {per_name}={environ[per_name]!r}, SLURM_PROCID={rank}, SLURM_LOCALID={local_rank}, "
            f"SLURM_NODEID={node}")  # fmt: skip
    if sum(per_node) != size or not 0 <= rank < size or not 0 <= node < len(per_node) \
            or not 0 <= local_rank < per_node[node]:  # fmt: skip
        raise ConfigError(f"SLURM's variables do not describe one rank of one srun step ({said}): {OWN_RANKS}")
    return SlurmStep(rank, size, local_rank, per_node[node], node, len(per_node), environ["SLURM_STEP_ID"].strip(),
                     environ.get("SLURM_JOB_ID", "").strip())  # fmt: skip


def numbered_by_step(environ=os.environ) -> bool:
    """Whether RANK and WORLD_SIZE are this srun task's own place (SLURM_PROCID of SLURM_STEP_NUM_TASKS, several):
    a batch script's `srun bash -c 'RANK=$SLURM_PROCID ...'` numbered its tasks, which an earlier job's export
    would not match."""
    said = [environ.get(name, "").strip() for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS")]
    return (
        bool(environ.get("SLURM_STEP_ID", "").strip())
        and said[:2] == said[2:]
        and said[2] != ""
        and said[3] not in ("", "1")
    )


def one_process_refusal(command: str, hint: str = "", environ=os.environ) -> str | None:
    """Why `command`, which runs as one process, may not start here: it is one of several tasks of an srun step (a
    batch script's plain `srun llmasr export ...` starts one a task of the job), and each would run it whole into
    the same files; None elsewhere. The step's task count alone decides: a task whose other SLURM variables are
    missing or contradict it (which `train` and `decode` refuse) would still be one of several running it whole."""
    try:
        tasks = _step_tasks(environ)
    except ConfigError:  # SLURM_STEP_NUM_TASKS not an integer: no count to go on
        return None
    if tasks is None:
        return None
    return (
        f"started as one of an srun step of {tasks[1]} tasks: {command} runs as one process, and each "
        "task would run it whole, into the same files. Run it once (`srun -n 1`, or without srun)" + hint
    )


def launcher_ranks(environ=os.environ) -> str | None:
    """A launcher's WORLD_SIZE as it is written, where it is not one process's (deepspeed, torchrun); None for one."""
    ranks = environ.get("WORLD_SIZE", "1").strip()
    return None if ranks in ("", "1") else ranks


def other_launcher_rank(environ=os.environ) -> bool:
    """Whether this process is one of a launcher's several ranks other than rank 0: a one-process command that rank 0
    runs for the world size (llmasr check) ends at once on the others, which would print and write the same."""
    ranks = launcher_ranks(environ)
    rank = environ.get("RANK", "0").strip()
    return ranks is not None and ranks.isdigit() and int(ranks) > 1 and rank not in ("", "0")


def launcher_refusal(command: str, each: str, hint: str = "", environ=os.environ) -> str | None:
    """Why `command`, which runs as one process, may not start as one of a launcher's several ranks (deepspeed,
    torchrun: WORLD_SIZE above 1), where `each` rank would run it whole; None elsewhere."""
    ranks = launcher_ranks(environ)
    if ranks is None:
        return None
    return (f"started as one of a launcher's {ranks} ranks (WORLD_SIZE): {command} runs as one process, and each "
            f"{each}. Run it once, without a launcher{hint}")  # fmt: skip


_adopted: SlurmStep | None = None


def adopt(environ: MutableMapping[str, str] = os.environ) -> SlurmStep | None:
    """Write the launcher variables of this srun task into `environ` (see the module's docstring); None, and nothing
    written, outside an srun step of several tasks or once they are set. The rank variables are written before a
    missing MASTER_ADDR / MASTER_PORT is refused, so that only rank 0 reports the refusal (llmasr.errors.report)."""
    global _adopted
    step = slurm_step(environ)
    if step is None:
        return None
    if step.local_size > 1 and visible_gpus() == 1:
        step = replace(step, bound=True)
    environ.update(step.launcher_env())
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name, "").strip()]
    if missing:
        raise ConfigError(f"an srun step of {step.world_size} tasks needs MASTER_ADDR and MASTER_PORT, the address "
                          f"its ranks meet at, and {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                          f"set: {MASTER_HINT}")  # fmt: skip
    _adopted = step
    return step


def adopted() -> SlurmStep | None:
    """The srun step this process took its ranks from (adopt), or None."""
    return _adopted


def visible_gpus() -> int:
    """How many CUDA devices this process sees (0 without CUDA); counting them starts no CUDA context."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
