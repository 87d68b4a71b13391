"""Validation metrics: the CTC branch's greedy WER (ctc_wer) beside the LLM's, at ZeRO-0 and ZeRO-3, summed over
ranks, and written to train.log and TensorBoard."""

import dataclasses
import io
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import llmasr
from llmasr.config_io import from_dict
from llmasr.models.ctc import ctc_greedy
from llmasr.recipe import DecodeConfig
from llmasr.scoring import score_corpus
from llmasr.testing.tiny_recipe import OracleCTCHead, random_batch, tiny_model_section
from llmasr.train import validate as validate_mod
from llmasr.train.config import OptimConfig, TrainConfig
from llmasr.train.valid_sets import ValidSets
from llmasr.train.validate import validate, validate_by_set

TARGETS = ["zero one two", "three four", "five six seven eight", "nine", "one one", "two three four five"]
FRAMES = [34, 40, 46, 30, 38, 44]  # distinct: the oracle heads below know an utterance by its length
SPLITS = [(0, 2), (2, 5), (5, 6)]
DECODE = DecodeConfig(max_new_tokens=4)


def build_model(llm_dir, *, ctc=True, seed=0):
    torch.manual_seed(seed)
    section = tiny_model_section(llm_dir, ctc_weight=0.3 if ctc else 0.0)
    section["encoder"]["conf"].update(dropout_rate=0.0, attention_dropout_rate=0.0, positional_dropout_rate=0.0)
    return llmasr.build_model(section)


def make_batches(model, splits=SPLITS):
    return [random_batch(model, TARGETS[lo:hi], frames=FRAMES[lo:hi], seed=k) for k, (lo, hi) in enumerate(splits)]


def pooled_rows(batches, splits=SPLITS):
    """`batches` with each row's index in the pool of TARGETS (what a loader over several manifests gives)."""
    return [dataclasses.replace(b, indices=list(range(lo, hi))) for b, (lo, hi) in zip(batches, splits)]


SETS = ValidSets(["a", "b"], [3, 3])  # TARGETS[:3] and TARGETS[3:]: the second batch holds rows of both


def stand_in(batch):
    """`batch` flagged as an all-bad batch's stand-in (its rows are the fallback's)."""
    return dataclasses.replace(batch, empty=True)


def plain_engine(model):
    """What validate() needs of a TrainEngine, without DeepSpeed."""
    return SimpleNamespace(module=model, stage=0, device=torch.device("cpu"), to_device=lambda batch: batch)


def make_engine(model, preset, world_size=1):
    from llmasr.train.ds_config import resolve_ds_config
    from llmasr.train.engine import TrainEngine
    from llmasr.train.param_groups import build_param_groups
    from llmasr.train.process_group import init_distributed
    from llmasr.train.schedulers import build_group_schedules

    dist = init_distributed()
    optim = from_dict(OptimConfig, {"scheduler": {"type": "constant"}})
    ds = resolve_ds_config(preset, TrainConfig(grad_accum=1, precision="fp32"), world_size=world_size)
    groups = build_param_groups(model, optim)
    return TrainEngine(model, groups, build_group_schedules(groups, optim, 10), ds, dist.device)


def independent_ctc_wer(model, batches, metric="auto") -> float:
    """Encoder -> CTC head -> ctc_greedy -> the CTC vocabulary -> the scorer, outside validate()."""
    model.eval()
    pairs = []
    with torch.no_grad():
        for batch in batches:
            if batch.empty:
                continue
            enc, lens = model.encoder(batch.feats, batch.feat_lens)
            ids = ctc_greedy(model.ctc_head(enc, lens), lens, model.ctc_tokenizer.blank_id)
            pairs += [(ref, model.ctc_tokenizer.decode(i)) for ref, i in zip(batch.targets, ids)]
    assert any(hyp.strip() for _, hyp in pairs)  # the head emits something: the comparison is not of empties
    return score_corpus(pairs, metric)[0].rate


def independent_llm_wer(model, batches) -> float:
    """The LLM's greedy hypotheses from model.generate, scored outside validate()."""
    model.eval()
    pairs = []
    with torch.no_grad():
        for batch in batches:
            hyps = model.generate(batch, max_new_tokens=DECODE.max_new_tokens, num_beams=1)
            pairs += list(zip(batch.targets, hyps))
    return score_corpus(pairs, DECODE.metric)[0].rate


def oracle_head(model, text_for) -> OracleCTCHead:
    """A CTC head whose best path spells `text_for(reference)` for each utterance (known by its length, FRAMES)."""
    return OracleCTCHead(model.ctc_tokenizer, {n: text_for(t) for n, t in zip(FRAMES, TARGETS)})


def drop_first_word(text: str) -> str:
    return " ".join(text.split()[1:])


N_WORDS = sum(len(t.split()) for t in TARGETS)


@pytest.mark.parametrize(
    "text_for, want",
    [(lambda t: t, 0.0), (drop_first_word, len(TARGETS) / N_WORDS), (lambda t: t + " nine nine", 2 * 6 / N_WORDS)],
    ids=["perfect", "drops_first_word", "inserts_two_words"],
)
def test_ctc_wer_follows_the_ctc_head(tiny_llm_dir, text_for, want):
    model = build_model(tiny_llm_dir)
    model.ctc_head = oracle_head(model, text_for)
    batches = make_batches(model)
    metrics = validate(plain_engine(model), batches, DECODE)
    assert metrics["ctc_wer"] == pytest.approx(want, abs=1e-12)
    assert metrics["n_utts"] == len(TARGETS)
    # the CTC head does not change the LLM's score: validate's wer is the generated hypotheses' WER
    assert metrics["wer"] == pytest.approx(independent_llm_wer(model, batches), abs=1e-12)
    # the all-bad stand-in runs but counts nothing
    with_stand_in = validate(plain_engine(model), [*batches, stand_in(batches[0])], DECODE)
    assert with_stand_in["ctc_wer"] == metrics["ctc_wer"] and with_stand_in["n_utts"] == len(TARGETS)


def test_ctc_scored_with_the_decode_metric(tiny_llm_dir):
    """metric: cer scores the CTC transcripts in characters, as it does the LLM's."""
    model = build_model(tiny_llm_dir)
    model.ctc_head = oracle_head(model, drop_first_word)
    batches = make_batches(model)
    metrics = validate(plain_engine(model), batches, DecodeConfig(max_new_tokens=4, metric="cer"))
    first = sum(len(t.split()[0]) for t in TARGETS)
    chars = sum(len(t.replace(" ", "")) for t in TARGETS)
    assert metrics["ctc_wer"] == pytest.approx(first / chars, abs=1e-12)


@pytest.mark.parametrize("preset", ["zero0", "zero3"])
def test_ctc_wer_equals_an_independent_greedy_score(tiny_llm_dir, preset):
    """The real (random) CTC head under a DeepSpeed engine; under ZeRO-3 its weights are partitioned."""
    want = independent_ctc_wer(build_model(tiny_llm_dir), make_batches(build_model(tiny_llm_dir)))
    model = build_model(tiny_llm_dir)
    engine = make_engine(model, preset)
    if preset == "zero3":
        assert all(hasattr(p, "ds_id") for p in engine.module.ctc_head.parameters())
    batches = make_batches(build_model(tiny_llm_dir))
    metrics = validate(engine, batches, DECODE)
    assert metrics["ctc_wer"] == pytest.approx(want, abs=1e-12)
    assert want > 0 and metrics["ctc_wer"] != metrics["wer"]


def test_no_ctc_head_no_ctc_wer(tiny_llm_dir):
    model = build_model(tiny_llm_dir, ctc=False)
    batches = make_batches(model)
    metrics = validate(plain_engine(model), batches, DECODE)
    assert "wer" in metrics and "ctc_wer" not in metrics and "ctc_loss" not in metrics
    with_ctc = build_model(tiny_llm_dir)
    no_wer = validate(plain_engine(with_ctc), make_batches(with_ctc), DECODE, with_wer=False)
    assert "wer" not in no_wer and "ctc_wer" not in no_wer and "ctc_loss" in no_wer


def test_ranks_sum_error_counts_not_rates(tiny_llm_dir, monkeypatch):
    """Rank B's all-reduce adds rank A's sums: the result equals one rank validating everything, not the mean of
    the two ranks' rates."""
    model = build_model(tiny_llm_dir)
    model.ctc_head = oracle_head(model, drop_first_word)
    batches = make_batches(model)
    engine = plain_engine(model)
    whole = validate(engine, batches, DECODE)
    sent = []
    monkeypatch.setattr(validate_mod, "all_reduce_sum", lambda values, device: sent.append(values) or list(values))
    rank_a = validate(engine, batches[:1], DECODE)
    rank_b_alone = validate(engine, batches[1:], DECODE)
    monkeypatch.setattr(validate_mod, "all_reduce_sum", lambda values, device: [a + b for a, b in zip(values, sent[0])])
    rank_b = validate(engine, batches[1:], DECODE)
    assert rank_b["ctc_wer"] == pytest.approx(whole["ctc_wer"], abs=1e-12) == len(TARGETS) / N_WORDS
    assert rank_b["wer"] == pytest.approx(whole["wer"], abs=1e-12)
    assert abs((rank_a["ctc_wer"] + rank_b_alone["ctc_wer"]) / 2 - whole["ctc_wer"]) > 1e-3


def test_each_set_is_scored_from_its_own_rows(tiny_llm_dir):
    """validate_by_set: the pool's metrics are validate()'s, and each set's come from its rows alone, a batch that
    mixes the sets split between them (the oracle CTC head drops each first word: 3 of 9 words, 3 of 7)."""
    model = build_model(tiny_llm_dir)
    model.ctc_head = oracle_head(model, drop_first_word)
    batches = pooled_rows(make_batches(model))
    engine = plain_engine(model)
    pooled, by_set = validate_by_set(engine, [*batches, stand_in(batches[0])], DECODE, SETS)
    assert pooled == validate(engine, batches, DECODE)
    assert list(by_set) == ["a", "b"] and [s["n_utts"] for s in by_set.values()] == [3, 3]
    assert by_set["a"]["ctc_wer"] == pytest.approx(3 / 9, abs=1e-12)
    assert by_set["b"]["ctc_wer"] == pytest.approx(3 / 7, abs=1e-12)
    for name, rows in [("a", [[0, 1], [0], []]), ("b", [[], [1, 2], [0]])]:
        alone = [b.select(r) for b, r in zip(batches, rows) if r]
        want = validate(engine, alone, DECODE)
        assert by_set[name]["wer"] == pytest.approx(want["wer"], abs=1e-12)
        assert by_set[name]["llm_loss"] == pytest.approx(want["llm_loss"], rel=1e-5)
        assert by_set[name]["ctc_loss"] == pytest.approx(want["ctc_loss"], rel=1e-5)
        assert (by_set[name]["n_tokens"], by_set[name]["acc"]) == (want["n_tokens"], want["acc"])
    assert validate_by_set(engine, batches, DECODE, None) == (pooled, {})  # one manifest: the pool alone


def test_trainer_logs_ctc_wer(tiny_llm_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmasr.recipe import load_recipe
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.train.progress import parse_log_line
    from llmasr.train.trainer import train

    train_m = write_tiny_corpus(tmp_path / "train", n=4)
    dev_m = write_tiny_corpus(tmp_path / "dev", n=3, seed=1)
    run = tmp_path / "run"
    recipe = load_recipe(
        data=tiny_recipe_dict(tiny_llm_dir, train=[train_m], valid=[dev_m], output_dir=run, ctc_weight=0.3)
    )
    result = train(recipe, "zero0")
    lines = (run / "train.log").read_text().splitlines()
    valid = [parse_log_line(line) for line in lines if " valid update=" in line]
    assert valid and all(0 <= v["ctc_wer"] < float("inf") and "wer" in v for v in valid)
    assert valid[-1]["ctc_wer"] == pytest.approx(result["metrics"]["ctc_wer"], rel=1e-3)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert "valid/ctc_wer" in events.Tags()["scalars"]
    assert not any(" valid[" in line for line in lines)  # one manifest: its pool's line alone
    assert not any(tag.count("/") > 1 for tag in events.Tags()["scalars"] if tag.startswith("valid/"))


def test_validating_leaves_the_training_course_as_it_was(tiny_llm_dir, tmp_path):
    """A validation pass draws nothing from the RNGs training uses (the valid loader's iterator had drawn its seed
    from torch's, which dropout uses): validating every 2 updates trains the same losses as not validating mid-epoch,
    so changing train.valid_every_updates on resume, or a stop before a due validation, leaves the course alone."""
    from llmasr.recipe import load_recipe
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.train.trainer import train

    train_m = write_tiny_corpus(tmp_path / "train", n=12)
    dev_m = write_tiny_corpus(tmp_path / "dev", n=3, seed=1)
    losses = []
    for every in (0, 2):
        data = tiny_recipe_dict(
            tiny_llm_dir, train=[train_m], valid=[dev_m], output_dir=tmp_path / f"run{every}", grad_accum=1,
            dropout=0.1, valid_every_updates=every, best_k=0, epochs=2,
        )  # fmt: skip
        losses.append([h["loss"] for h in train(load_recipe(data=data), "zero0")["history"]])
    assert len(losses[0]) >= 6 and losses[0] == losses[1]


TWO_RANK_SCRIPT = """
import json, sys
sys.path.insert(0, {tests_dir!r})
import torch
from llmasr.train.process_group import exit_rank
from test_validate import DECODE, SETS, build_model, make_batches, make_engine, pooled_rows, stand_in
from llmasr.train.validate import validate, validate_by_set

llm_dir, out = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
batches = pooled_rows(make_batches(build_model(llm_dir)))
engine = make_engine(build_model(llm_dir), "zero3", world_size=2)
rank = torch.distributed.get_rank()
mine = [batches[0], batches[1]] if rank == 0 else [batches[2], stand_in(batches[2])]
metrics = validate(engine, mine, DECODE)
pooled, by_set = validate_by_set(engine, mine, DECODE, SETS)  # rank 1 holds no row of set a
json.dump({{"metrics": metrics, "pooled": pooled, "by_set": by_set}}, open(out + f".{{rank}}", "w"))
exit_rank(0)  # as the llmasr entry point ends a rank: no abort at exit
"""


@pytest.mark.slow
def test_two_rank_zero3_ctc_wer(tiny_llm_dir, tmp_path):
    """Real `deepspeed` launcher, 2 CPU ranks, ZeRO-3: rank 1 ends on an all-bad stand-in batch; both ranks report
    the CTC WER of all three batches, and each set's of its rows (rank 1 holds rows of one set only)."""
    from llmasr.testing.launcher import launch_script

    script = tmp_path / "two_rank_validate.py"
    script.write_text(TWO_RANK_SCRIPT.format(tests_dir=str(Path(__file__).parent)))
    out = tmp_path / "metrics.json"
    launch_script(script, tiny_llm_dir, out, timeout=400)
    results = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]
    got = [r["metrics"] for r in results]
    want = independent_ctc_wer(build_model(tiny_llm_dir), make_batches(build_model(tiny_llm_dir)))
    assert got[0] == got[1]
    assert got[0]["n_utts"] == len(TARGETS)
    assert got[0]["ctc_wer"] == pytest.approx(want, abs=1e-12)
    assert results[0]["by_set"] == results[1]["by_set"] and results[0]["pooled"] == got[0]
    by_set = results[0]["by_set"]
    model = build_model(tiny_llm_dir)
    rows = pooled_rows(make_batches(model))
    for name, lo, hi in [("a", 0, 3), ("b", 3, 6)]:
        picked = [[i for i, k in enumerate(b.indices) if lo <= k < hi] for b in rows]
        want_set = independent_ctc_wer(model, [b.select(p) for b, p in zip(rows, picked) if p])
        assert by_set[name]["n_utts"] == 3 and by_set[name]["ctc_wer"] == pytest.approx(want_set, abs=1e-12)
    assert sum(s["errors"] for s in by_set.values()) / sum(s["ref_units"] for s in by_set.values()) == pytest.approx(
        got[0]["wer"], abs=1e-12
    )


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_padding_duplicates_are_run_but_not_scored(tiny_llm_dir):
    """A batch the sampler repeats only to keep ranks in step (its `duplicate` flag) runs but counts nothing: the
    metrics equal those of the batches without it, and n_utts counts each utterance once."""
    model = build_model(tiny_llm_dir)
    model.ctc_head = oracle_head(model, drop_first_word)
    batches = make_batches(model)
    engine = plain_engine(model)
    once = validate(engine, batches, DECODE)
    repeated = validate(engine, [*batches, dataclasses.replace(batches[1], duplicate=True)], DECODE)
    assert repeated == once
    assert once["n_utts"] == len(TARGETS)
    counted_twice = validate(engine, [*batches, batches[1]], DECODE)
    assert counted_twice["n_utts"] == len(TARGETS) + 3  # the unflagged repeat is scored again


def test_features_computed_on_the_device_are_computed_once_per_batch(tiny_llm_dir, monkeypatch):
    """data.features_on: device: the teacher-forced forward and the greedy pass of a validation batch share one
    fbank (each had computed its own), and score as the same features computed by the workers do."""
    from llmasr.data.device_features import DeviceFeatures
    from llmasr.testing.tiny_recipe import wave_batch

    torch.manual_seed(0)
    model = llmasr.build_model(tiny_model_section(tiny_llm_dir, ctc_weight=0.3))
    batches = [wave_batch(model, ["zero one", "two three four"], [0.6, 0.9], seed=s) for s in (0, 1)]
    computed = []
    call = DeviceFeatures.__call__
    monkeypatch.setattr(DeviceFeatures, "__call__", lambda self, *a: computed.append(1) or call(self, *a))
    on_device = validate(plain_engine(model), batches, DECODE)
    assert len(computed) == len(batches)
    by_workers = [dataclasses.replace(b, feats=model.batch_features(b)[0], wave=b.wave[:, :0]) for b in batches]
    assert validate(plain_engine(model), by_workers, DECODE) == on_device


def test_a_validation_that_scored_nothing_ranks_no_checkpoint(tiny_llm_dir):
    """Every batch a stand-in: loss, llm_loss, acc and ctc_loss are NaN, which no ranking takes (they had been 0.0,
    and a loss of 0 ranked best)."""
    import math

    model = build_model(tiny_llm_dir)
    metrics = validate(plain_engine(model), [stand_in(b) for b in make_batches(model)], DECODE)
    assert metrics["n_utts"] == 0 and metrics["n_tokens"] == 0
    assert all(math.isnan(metrics[k]) for k in ("loss", "llm_loss", "acc", "ctc_loss", "wer"))


def test_a_valid_set_the_batching_filters_away_is_refused_at_start(tiny_llm_dir, tmp_path):
    from llmasr.config_io import ConfigError
    from llmasr.recipe import load_recipe
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.train.resolve import build_loaders, text_side

    train = write_tiny_corpus(tmp_path / "c", n=6)
    lines = [json.loads(line) for line in train.read_text().splitlines()]
    valid = tmp_path / "c" / "valid.jsonl"
    valid.write_text("".join(json.dumps({**r, "duration": 99.0}) + "\n" for r in lines))  # past max_duration
    recipe = load_recipe(data=tiny_recipe_dict(tiny_llm_dir, train=[train], valid=[valid], output_dir=tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"data.valid: no batch for rank 0 of 1 \(every item filtered\? .*too_long"):
        build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)


@pytest.mark.parametrize(
    ("targets", "name", "in_words", "in_chars"),
    [
        (["今天 天气很好", "你好"], "cer", 0, 2),
        (["今天天气", "zero one"], "mer", 1, 1),
        (["zero one", "nine"], "wer", 2, 0),
    ],
)
def test_error_rate_named_by_its_units(tiny_llm_dir, tmp_path, caplog, targets, name, in_words, in_chars):
    """A set scored in characters (Chinese) shows its error rate as `cer` (and the CTC head's as `ctc_cer`) in
    train.log and TensorBoard, one scored in both as `mer`; the metrics the checkpoints record keep `wer`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmasr.train.progress import Progress, parse_log_line

    model = build_model(tiny_llm_dir)
    batches = [random_batch(model, targets, frames=FRAMES[: len(targets)])]
    metrics = validate(plain_engine(model), batches, DECODE)
    assert (metrics["utts_in_words"], metrics["utts_in_chars"]) == (in_words, in_chars)
    assert "wer" in metrics and "ctc_wer" in metrics
    progress = Progress(tmp_path, 0, 10, log_every=1, stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="llmasr"):
        progress.validation(5, metrics)
    progress.close()
    shown = parse_log_line(next(r.getMessage() for r in caplog.records if r.getMessage().startswith("valid update=")))
    assert shown[name] == pytest.approx(metrics["wer"], rel=1e-3)
    assert shown[f"ctc_{name}"] == pytest.approx(metrics["ctc_wer"], rel=1e-3)
    assert "utts_in_words" not in shown and (name == "wer" or "wer" not in shown)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert f"valid/{name}" in tags and f"valid/ctc_{name}" in tags
    assert name == "wer" or "valid/wer" not in tags
