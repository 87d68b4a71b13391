"""`llmasr demo --quick`: the whole embedded path (espeak-ng corpus, text-pretrained Qwen2, `deepspeed --num_gpus 2
--module llmasr train` with recipes/demo.yaml under ZeRO-2, export, decode) on a tiny corpus, checked for learning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmasr.demo.run import chance_wer
from llmasr.train.progress import parse_log_line

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_chance_wer_pairs_each_hypothesis_with_another_reference(tmp_path):
    rows = [
        {"ref": "one two", "hyp": "one two"},
        {"ref": "three four", "hyp": "three four"},
        {"ref": "five six", "hyp": ""},
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # refs [one two, three four, five six] against hyps [three four, <empty>, one two]: every word wrong.
    assert chance_wer(path) == pytest.approx(1.0)
    # scored as decode scores: case and punctuation do not count (raw text had made every word an error)
    rows = [{"ref": "One, two.", "hyp": "three four"}, {"ref": "Three four!", "hyp": "one two"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert chance_wer(path) == 0.0
    path.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match="two decoded"):
        chance_wer(path)


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install -y espeak-ng)"
)
@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not on PATH")
def test_quick_demo_trains_exports_and_decodes(tmp_path):
    workdir = tmp_path / "demo"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "llmasr", "demo", "--quick", "--workdir", str(workdir)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "held-out-voice test WER" in done.stdout

    run_dir = workdir / "run"
    for name in ("train.log", "lr_schedule.csv", "lr_schedule.png", "recipe.yaml", "checkpoints/latest"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    recipe = (run_dir / "recipe.yaml").read_text()
    assert "tri_stage" in recipe
    assert json.loads((run_dir / "ds_config.json").read_text())["zero_optimization"]["stage"] == 2

    # The training loss falls: the mean of the last updates is well below that of the first ones.
    log_lines = (run_dir / "train.log").read_text().splitlines()
    losses = [parse_log_line(line)["loss"] for line in log_lines if " train update=" in line]
    assert len(losses) >= 6
    k = max(2, len(losses) // 4)
    assert sum(losses[-k:]) / k < 0.5 * sum(losses[:k]) / k

    # Two ranks trained (world size in the run's batches line; train.log now starts with the data screen) and the
    # exported model decodes the training voices (dev split: voices seen in training, sentences not) better than chance.
    batches = next(line for line in log_lines if " batches: " in line)
    assert "world 2" in batches
    if "OMP_NUM_THREADS" not in os.environ:  # the two CPU ranks split the cores instead of each taking all
        threads = max(1, (os.cpu_count() or 1) // 2)
        assert f"{threads} CPU thread{'s' * (threads != 1)} per rank" in batches, batches
    summary = json.loads((workdir / "summary.json").read_text())
    dev = workdir / "decode_dev"
    rows = [json.loads(line) for line in open(dev / "results.jsonl")]
    assert len(rows) == summary["corpus"]["dev"]
    chance = chance_wer(dev / "results.jsonl")
    assert summary["dev_wer"] < 0.85 * chance, (summary, chance)
    assert summary["dev_wer"] < 1.0
    # the CTC branch is scored beside the LLM (llmasr decode --ctc)
    assert 0.0 <= summary["test_ctc_wer"] and (workdir / "decode_test" / "ctc" / "hyp.txt").is_file()
    assert "encoder CTC branch alone" in done.stdout
    # how sure: a bootstrap interval around the test WER, and how often the decoded WER beats the CTC branch's
    low, high = summary["test_wer_ci95"]
    assert low <= summary["test_wer"] <= high and 0.0 <= summary["test_llm_beats_ctc"] <= 1.0
    assert "of paired utterance resamples" in done.stdout
    # the hotword split is decoded with its lists and unprompted, and both are scored on the same lists
    assert "hotword split B-WER" in done.stdout and "minute-long audio" in done.stdout
    hot = summary["hotwords"]
    assert hot["hotword"]["distractors"] == hot["hotword_unprompted"]["distractors"] > 0
    assert hot["hotword_prompt_only"]["distractors"] == hot["hotword"]["distractors"]
    assert hot["hotword"]["b_wer"] is not None and hot["hotword_unprompted"]["b_wer"] is not None
    rows = [json.loads(line) for line in open(workdir / "decode_hotword" / "results.jsonl")]
    assert all(len(r["hotwords"]) == 5 for r in rows) and len(rows) == summary["corpus"]["hotword"]
    # the minute-long utterance's subtitles: its whole transcript in timed cues, inside its audio
    long_rows = [json.loads(line) for line in open(workdir / "long_audio" / "decode" / "results.jsonl")]
    for row in long_rows:
        srt = (workdir / "long_audio" / "decode" / "subtitles" / f"{row['key']}.srt").read_text(encoding="utf-8")
        blocks = [b.split("\n") for b in srt.split("\n\n") if b]
        assert [b[0] for b in blocks] == [str(i) for i in range(1, len(blocks) + 1)] and len(blocks) > 1
        assert " ".join(" ".join(b[2:]) for b in blocks).split() == row["hyp"].split()
    assert "cues, in" in done.stdout

    # A rerun reuses every stage.
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("corpus", "LLM", "train", "export"):
        assert any(stage in line and "reusing" in line for line in again.stdout.splitlines()), stage
