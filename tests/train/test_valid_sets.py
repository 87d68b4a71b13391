"""Each data.valid manifest scored on its own beside the pool: a `valid[NAME]` line per manifest in train.log and
valid/NAME/... scalars in TensorBoard, from the same pass and all-reduce as the pool's metrics, which alone rank
checkpoints. Before, two manifests were pooled into one `valid` line and nothing told them apart."""

import pytest
import torch

from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.progress import parse_log_line
from llmasr.train.trainer import train
from llmasr.train.valid_sets import ValidSets

NAMES = ["clean/dev", "other/dev"]  # both manifests are dev.jsonl: named by their folders too


def _lines(run, label: str) -> dict[int, dict]:
    """train.log's `label update=...` lines by update."""
    found = {}
    for line in (run / "train.log").read_text(encoding="utf-8").splitlines():
        if f" {label} update=" in line:
            values = parse_log_line(line)
            found[values["update"]] = values
    return found


def _check_pass(pooled: dict, sets: list[dict]) -> None:
    """The sets' lines add up to the pool's line: items, tokens, errors over reference units, token-weighted loss."""
    assert all(s["n_utts"] > 0 for s in sets), sets  # data.valid_max_utts' subset of the pool reaches both
    assert sum(s["n_utts"] for s in sets) == pooled["n_utts"]
    assert sum(s["n_tokens"] for s in sets) == pooled["n_tokens"]
    for s in sets:
        assert s["wer"] == pytest.approx(s["errors"] / s["ref_units"], abs=1e-4)
        assert s["ctc_wer"] >= 0 and s["ctc_loss"] > 0
    errors, ref = sum(s["errors"] for s in sets), sum(s["ref_units"] for s in sets)
    assert pooled["wer"] == pytest.approx(errors / ref, abs=1e-4)
    weighted = sum(s["llm_loss"] * s["n_tokens"] for s in sets) / pooled["n_tokens"]
    assert pooled["llm_loss"] == pytest.approx(weighted, rel=1e-3)
    acc = sum(s["acc"] * s["n_tokens"] for s in sets) / pooled["n_tokens"]
    assert pooled["acc"] == pytest.approx(acc, abs=1e-3)


def test_two_valid_manifests_each_get_their_line_and_scalars(tiny_llm_dir, tmp_path):
    """A real tiny run validating on two manifests (11 lines, data.valid_max_utts 8 evenly spaced over the pool),
    then resumed for two more updates: every pass logs one line per manifest whose counts add up to the pool's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_m = write_tiny_corpus(tmp_path / "train", n=8)
    devs = [
        write_tiny_corpus(tmp_path / d, n=n, seed=s, name="dev.jsonl") for d, n, s in [("clean", 5, 1), ("other", 6, 2)]
    ]
    run = tmp_path / "run"

    def recipe(max_updates):
        data = tiny_recipe_dict(tiny_llm_dir, train=[train_m], valid=devs, output_dir=run, ctc_weight=0.3,
                                grad_accum=1, valid_every_updates=1, max_updates=max_updates, epochs=3)  # fmt: skip
        return load_recipe(data=data)

    first = train(recipe(2), "zero0")
    resumed = train(recipe(4), "zero0", resume="latest")
    pooled = _lines(run, "valid")
    by_set = [_lines(run, f"valid[{name}]") for name in NAMES]
    assert sorted(pooled) == [1, 2, 3, 4] and all(sorted(s) == sorted(pooled) for s in by_set), pooled
    for update, line in pooled.items():
        _check_pass(line, [s[update] for s in by_set])
    assert pooled[4]["wer"] == pytest.approx(resumed["metrics"]["wer"], abs=1e-4)  # the pool still ranks
    assert first["metrics"]["n_utts"] == 8 == pooled[2]["n_utts"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for name in NAMES:
        assert {f"valid/{name}/wer", f"valid/{name}/loss", f"valid/{name}/acc", f"valid/{name}/n_utts"} <= set(tags)
        assert [e.step for e in events.Scalars(f"valid/{name}/wer")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("valid/wer")] == [1, 2, 3, 4]


def test_rows_map_to_their_manifest():
    sets = ValidSets(["a", "b", "c"], [2, 0, 3])
    assert sets.of_rows([0, 1, 2, 4]).tolist() == [0, 0, 2, 2]
    with pytest.raises(ValueError, match="outside the pool of 5 lines"):
        sets.of_rows([5])


def test_by_group_sums_add_up_to_the_batch(tiny_llm_dir):
    """SpeechLLM.forward(groups=...): each group's loss, tokens, hits, CTC loss and rows; the batch's own sums as
    without groups."""
    import llmasr
    from llmasr.testing.tiny_recipe import random_batch, tiny_model_section

    torch.manual_seed(0)
    model = llmasr.build_model(tiny_model_section(tiny_llm_dir, ctc_weight=0.3)).eval()
    batch = random_batch(model, ["zero one", "two three four", "five", "six seven"], seed=3)
    with torch.no_grad():
        plain = model(batch)
        grouped = model(batch, groups=torch.tensor([1, 0, 1, 1]), n_groups=3)
        alone = [model(batch.select([1])), model(batch.select([0, 2, 3]))]
    for key in ("llm_loss_sum", "n_tokens", "n_correct", "ctc_loss_sum"):
        assert torch.equal(grouped[key], plain[key])
    g = grouped.by_group
    assert g[2].tolist() == [0.0] * 5
    assert g[:, 4].tolist() == [1.0, 3.0, 0.0]
    for row, out in zip(g[:2], alone):
        assert row[0] == pytest.approx(float(out.llm_loss_sum), rel=1e-4)
        assert row[1:3].tolist() == [float(out.n_tokens), float(out.n_correct)]
        assert row[3] == pytest.approx(float(out.ctc_loss_sum), rel=1e-4)
