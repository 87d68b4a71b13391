"""bench/_common.py: every run names the commit it measured, and run_all names each section's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))


def test_a_run_names_the_commit_it_measured(tmp_path, capsys, monkeypatch):
    import ctc_tiktoken

    monkeypatch.delenv("LLMASR_BENCH_COMMIT", raising=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH, capture_output=True, text=True)
    assert ctc_tiktoken.main(["--lengths", "20", "--texts", "1", "--json-out", str(tmp_path / "t.json")]) == 0
    commit = json.loads((tmp_path / "t.json").read_text())["commit"]
    assert commit.removesuffix("+dirty") == head.stdout.strip()
    assert capsys.readouterr().out.rstrip().endswith(f"Commit: {commit}")


def test_a_tree_without_git_names_the_commit_its_caller_gives(tmp_path):
    """The lent GPU machine gets a copy of the tree that may lack .git: LLMASR_BENCH_COMMIT names the commit."""
    shutil.copy(BENCH / "_common.py", tmp_path / "_common.py")
    code = "import _common; print(_common.git_commit())"
    env = {k: v for k, v in os.environ.items() if k != "LLMASR_BENCH_COMMIT"}
    env["GIT_CEILING_DIRECTORIES"] = str(tmp_path.parent)
    run = [sys.executable, "-c", code]
    assert subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True).stdout.strip() == "unknown"
    env["LLMASR_BENCH_COMMIT"] = "abc1234"
    assert subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True).stdout.strip() == "abc1234"


def test_run_all_renders_each_benchmark_with_the_commit_it_was_measured_at(tmp_path, monkeypatch):
    """--only and --render-only keep earlier results: each section names its own commit, not the render's."""
    import run_all

    stdout = "| batching | batches | mean batch | padding efficiency |\n|---|---|---|---|\n| b | 3 | 2.0 | 0.9 |\n"
    res = run_all.data_pipeline_json(stdout + "\nReproduce: `python bench/data_pipeline.py`\nCommit: 0a1b2c3\n", [])
    assert res["commit"] == "0a1b2c3"
    (tmp_path / "data_pipeline.json").write_text(json.dumps(res))
    (tmp_path / "data_pipeline.md").write_text(stdout)
    (tmp_path / "zero_memory.json").write_text(json.dumps({"benchmark": "zero_memory"}))  # no commit recorded
    monkeypatch.setattr(run_all, "report_from_json", lambda name, res: None if name == "data_pipeline" else "zeros")
    md = run_all.render(tmp_path, "m", {}).read_text()
    assert "Measured at commit 0a1b2c3." in md and "Measured at commit not recorded." in md
