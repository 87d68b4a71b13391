"""The lines a CTC branch has no path for (more labels than encoder frames) are named at start-up: in train.log
before the first update, by `llmasr check` and by `llmasr data check --recipe` (llmasr.data.ctc_frames)."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from check_runner import run_check

from llmasr.commands.data_check import main as data_check
from llmasr.data.ctc_frames import frames_needed, unaligned_text
from llmasr.models.ctc import ctc_unalignable
from llmasr.models.ctc_tiktoken import write_ranks
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict
from llmasr.testing.tiny_whisper import tiny_conformer_conf
from llmasr.train.trainer import train

LONG = "seven three eight seven zero"  # 28 labels, a repeat (the "ee" of three): 29 frames needed


def letters(path):
    """A character vocabulary, as a FunASR tokens.txt of letters: each word is spelled letter by letter."""
    path.write_text("\n".join(["<blank>", "<unk>", "<space>", *"abcdefghijklmnopqrstuvwxyz"]) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Eight lines of 2 s saying "one two" (7 labels), but lines 2 and 5: 1.5 s saying LONG, which conv2d8's 12.5
    frames a second (17 frames) cannot align and conv2d's 25 (36 frames) can."""
    root = tmp_path_factory.mktemp("ctcframes")
    (root / "wav").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        seconds = 1.5 if i in (1, 4) else 2.0
        sf.write(str(root / "wav" / f"u{i}.wav"), 0.1 * rng.standard_normal(int(seconds * 16000)), 16000)
        text = LONG if i in (1, 4) else "one two"
        rows.append({"key": f"u{i}", "source": f"wav/u{i}.wav", "target": text, "duration": seconds})
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, rows, letters(root / "tokens.txt")


def recipe_dict(llm, corpus, run_dir, input_layer="conv2d8", **keys):
    manifest, _, vocab = corpus
    data = tiny_recipe_dict(llm, train=[manifest], output_dir=run_dir, ctc_weight=0.3, max_seconds=20.0, **keys)
    conf = {**tiny_conformer_conf(80), "input_layer": input_layer}
    data["model"]["encoder"] = {"type": "conformer", "conf": conf, "frontend": {"lfr_m": 1, "lfr_n": 1}}
    data["model"]["ctc"]["vocab"] = str(vocab)
    return data


def written(data, path):
    path.write_text(yaml.safe_dump(data))
    return path


def test_frames_needed_is_the_rule_the_loss_counts():
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = rng.integers(0, 3, size=int(rng.integers(1, 12)))
        need = frames_needed(ids)
        targets, lens = torch.tensor(ids)[None], torch.tensor([ids.size])
        assert not ctc_unalignable(torch.tensor([need]), targets, lens).item()
        assert ctc_unalignable(torch.tensor([need - 1]), targets, lens).item()


def test_data_check_names_the_lines_conv2d8_cannot_align(tiny_llm_dir, corpus, tmp_path, capsys):
    manifest = corpus[0]
    recipe = written(recipe_dict(tiny_llm_dir, corpus, tmp_path / "run"), tmp_path / "r.yaml")
    assert data_check(["--recipe", str(recipe)]) == 0  # a warning: the LLM still trains on them
    out = capsys.readouterr().out
    assert "## CTC labels against encoder frames" in out
    assert "data.train: 2 of 8 lines (25.0%) have more CTC labels" in out
    assert "12.5 frames a second" in out and f"First: {manifest}:2 (29 frames needed, 17 given)" in out
    assert f"{manifest}:5 (29 frames needed, 17 given)" in out and "model.ctc.weight 0" in out
    # at conv2d's 25 frames a second the same lines align
    fine = written(recipe_dict(tiny_llm_dir, corpus, tmp_path / "run", "conv2d"), tmp_path / "fine.yaml")
    assert data_check(["--recipe", str(fine)]) == 0
    assert "CTC labels against encoder frames" not in capsys.readouterr().out


def test_llmasr_check_warns_of_them(tiny_llm_dir, corpus, tmp_path, capsys):
    manifest = corpus[0]
    recipe = written(recipe_dict(tiny_llm_dir, corpus, tmp_path / "run"), tmp_path / "r.yaml")
    code, out, _ = run_check(capsys, "--config", str(recipe), "--deepspeed", "zero0", "--out", str(tmp_path / "c"))
    assert code == 0
    assert "  warning: data.train: 2 of 8 lines (25.0%) have more CTC labels" in out
    assert f"First: {manifest}:2 (29 frames needed, 17 given)" in out
    code, out, _ = run_check(capsys, "--config", str(recipe), "--deepspeed", "zero0", "--out", str(tmp_path / "c"),
                             "model.ctc.weight=0")  # fmt: skip
    assert code == 0 and "more CTC labels" not in out


def test_train_log_says_it_before_the_first_update(tiny_llm_dir, corpus, tmp_path):
    manifest = corpus[0]
    run = tmp_path / "run"
    train(load_recipe(data=recipe_dict(tiny_llm_dir, corpus, run, max_updates=1)), "zero0")
    log = (run / "train.log").read_text()
    said = log.index("data.train: 2 of 8 lines (25.0%) have more CTC labels")
    assert said < log.index(" train update=1 ")
    assert f"First: {manifest}:2 (29 frames needed, 17 given)" in log[said:]


def test_the_fixes_offer_no_vocabulary_that_spells_no_shorter(tiny_llm_dir, corpus, tmp_path, capsys):
    """A byte-level vocabulary, or the LLM's own, is already subword: the fix names longer pieces, or none."""
    data = recipe_dict(tiny_llm_dir, corpus, tmp_path / "run")
    data["model"]["ctc"]["vocab"] = str(write_ranks(tmp_path / "bytes.tiktoken", [bytes([b]) for b in range(256)]))
    recipe = written(data, tmp_path / "r.yaml")
    assert data_check(["--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "data.train: 2 of 8 lines (25.0%) have more CTC labels" in out
    assert "a subword CTC vocabulary" not in out and "a CTC vocabulary of longer pieces (model.ctc.vocab: llm)" in out
    code, out, _ = run_check(capsys, "--config", str(recipe), "--deepspeed", "zero0", "--out", str(tmp_path / "c"))
    assert code == 0 and "have more CTC labels" in out and "a subword CTC vocabulary" not in out
    said = unaligned_text(np.array([9]), np.array([0]), np.array([0.5]), lambda s: np.ceil(s * 12.5).astype(int),
                          str, name="data.train", vocab_kind="llm")  # fmt: skip
    assert said.endswith("conv2d8 12.5), or model.ctc.weight 0 to train without the CTC branch")
    said = unaligned_text(np.array([9]), np.array([0]), np.array([0.5]), lambda s: np.ceil(s * 12.5).astype(int),
                          str, name="data.train")  # fmt: skip
    assert "a subword CTC vocabulary (model.ctc.vocab: a sentencepiece .model, or llm)" in said
