"""The harness of scripts/fuzz_inputs.py: llmasr's entry point run in this process, and the table of outcomes."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import traceback
from pathlib import Path

SR = 16000
ROWS: list[dict] = []
RAW = ("Traceback", "raised at ", "(the traceback:")  # what a user sees only when llmasr did not word the error


def cli(argv: list[str]) -> tuple[int, str]:
    """llmasr's own entry point in this process: (exit status, stdout + stderr + log)."""
    from llmasr.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 2
            except BaseException:  # noqa: BLE001 - what would reach the user as a traceback
                err.write(traceback.format_exc())
                code = 1
    finally:
        logging.getLogger().removeHandler(handler)
    return int(code or 0), out.getvalue() + err.getvalue()


def record(kind: str, variant: str, entry: str, status, text: str, *, names: list[str], accounted: bool | None,
           expect: str) -> None:  # fmt: skip
    raw = any(r in text for r in RAW)
    named = all(n in text for n in names) if names else None
    fault = raw or named is False or accounted is False
    ROWS.append(
        {"kind": kind, "variant": variant, "entry": entry, "status": status, "named": named, "accounted": accounted,
         "raw": raw, "expect": expect, "fault": fault, "text": text.strip().splitlines()[-3:] if text else []}
    )  # fmt: skip


def good(key: str, wav: Path, **more) -> dict:
    return {"key": key, "source": str(wav), "target": f"words of {key}", **more}


def write_manifest(path: Path, lines: list[bytes], *, bom: bool = False, crlf: bool = False) -> Path:
    end = b"\r\n" if crlf else b"\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + end.join(lines) + end)
    return path


def summary_counts(text: str) -> tuple[int, int, int] | None:
    m = re.search(r"lines: (\d+), usable: (\d+), bad: (\d+)", text)
    return tuple(map(int, m.groups())) if m else None


def _shown(err: BaseException) -> str:
    """What the user would see: llmasr's own wording, or the raw library error with a traceback."""
    from llmasr.errors import _ours

    if _ours(err) or type(err).__name__ in ("ConfigError", "EmptyManifest", "BadManifest", "FileNotFoundError"):
        return str(err)
    return "Traceback\n" + "".join(traceback.format_exception_only(err))


def table(rows: list[dict]) -> str:
    head = "| input | variant | entry point | exit/status | names file:line | all lines counted | raw error | verdict |"
    out = [head, "|---|---|---|---|---|---|---|---|"]
    yn = {True: "yes", False: "NO", None: "-"}
    for r in rows:
        verdict = "FAULT" if r["fault"] else "ok"
        out.append(f"| {r['kind']} | {r['variant']} | {r['entry']} | {r['status']} | {yn[r['named']]} | "
                   f"{yn[r['accounted']]} | {'YES' if r['raw'] else 'no'} | {verdict} |")  # fmt: skip
    return "\n".join(out)
