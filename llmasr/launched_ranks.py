"""Whether the RANK / WORLD_SIZE this process was given come from a launcher running now, or were left in the shell
by an earlier job (`export RANK=1 WORLD_SIZE=2`, a job's environment sourced again).

A one-process verb (check, export, score, data ...) started as rank R > 0 of a launcher stays silent: rank 0 says
what there is to say, once (llmasr.cli). Left over in a shell, the same variables made a plain `llmasr check` exit
at once without a word, and `llmasr decode` wait in its process group for a rank 0 that never comes. The
environment cannot tell the two apart (a stale export may hold every variable a launcher sets, MASTER_ADDR and
TORCHELASTIC_* included), so:

- the process's parent is asked first: deepspeed's launcher (`deepspeed.launcher.launch`, which its runner starts on
  every node) and torchrun (`torch.distributed.run`, accelerate's launch) start each rank themselves. Nothing is
  waited for; nor where RANK / WORLD_SIZE are this srun task's own (slurm_env.numbered_by_step: a batch script
  numbered its tasks), whose rank 0 may start long after the others.
- under any other parent the ranks meet: rank 0 listens at MASTER_PORT and waits, at most MEET_WAIT_S, for every
  other rank to check in (one line over TCP, no torch); each other rank waits as long for rank 0's answer at
  MASTER_ADDR:MASTER_PORT, then for its word that every rank came (no rank goes on to its process group where rank
  0 stops). A rank that meets too few (or has no MASTER_ADDR / MASTER_PORT to meet at) says its variables look left
  over, and how to clear them.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

from llmasr import slurm_env

MEET_WAIT_S = 20.0  # other ranks still importing torch on a loaded node: seconds apart
# a rank's parent process, by the program or module it runs
LAUNCHERS = ("deepspeed.launcher.launch", "torch.distributed.run", "torch.distributed.launch", "torchrun",
             "accelerate", "accelerate.commands.launch")  # fmt: skip
_HELLO, _ANSWER = "llmasr-rank", "llmasr-rank-0"  # a rank's check-in, rank 0's answer


def parent_launcher(pid: int | None = None) -> str | None:
    """The launcher (one of LAUNCHERS) that started this process, read from its parent's command line; None for any
    other parent (a shell, a script) or where /proc cannot tell."""
    try:
        words = Path(f"/proc/{os.getppid() if pid is None else pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    program = _program([w.decode(errors="replace") for w in words if w])
    return program if program in LAUNCHERS else None


def _program(words: list[str]) -> str | None:
    """What a command line runs: its executable's name (`torchrun`), or for a Python interpreter the module after
    -m or the script's name, its own options skipped wherever they stand (`python -X faulthandler -u -m ...`)."""
    if not words or not Path(words[0]).name.startswith("python"):
        return Path(words[0]).name if words else None
    rest = iter(words[1:])
    for word in rest:
        if not word.startswith("-") or word == "-":
            return Path(word).name
        if word == "--check-hash-based-pycs":
            next(rest, "")
        for i, flag in enumerate(word[1:] if not word.startswith("--") else ""):
            if flag in "mcXW":  # options that take a value, attached (-Xdev) or as the next word
                value = word[i + 2 :] or next(rest, "")
                if flag == "c":
                    return None
                if flag == "m":
                    return value
                break
    return None


def _left_over(environ, size: int, why: str) -> str:
    said = f"RANK={environ['RANK']} WORLD_SIZE={size}" if "RANK" in environ else f"WORLD_SIZE={size} (and no RANK)"
    return (f"{said} in the environment, but {why}: they look left over from an earlier job "
            "(a launcher sets them for the ranks it starts). Unset RANK, WORLD_SIZE and LOCAL_RANK (`unset RANK "
            "WORLD_SIZE LOCAL_RANK`), or start the ranks with deepspeed or torchrun")  # fmt: skip


def left_over_ranks(environ=os.environ, wait_s: float | None = None) -> str | None:
    """Why this process's RANK / WORLD_SIZE (more than one rank) are not a running launcher's (see the module's
    docstring), or None where they are, or where it is one process. Rank 0 returns once every other rank has checked
    in; the others once rank 0 said that every rank came. At most `wait_s` (MEET_WAIT_S) is waited, and only under
    a parent that is no known launcher, for ranks that are no srun task's own."""
    try:
        size, rank = int(environ.get("WORLD_SIZE", "1")), int(environ.get("RANK", "0"))
    except ValueError:
        return None  # the verb says what is wrong with them
    if size <= 1 or parent_launcher() is not None or slurm_env.numbered_by_step(environ):
        return None
    addr, port = environ.get("MASTER_ADDR", "").strip(), environ.get("MASTER_PORT", "").strip()
    if not addr or not port.isdigit():
        return _left_over(environ, size, "no MASTER_ADDR / MASTER_PORT to meet the other ranks at, and no launcher "
                                      "started this process")  # fmt: skip
    wait = MEET_WAIT_S if wait_s is None else wait_s
    try:
        missing = _host(int(port), size, wait) if rank == 0 else _check_in(addr, int(port), rank, wait)
    except OSError as err:  # rank 0's port: another job's ranks there are as likely as left-over variables
        reason = os.strerror(err.errno) if err.errno else str(err)
        taken = ("is in use on this node", "another program holds it (another job's ranks?): give each job its own "
                 "MASTER_PORT") if err.errno == errno.EADDRINUSE else ("cannot be listened at on this node",
                                                                       "give the job a port it may use")  # fmt: skip
        return (f"MASTER_PORT={port} {taken[0]} ({reason}): {taken[1]}. Where no launcher started this process: "
                + _left_over(environ, size, "rank 0 could not meet the other ranks there"))  # fmt: skip
    if missing is None:
        return None
    return _left_over(environ, size, f"{missing}, and no launcher started this process")


def _host(port: int, size: int, wait: float) -> str | None:
    """Rank 0: every other rank's check-in taken (each answered at once, and told at the end whether every rank came:
    none goes on to its process group while rank 0 stops); what is missing after `wait` seconds."""
    deadline, seen, waiting = time.monotonic() + wait, set(), []
    with socket.create_server(("", port)) as server:
        while len(seen) < size - 1 and (left := deadline - time.monotonic()) > 0:
            server.settimeout(left)
            try:
                conn, _ = server.accept()
            except TimeoutError:
                break
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                said = conn.recv(64).decode(errors="replace").split()
                if len(said) == 2 and said[0] == _HELLO and said[1].isdigit():
                    conn.sendall(f"{_ANSWER}\n".encode())
                    seen.add(int(said[1]))
                    waiting.append(conn)
                    continue
            except OSError:
                pass  # another program's connection, or a rank gone: the others may still come
            conn.close()
        missing = size - 1 - len(seen)
        for conn in waiting:
            with conn:
                try:
                    conn.sendall(f"{_ANSWER} missing {missing}\n".encode())
                except OSError:
                    pass  # a rank that has gone: nothing to tell it
    if not missing:
        return None
    return f"{missing} of the other ranks did not check in at port {port} (MASTER_PORT) within {wait:g} s"


def _check_in(addr: str, port: int, rank: int, wait: float) -> str | None:
    """Rank > 0: rank 0's answer at addr:port, asked until `wait` seconds have passed, then its word on whether every
    rank came (after at most its own wait); what is missing after."""
    deadline, where = time.monotonic() + wait, f"{addr}:{port} (MASTER_ADDR:MASTER_PORT)"
    while (left := deadline - time.monotonic()) > 0:
        answered = False
        try:
            with socket.create_connection((addr, port), timeout=min(left, 2.0)) as conn:
                conn.sendall(f"{_HELLO} {rank}\n".encode())
                said = conn.makefile("r", encoding="utf-8", errors="replace")
                if said.readline().strip() != _ANSWER:
                    return f"something other than llmasr's rank 0 answers at {where}"
                answered = True
                conn.settimeout(wait + 5.0)  # rank 0 waits at most as long for the rest
                verdict = said.readline().split()
        except OSError:  # nobody listening yet (rank 0 still starting), or gone
            if not answered:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            verdict = []
        if verdict == [_ANSWER, "missing", "0"]:
            return None
        if len(verdict) != 3:
            return f"rank 0 at {where} answered, then went before saying whether every rank had checked in"
        return f"{verdict[2]} of the other ranks did not check in with rank 0 at {where}"
    return f"rank 0 did not answer at {where} within {wait:g} s"
