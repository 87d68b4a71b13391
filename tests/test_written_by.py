"""Which llmasr wrote a file: the record a checkpoint's meta, an export's description and a decode's wer.json
carry, and how a refusal of a file written by another llmasr names that writer."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from llmasr import run_dir as ck
from llmasr.export.decode_results import llm_summary
from llmasr.models.decoding import DecodeConfig
from llmasr.models.exported import MODEL_FILE, ExportedModelError, read_description
from llmasr.written_by import BEFORE, STACK, _commit, software, writer, written_by

ROOT = Path(__file__).resolve().parents[1]


def test_this_llmasr_names_its_version_and_the_commit_checked_out():
    record = written_by()
    assert set(record) == {"llmasr", "commit"}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # the suite runs from a clone: the record names its commit
        edited = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "llmasr"],
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
        assert record["commit"] == head.stdout.strip() + ("-dirty" if edited else "")
        assert writer(record).endswith(f"(commit {record['commit']})")


def test_a_checkout_whose_llmasr_files_differ_from_its_commit_is_marked_dirty(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "llmasr").mkdir()
    (tmp_path / "llmasr" / "scoring.py").write_text("WEIGHT = 1\n")
    (tmp_path / "notes.txt").write_text("a\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    assert _commit(tmp_path) == head
    (tmp_path / "notes.txt").write_text("b\n")  # outside the package: computes nothing
    (tmp_path / "run.log").write_text("x\n")
    assert _commit(tmp_path) == head
    (tmp_path / "llmasr" / "scoring.py").write_text("WEIGHT = 2\n")  # an edit, staged or not
    assert _commit(tmp_path) == f"{head}-dirty"
    git("checkout", "--", "llmasr")
    (tmp_path / "llmasr" / "extra.py").write_text("")  # a new module is code the commit does not hold
    assert _commit(tmp_path) == f"{head}-dirty"
    assert writer({"llmasr": "0.1.0", "commit": f"{head}-dirty"}) == f"llmasr 0.1.0 (commit {head}-dirty)"


def _checkout(root: Path) -> str:
    """A git checkout at `root` holding llmasr/scoring.py, committed; its short HEAD."""

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (root / "llmasr").mkdir()
    (root / "llmasr" / "scoring.py").write_text("WEIGHT = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return git("rev-parse", "--short=12", "HEAD").strip()


def test_naming_the_commit_leaves_the_checkouts_index_alone(tmp_path):
    """Every llmasr process (each DeepSpeed rank) asks git whether llmasr/ is edited: a plain `git status` refreshes
    and rewrites .git/index under its lock, so a `git commit` the user runs meanwhile could fail on index.lock; it
    is asked without git's optional locks, writing nothing."""
    head = _checkout(tmp_path)
    code = tmp_path / "llmasr" / "scoring.py"
    os.utime(code, ns=(code.stat().st_atime_ns, code.stat().st_mtime_ns - 10**10))  # touched: same content
    index = (tmp_path / ".git" / "index").read_bytes()
    assert _commit(tmp_path) == head
    assert (tmp_path / ".git" / "index").read_bytes() == index


def test_a_checkout_git_cannot_tell_edited_or_not_is_not_named_clean(tmp_path):
    """Where git names HEAD but cannot read the index (corrupt; or status fails), whether llmasr/ is edited is not
    known: the commit is named `-broken`, as git describe --broken names it, not as clean code."""
    head = _checkout(tmp_path)
    (tmp_path / ".git" / "index").write_bytes(b"not an index")
    assert _commit(tmp_path) == f"{head}-broken"


def test_llmasr_version_names_this_llmasr_and_the_installed_stack(capsys):
    from importlib.metadata import version

    from llmasr.cli import main

    assert main(["--version"]) == 0
    said = capsys.readouterr().out.strip()
    assert said == software() and said.startswith(writer(written_by()))
    assert f"torch {version('torch')}" in said and f"deepspeed {version('deepspeed')}" in said
    assert [name for name in STACK if f"{name} " in said] == list(STACK)
    assert main(["-V"]) == 0 and capsys.readouterr().out.strip() == said
    # the library every clip is read with: its libsndfile decides what reads (MP3 from 1.1) and how
    import soundfile

    assert f"soundfile {version('soundfile')} (libsndfile {soundfile.__libsndfile_version__})" in said


def test_a_folder_that_is_no_checkout_has_no_commit_and_a_file_without_the_record_is_from_before_it(tmp_path):
    assert _commit(tmp_path) is None
    assert writer({"llmasr": "0.1.0", "commit": None}) == "llmasr 0.1.0"
    assert writer({"llmasr": "0.2.0", "commit": "1a2b3c4d5e6f"}) == "llmasr 0.2.0 (commit 1a2b3c4d5e6f)"
    for absent in (None, {}, "0.1.0", {"llmasr": None, "commit": None}):
        assert writer(absent) == BEFORE


def test_a_checkpoint_meta_keeps_its_writer_and_a_newer_one_s_entries_are_refused_naming_it(tmp_path):
    meta = ck.CheckpointMeta(
        update=1, epoch=0, world_size=1, zero_stage=0, base_fingerprint={}, trainable=["adaptor.w"],
        written_by=written_by(),
    )  # fmt: skip
    ck.write_meta(tmp_path, meta)
    assert ck.read_meta(tmp_path).written_by == written_by()
    newer = {**meta.to_json(), "written_by": {"llmasr": "9.0.0", "commit": "abcdef123456"}, "shards": 3}
    (tmp_path / ck.META).write_text(json.dumps(newer))
    with pytest.raises(ck.CheckpointError, match=r"unknown entries \['shards'\]; written by llmasr 9.0.0 \(commit "
                       r"abcdef123456\), newer than this llmasr\? Upgrade it"):  # fmt: skip
        ck.read_meta(tmp_path)
    (tmp_path / ck.META).write_text(json.dumps({k: v for k, v in newer.items() if k != "written_by"}))
    with pytest.raises(ck.CheckpointError, match=rf"written by {BEFORE}, newer than"):
        ck.read_meta(tmp_path)


def test_a_decode_s_wer_json_names_its_writer_and_the_software_it_ran_on(tmp_path):
    rows = [dict(key="a", ref="one", hyp="one", duration=2.0, truncated=None, hotwords=None)]
    found = dict(manifest="data/test.jsonl", lines=1, skipped=0, skipped_by_reason={})
    timing = dict(audio_seconds=2.0, decode_seconds=1.0, device="cpu", mode="greedy")
    llm_summary(tmp_path, rows, found, DecodeConfig(), timing)
    summary = json.loads((tmp_path / "wer.json").read_text())
    assert summary["written_by"] == written_by() and summary["software"] == software()


def test_an_export_description_of_a_newer_format_is_refused_naming_its_writer(tmp_path):
    desc = {"format": "llmasr-exported-2", "written_by": {"llmasr": "9.0.0", "commit": "abcdef123456"}}
    (tmp_path / MODEL_FILE).write_text(yaml.safe_dump(desc))
    said = r"format 'llmasr-exported-2', but this llmasr reads llmasr-exported-1 \(written by llmasr 9.0.0 \(commit "
    with pytest.raises(ExportedModelError, match=said + r"abcdef123456\), newer than this llmasr\? upgrade"):
        read_description(tmp_path)
