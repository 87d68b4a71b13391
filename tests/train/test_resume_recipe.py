"""Which recipe keys may change on resume (llmasr.train.resume_recipe): the tables against the README's and the
recipe's keys; resumes that use them: tests/train/test_resume.py."""

import re
from pathlib import Path

from llmasr.config_io import from_dict, to_dict
from llmasr.recipe import Recipe
from llmasr.train import resume_recipe as rr
from llmasr.train.config import BRANCHES

README = Path(__file__).resolve().parents[2] / "README.md"


# -- the key tables -----------------------------------------------------------------------------------------------
def readme_rows() -> dict[str, set[str]]:
    """{second column: backticked keys of the first} of the README's resume table."""
    text = README.read_text()
    table = text[text.index("| keys | on resume |") :].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        keys, effect = line.strip("|").split("|")
        rows[effect.strip()] = set(re.findall(r"`([^`]+)`", keys))
    return rows


def test_readme_table_is_the_code_s():
    rows = readme_rows()
    rebuilt = [keys for effect, keys in rows.items() if "rebuilt" in effect]
    assert rebuilt == [set(rr.RESCHEDULE)]
    may = set().union(
        *(keys for effect, keys in rows.items() if effect.startswith("may change") and "rebuilt" not in effect)
    )
    assert may == set(rr.MAY_CHANGE)


def test_every_listed_key_is_a_recipe_key_and_the_rest_are_refused():
    from llmasr.models.sanm_chunk import TRAIN_CHUNKS

    full = from_dict(  # a streaming encoder's conf key too (the conf dict holds what the recipe gives)
        Recipe,
        {
            "optim": {"branches": {b: {"lr": 1e-4, "scheduler": {"type": "constant"}} for b in BRANCHES}},
            "model": {"encoder": {"conf": {"train_chunks": TRAIN_CHUNKS[0]}}},
        },
    )
    keys = set(rr.flatten(to_dict(full)))
    for pattern in rr.MAY_CHANGE + rr.RESCHEDULE:  # a renamed config key must not leave a dead entry behind
        assert any(rr._matches(k, pattern) for k in keys), pattern
    kinds = {k: rr.key_kind(k) for k in keys}
    assert kinds["optim.branches.llm.lr"] == kinds["optim.scheduler.warmup_ratio"] == "reschedule"
    assert kinds["optim.branches.ctc.scheduler.type"] == kinds["train.epochs"] == "reschedule"
    assert kinds["decode.num_beams"] == kinds["data.num_workers"] == kinds["model.llm.path"] == "may_change"
    for key in ("model.llm.lora", "model.encoder.freeze", "data.train", "data.batching.max_seconds", "data.seed",
                "train.seed", "train.precision", "optim.weight_decay", "optim.branches.llm.betas", "train.best_metric",
                "data.augment.speed_perturb.enabled", "train.micro_batch_per_gpu"):  # fmt: skip
        assert rr.key_kind(key) == "refused", key
    assert "data.valid_max_utts" in keys and rr.key_kind("data.valid_max_utts") == "may_change"


def test_recipe_changes_read_absent_as_none():
    saved = {"optim": {"branches": {}}, "train": {"epochs": 1}}
    new = {"optim": {"branches": {"llm": {"lr": 2e-5, "eps": None}}}, "train": {"epochs": 1}}
    assert rr.recipe_changes(saved, new) == [("optim.branches.llm.lr", None, 2e-5)]


def test_a_long_value_is_shown_where_it_changed():
    """data.train's second entry given another weight had read the same on both sides (each cut at its start), so
    the refusal named the key but not what changed in it."""
    entries = [{"path": "/data/corpora/aishell/train.jsonl", "weight": 1.0}, {"path": "/data/dialect.jsonl"}]
    saved = {"data": {"train": [*entries[:1], {**entries[1], "weight": 0.5}]}}
    new = {"data": {"train": [*entries[:1], {**entries[1], "weight": 3.0}]}}
    text = rr.describe(rr.recipe_changes(saved, new))
    assert text.startswith("data.train: ...")
    before, after = text.removeprefix("data.train: ").split(" -> ")
    assert before.endswith('"weight": 0.5}]') and after.endswith('"weight": 3.0}]') and len(before) <= 80
    # short values, and long ones that differ early, read as before
    assert rr.describe([("train.epochs", 3, 5)]) == "train.epochs: 3 -> 5"
    early = rr.describe([("k", "a" * 100, "b" * 100)])
    assert early == f'k: "{"a" * 76}... -> "{"b" * 76}...'
