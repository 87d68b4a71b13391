"""`llmasr check`: the numbers it prints are the trainer's (batches, updates, lr curves, batch budget, world size,
memory by ZeRO stage and dtype), and the curves it writes beside a run leave the run's own."""

import json
import math
import re

import numpy as np
import pytest
import torch
from check_runner import run_check

import llmasr
from llmasr.commands.check import main


def test_report_matches_the_trainer_numbers(recipe_file, tmp_path, capsys):
    from llmasr.recipe import load_recipe
    from llmasr.train.resolve import build_loaders, text_side
    from llmasr.train.schedulers import BranchLRScheduler, branch_of_group, build_group_schedules, lr_curve

    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--world-size", "2",
                               "--out", str(tmp_path))  # fmt: skip
    assert code == 0, err
    recipe = load_recipe(recipe_file)
    _, sampler, _ = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=2)
    per_epoch = len(sampler)
    updates = math.ceil(per_epoch / 2) * 3
    assert "gradient accumulation: 2" in out and "world size: 2" in out and "train_batch_size: 4" in out
    assert f"batches per rank per epoch: {per_epoch}\n" in out
    assert f"= {updates}; schedules sized by {updates}" in out
    assert "warning: optim:" not in out
    long_warmup = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path / "w"),
                            "optim.scheduler.warmup_steps=25000")  # fmt: skip
    assert long_warmup[0] == 0, long_warmup[2]
    assert "warning: optim: the llm branch warms up over 25000 updates, but the run has" in long_warmup[1]
    model = llmasr.build_model(recipe.model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert f"total {total:,}; trainable {trainable:,}" in out
    # numbered from 1, as train.log: warmup_steps 2 peaks at update 2 (it had been labelled update 3)
    assert "update 1 (start)" in out and "update 2 (warmup end" in out and f"update {updates} (last)" in out
    assert "ZeRO stage 2" in out and "on the device:" in out

    names = ["encoder", "encoder_no_decay", "adaptor", "adaptor_no_decay", "ctc", "ctc_no_decay", "llm"]
    csv = np.genfromtxt(tmp_path / "lr_schedule.csv", delimiter=",", names=True)
    assert list(csv.dtype.names) == ["update", *names]
    want = lr_curve(recipe.optim, names, updates)
    assert len(csv) == updates and list(csv["update"]) == list(range(1, updates + 1))
    for name in names:
        np.testing.assert_allclose(csv[name], want[name], rtol=1e-12)
    line = re.search(r"update 2 \(warmup end[^\n]*\n(?:.*\n)*?\s+llm\s+(\S+)", out)
    assert float(line.group(1)) == pytest.approx(want["llm"][1], rel=1e-4)
    # the trainer's scheduler, stepped: the labelled update is the first whose lr is the peak
    groups = [
        {"name": n, "branch": branch_of_group(n), "lr": recipe.optim.branch(branch_of_group(n)).lr} for n in names
    ]
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1)], "name": g["name"], "lr": 0.0} for g in groups])
    scheduler = BranchLRScheduler(optimizer, build_group_schedules(groups, recipe.optim, updates))
    used = []  # the llm group's lr each update runs with, from update 1
    for _ in range(updates):
        used.append(next(g["lr"] for g in optimizer.param_groups if g["name"] == "llm"))
        scheduler.step()
    peak = recipe.optim.branch("llm").lr
    first_peak = next(u for u, lr in enumerate(used, 1) if lr == pytest.approx(peak, rel=1e-12))
    assert first_peak == 2 and f"update {first_peak} (warmup end" in out
    png = (tmp_path / "lr_schedule.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_the_batch_budget_says_what_augmentation_reserves(recipe_file, tmp_path, capsys):
    from llmasr.recipe import load_recipe
    from llmasr.train.resolve import batches_per_epoch, build_loaders, text_side

    pauses = ["data.augment.silence.enable=true", "data.augment.silence.lead=[0.0,0.3]",
              "data.augment.silence.trail=[0.0,0.1]", "data.augment.speed_perturb.enable=true"]  # fmt: skip
    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--world-size", "1", "--out", str(tmp_path)]
    code, out, err = run_check(capsys, *base, *pauses)
    assert code == 0, err
    assert (
        "an utterance costs the budget its length after this epoch's speed factor and pauses; at most its duration "
        "x 1.11 + 0.4 s (data.augment" in out
    )
    recipe = load_recipe(recipe_file, pauses)
    _, sampler, _ = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    per_epoch = batches_per_epoch(sampler, recipe.train.epochs)
    shown = per_epoch[0] if len(set(per_epoch)) == 1 else per_epoch
    assert f"batches per rank per epoch: {shown}\n" in out  # the trainer's batches, each clip at its drawn length
    assert "fit the budget only at some" not in out  # the recipe's clips fit at every draw
    tight = [*pauses, "data.augment.silence.lead=[0.0,6.0]", "data.augment.silence.prob=1.0"]
    code, out, err = run_check(capsys, *base, *tight)
    assert code == 0, err
    sometimes = re.search(r"\n  (\d+) utterance\(s\) fit the budget only at some of these lengths: an epoch skips", out)
    assert sometimes and int(sometimes.group(1)) > 0, out
    code, plain, _ = run_check(capsys, *base)
    assert "costs the budget" not in plain and int(re.search(r"per epoch: (\d+)", plain).group(1)) < min(per_epoch)


def test_the_llm_budget_is_reported_with_the_padded_llm_positions_of_the_batches(recipe_file, tmp_path, capsys):
    """data.batching.max_llm_tokens: the report gives the padded LLM positions (B x longest row) of the trainer's
    batches against the budget, and the budget makes batches of fewer utterances than max_seconds alone."""
    from llmasr.recipe import load_recipe
    from llmasr.train.resolve import build_loaders, text_side

    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--world-size", "1", "--out", str(tmp_path)]
    code, plain, err = run_check(capsys, *base)
    assert code == 0, err
    assert "LLM positions" not in plain  # off by default
    budget = ["data.batching.max_llm_tokens=120"]
    code, out, err = run_check(capsys, *base, *budget)
    assert code == 0, err
    recipe = load_recipe(recipe_file, budget)
    _, sampler, _ = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    batches = sampler.batches(0)
    padded = [len(b) * int(sampler.llm_lens[b].max()) for b in batches]
    longest = max(int(sampler.llm_lens[b].max()) for b in batches)
    assert max(padded) <= 120
    assert (
        f"  LLM positions per batch (B x longest row): at most {max(padded)}, mean {np.mean(padded):.1f}, of "
        f"data.batching.max_llm_tokens 120; longest row {longest} (audio tokens at the longest the clip is heard, "
        "prompt and transcript bound)\n" in out
    ), out

    def mean_batch(report: str) -> float:
        return float(re.search(r"mean utterances per batch: ([\d.]+)", report).group(1))

    assert mean_batch(out) == pytest.approx(np.mean([len(b) for b in batches]), abs=0.005)
    assert mean_batch(out) < mean_batch(plain)


def test_the_llm_sequences_of_each_adaptor_are_reported_and_ctc_compression_is_said_to_be_uncounted(
    recipe_file, tmp_path, capsys
):
    """Without data.batching.max_llm_tokens the report said nothing of the LLM sequences a recipe makes, and a
    ctc_compress recipe, chosen to shorten them, showed no sign that its counts leave the compression out: it gives
    the audio tokens of 10 s and each data set's line of the most audio tokens, through the recipe's adaptor."""
    from llmasr.models.builder import build_model
    from llmasr.models.context import audio_tokens
    from llmasr.recipe import load_recipe

    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--world-size", "1", "--out", str(tmp_path)]
    qformer = ["model.adaptor.type=qformer", "model.adaptor.n_layer=1", "model.adaptor.n_head=4",
               "model.adaptor.num_queries=3", "model.adaptor.downsample=3"]  # fmt: skip
    capped = ["model.adaptor.audio_token_cap=funasr_nano"]
    for overrides in ([], qformer, ["model.adaptor.ctc_compress=avg_no_blank"], capped):
        code, out, err = run_check(capsys, *base, *overrides)
        assert code == 0, err
        recipe = load_recipe(recipe_file, overrides)
        a = recipe.model.adaptor
        ten = audio_tokens(build_model(recipe.model, weights="meta"), 10.0)
        through = f"the encoder's frames through the {a.type} adaptor, downsample {a.downsample}" + (
            ", capped: funasr_nano" if overrides == capped else ""
        )
        assert f"LLM sequences\n  audio tokens: {ten} for 10 s of audio ({through})\n" in out, out
        for name in ("data.train", "data.valid"):
            row = re.search(rf"  {name}: most audio tokens (\d+) \(.*:\d+, heard as [\d.]+ s\), with its (\d+) prompt "
                            r"and transcript tokens (\d+) of the LLM's context of (\d+)\n", out)  # fmt: skip
            assert row and int(row[1]) + int(row[2]) == int(row[3]) and int(row[4]) > 0, out
        said = "model.adaptor.ctc_compress avg_no_blank: the adaptor reads the encoder frames averaged over the CTC"
        assert (said in out) == (a.ctc_compress != "none")
        assert "the audio tokens above are without it, the most an utterance gives" in out or a.ctc_compress == "none"


def test_the_decode_budget_is_reported_with_the_llm_positions_of_decodings_batches(recipe_file, tmp_path, capsys):
    """decode.max_llm_tokens: the report gives the LLM positions `llmasr decode` batches of data.valid hold under
    the recipe's decode section (B x beams x (prompt and audio tokens + new tokens)), and names an utterance past it
    alone."""
    from llmasr.export.decode import DecodeOptions, decode_loader
    from llmasr.recipe import load_recipe

    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--world-size", "1", "--out", str(tmp_path)]
    code, plain, err = run_check(capsys, *base)
    assert code == 0, err
    assert "decode.max_llm_tokens" not in plain  # off by default
    budget = ["decode.max_llm_tokens=150", "decode.max_new_tokens=20", "decode.max_window_seconds=0"]
    code, out, err = run_check(capsys, *base, *budget)
    assert code == 0, err
    recipe = load_recipe(recipe_file, budget)
    torch.manual_seed(0)
    model = llmasr.build_model(recipe.model)
    loader = decode_loader(model, recipe.data.valid[0].path, recipe.decode, DecodeOptions(num_workers=0))
    inputs, new = loader.llm_rows
    held = [len(b) * int(inputs[b].max() + new[b].max()) for b in loader.batch_sampler]
    line = (
        f"  decode.max_llm_tokens 150: data.valid as `llmasr decode` batches it (batch_seconds "
        f"{recipe.decode.batch_seconds:g}, utterances whole): {len(held)} batches; LLM positions per batch (B x beams "
        f"x (prompt and audio tokens + new tokens)) at most {max(held)}, mean {np.mean(held):.1f}; longest row "
        f"{int((inputs + new).max())}\n"
    )
    assert line in out, out
    assert len(held) > 1 and max(held) <= 150
    code, out, err = run_check(capsys, *base, "decode.max_llm_tokens=30", *budget[1:])
    assert code == 0, err
    where = recipe.data.valid[0].path
    assert (
        f"utterance(s) past decode.max_llm_tokens alone, each decoded in a batch of its own (e.g. {where} line 1, "
        in out
    )


def test_a_recipe_s_max_new_tokens_0_is_the_cap_by_duration_as_the_flag_s_is(recipe_file, tmp_path, capsys):
    """`--max-new-tokens 0` means the cap by duration; a recipe's `decode.max_new_tokens: 0` had been refused ("must
    be >= 1 (or unset: by duration)"). The check now previews decode's batches as with the key unset (their new
    tokens by duration), and a negative cap is refused naming the key."""
    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--world-size", "1", "--out", str(tmp_path)]
    budget = ["decode.max_llm_tokens=150", "decode.max_window_seconds=0"]
    previews = {}
    for cap in ("null", "6", "0"):  # the tiny recipe's own cap is 6
        code, out, err = run_check(capsys, *base, *budget, f"decode.max_new_tokens={cap}")
        assert code == 0, err
        previews[cap] = [line for line in out.splitlines() if "decode.max_llm_tokens 150" in line]
    assert previews["0"] == previews["null"] != previews["6"] and previews["0"]
    code, _, err = run_check(capsys, *base, "decode.max_new_tokens=-2")
    assert code == 2
    assert (
        "decode.max_new_tokens: must be >= 1, or 0 for the cap by duration (tokens_per_second x seconds + 8), got -2 "
        "(set by the override 'decode.max_new_tokens=-2')"
    ) in err


def test_the_check_says_the_ctc_gate_empties_validation_too_and_refuses_it_without_a_head(recipe_file, tmp_path,
                                                                                        capsys):  # fmt: skip
    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--world-size", "1", "--out", str(tmp_path)]
    code, out, err = run_check(capsys, *base, "model.ctc.weight=0.3", "decode.ctc_gate=true")
    assert code == 0, err
    assert "  decode.ctc_gate: validation and decoding leave empty what the CTC head hears no word in" in out
    code, out, _ = run_check(capsys, *base, "model.ctc.weight=0.3")
    assert code == 0 and "ctc_gate" not in out
    code, _, err = run_check(capsys, *base, "model.ctc.weight=0", "decode.ctc_gate=true")
    assert code == 2 and "decode.ctc_gate: the gate reads the CTC head's best path, and this recipe trains none" in err


def test_the_decode_budget_is_previewed_on_each_manifest_of_data_valid_as_decode_batches_it(
    tiny_llm_dir, tmp_path, capsys
):
    """data.valid of two manifests: `llmasr decode` batches each alone, and the report gives each its batches and
    names the file of an utterance past the budget alone. The check had previewed the two as one and, with an
    utterance past the budget, failed (AttributeError: 'MixedManifest' object has no attribute 'lineno')."""
    import yaml

    from llmasr.export.decode import DecodeOptions, decode_loader
    from llmasr.recipe import load_recipe
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus

    train_m = write_tiny_corpus(tmp_path / "train", n=20)
    dev = [write_tiny_corpus(tmp_path / "deva", n=4, seed=1), write_tiny_corpus(tmp_path / "devb", n=3, seed=2)]
    data = tiny_recipe_dict(tiny_llm_dir, train=[train_m], valid=dev, output_dir=tmp_path / "run", epochs=1)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data))
    base = ["--config", str(tmp_path / "recipe.yaml"), "--deepspeed", "zero2", "--world-size", "1"]
    budget = ["decode.max_llm_tokens=30", "decode.max_new_tokens=20", "decode.max_window_seconds=0"]
    code, out, err = run_check(capsys, *base, "--out", str(tmp_path / "o"), *budget)
    assert code == 0, err
    recipe = load_recipe(tmp_path / "recipe.yaml", budget)
    torch.manual_seed(0)
    model = llmasr.build_model(recipe.model)
    for path in dev:
        loader = decode_loader(model, path, recipe.decode, DecodeOptions(num_workers=0))
        assert (
            f"  decode.max_llm_tokens 30: data.valid {path} as `llmasr decode` batches it (batch_seconds 120, "
            f"utterances whole): {len(loader.batch_sampler)} batches;" in out
        ), out
        first = loader.over_llm_budget[0]
        assert (
            f"utterance(s) past decode.max_llm_tokens alone, each decoded in a batch of its own (e.g. {path} line "
            f"{first['line']}, key {first['key']}: {first['positions']})" in out
        ), out


def test_a_max_updates_beyond_the_epochs_shows_where_the_run_stops(recipe_file, tmp_path, capsys):
    """The schedules are sized by train.max_updates, but the trainer stops when the epochs end: the report had
    labelled the schedule's last update the run's last, an update the run never reaches."""
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path),
                               "train.max_updates=400")  # fmt: skip
    assert code == 0, err
    held = int(re.search(r"x 3 epochs = (\d+); schedules sized by 400", out).group(1))
    assert held < 400 and f"update {held} (last)" in out and "update 400" not in out
    assert f"warning: train.max_updates 400 sizes the schedules, but the epochs end after update {held}" in out


def test_early_stopping_is_reported_and_a_patience_the_run_cannot_reach_is_warned(recipe_file, tmp_path, capsys):
    """3 epochs validated at their ends: patience 2 can stop the run (3 validations), patience 3 never can."""
    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path)]
    code, out, err = run_check(capsys, *base, "train.patience=2", "train.min_delta=0.01")
    assert code == 0, err
    assert (
        "early stopping: after 2 validation(s) in a row without a better valid loss (by more than 0.01); the run "
        "validates 3 time(s)"
        in out
        and "never stops early" not in out
    )
    code, out, err = run_check(capsys, *base, "train.patience=3")
    assert "warning: train.patience 3 needs 4 validations and the run holds 3: it never stops early" in out
    per_epoch = int(re.search(r"per epoch: (\d+) x 3 epochs", out).group(1))
    code, out, err = run_check(capsys, *base, "train.patience=3", "train.valid_every_updates=1")
    assert "never stops early" not in out and f"validates {3 * per_epoch} time(s)" in out


def test_memory_estimate_follows_the_zero_stage(recipe_file, tmp_path, capsys):
    def device_line(preset):
        code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", preset, "--world-size", "4",
                                   "--out", str(tmp_path))  # fmt: skip
        assert code == 0, err
        return re.search(r"on the device: ([\d.]+) (\w+)", out).groups()

    sizes = {p: device_line(p) for p in ("zero0", "zero2", "zero3")}
    assert all(unit == "MiB" for _, unit in sizes.values())
    assert float(sizes["zero0"][0]) > float(sizes["zero2"][0]) > float(sizes["zero3"][0])


def test_bf16_optimizer_states_are_counted_at_two_bytes(recipe_file, tmp_path, capsys):
    from llmasr.train.checkpoint_space import size_text
    from llmasr.train.ds_config import load_ds_config

    ds = load_ds_config("zero2_offload")
    ds["bf16"].update(bf16_master_weights_and_grads=True, bf16_optimizer_states=True)
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", str(tmp_path / "ds.json"),
                               "--out", str(tmp_path), "train.precision=bf16")  # fmt: skip
    assert code == 0, err
    trainable = int(re.search(r"trainable ([\d,]+);", out).group(1).replace(",", ""))
    # one rank: bf16 master weights, their gradients and two bf16 moments offloaded; those and the bf16 weights saved
    assert f"offloaded to CPU: {size_text(8 * trainable)}" in out
    assert f"about {size_text(8 * trainable)} a checkpoint" in out


def test_a_run_folder_keeps_its_own_lr_schedule(recipe_file, capsys):
    """Without --out the curves go to the run directory, but once it holds a run (its recipe.yaml) they go to its
    check/ folder: the run's lr_schedule.* record what it trained with and a check beside it must not overwrite them."""
    run = recipe_file.parent / "run"
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2")
    assert code == 0, err
    assert (run / "lr_schedule.csv").is_file() and f"wrote {run / 'lr_schedule.csv'}" in out
    (run / "recipe.yaml").write_text("# a run started here\n")
    (run / "ds_config.json").write_text("{}\n")  # a run writes both first
    (run / "lr_schedule.csv").write_text("the run's own\n")
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "train.epochs=9")
    assert code == 0, err
    assert (run / "lr_schedule.csv").read_text() == "the run's own\n"
    assert (run / "check" / "lr_schedule.csv").is_file() and f"wrote {run / 'check' / 'lr_schedule.csv'}" in out


def test_world_size_from_the_environment_is_read_only_when_not_given(recipe_file, monkeypatch, capsys):
    """WORLD_SIZE set to something that is not a number had broken even `llmasr check --help` (read while building
    the parser); it is named when used, and --world-size goes first."""
    monkeypatch.setenv("WORLD_SIZE", "abc")
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "default: $WORLD_SIZE, else 1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--config", str(recipe_file), "--deepspeed", "zero2"])
    assert (
        "WORLD_SIZE='abc' in the environment is not a number of ranks; pass --world-size N" in capsys.readouterr().err
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out, _ = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2")
    assert code == 0 and "world size: 2" in out


def test_under_a_launcher_rank_0_alone_reports_and_writes_the_curves(recipe_file, tmp_path, monkeypatch, capsys):
    """`deepspeed --num_gpus 2 --module llmasr check ...` had run the whole check on each rank: the report printed
    once a rank (8 times, interleaved, on a node of 8) and every rank writing lr_schedule.csv/png into one folder.
    Rank 0 checks for the launcher's world size; the others stop at once, silent."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path))
    assert (code, out, err) == (0, "", "") and not list(tmp_path.iterdir())
    monkeypatch.setenv("RANK", "0")
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path))
    assert code == 0, err
    assert "world size: 2" in out and (tmp_path / "lr_schedule.csv").is_file()


def test_what_drop_last_leaves_out_is_said(recipe_file, tmp_path, capsys):
    """data.batching.drop_last at a world size that does not divide the batches leaves some out of each epoch: check
    had said "items kept 20 of 20; skipped: none" and nothing of them. The count is the trainer's sampler's."""
    from llmasr.recipe import load_recipe
    from llmasr.train.resolve import build_loaders, text_side

    argv = ["--config", str(recipe_file), "--deepspeed", "zero2", "--world-size", "2", "--out", str(tmp_path),
            "data.batching.drop_last=true"]  # fmt: skip
    code, out, err = run_check(capsys, *argv)
    assert code == 0, err
    recipe = load_recipe(recipe_file, ["data.batching.drop_last=true"])
    st = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=2)[1].stats()
    trained = round(st["mean_batch_size"] * st["num_real_batches"])
    assert st["dropped_batches"] and trained < st["kept_items"]  # the case: some are left out
    assert st["num_real_items"] == trained  # the sampler's own count of the utterances its batches train
    assert (
        f"left out by data.batching.drop_last: {st['dropped_batches']} batch(es), {st['kept_items'] - trained} "
        "utterance(s) of this epoch (drawn anew each epoch)" in out
    )


def test_the_validation_subset_of_valid_max_utts_is_said(recipe_file, tmp_path, capsys):
    """data.valid_max_utts validates on an evenly spaced subset: train.log said "3 of 4 items (... 1 left out)",
    check only "validation: 1 batches per rank", the lines left out unsaid."""
    argv = ["--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path)]
    code, out, err = run_check(capsys, *argv, "data.valid_max_utts=3")
    assert code == 0, err
    assert "batches per rank, 3 of 4 items (data.valid_max_utts 3, evenly spaced: 1 left out)\n" in out
    code, out, err = run_check(capsys, *argv)
    assert code == 0, err
    assert re.search(r"  validation: \d+ batches per rank, 4 items\n", out)


def test_memory_counts_a_frozen_bf16_llm_at_two_bytes_a_weight_under_fp32(recipe_file, tmp_path, capsys):
    """train.precision fp32 keeps each weight in the dtype it was built in: a frozen bf16 LLM's weights take 2 bytes
    each (they had been counted at 4, the LLM's memory doubled)."""
    from llmasr.recipe import load_recipe
    from llmasr.train.checkpoint_space import size_text

    overrides = ["model.llm.dtype=bfloat16", "train.precision=fp32"]
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero0", "--out", str(tmp_path),
                               *overrides)  # fmt: skip
    assert code == 0, err
    model = llmasr.build_model(load_recipe(recipe_file, overrides).model)
    assert {p.dtype for p in model.llm.parameters() if not p.requires_grad} == {torch.bfloat16}
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weights < 4 * sum(p.numel() for p in model.parameters())
    assert f"  params {size_text(weights)}, grads" in out


def test_settings_for_a_frozen_branch_are_named_in_the_report(recipe_file, tmp_path, capsys):
    """optim.branches.encoder.lr kept while one override freezes the encoder changes nothing: the report says so
    (it had said nothing, and neither had train.log)."""
    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path)]
    code, out, err = run_check(capsys, *base, "model.encoder.freeze=true")
    assert code == 0, err
    assert "  warning: optim.branches.encoder: sets lr, but the encoder branch trains nothing (frozen (0 of " in out
    code, out, err = run_check(capsys, *base)
    assert code == 0 and "optim.branches" not in out, err


def test_ctc_settings_a_weight_of_0_leaves_unread_are_named_in_the_report(recipe_file, tmp_path, capsys):
    """model.ctc.weight 0 builds no head: a label_smoothing set beside it (or a vocabulary, an init_from) trained
    nothing and was said nowhere."""
    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path), "model.ctc.weight=0"]
    code, out, err = run_check(capsys, *base, "model.ctc.label_smoothing=0.1")
    assert code == 0, err
    said = "  warning: model.ctc.weight is 0, so no CTC head is built and model.ctc.label_smoothing is not read; "
    assert said in out
    code, out, err = run_check(capsys, *base)
    assert code == 0 and "no CTC head is built" not in out, err


def test_many_padding_batches_are_warned_and_not_counted_in_the_mean_batch(recipe_file, tmp_path, capsys):
    """Over 8 ranks the tiny corpus's few batches are padded with repeats to a whole group: the report's mean had
    counted the repeats, and nothing warned that they are a large share of what the ranks train."""
    from llmasr.recipe import load_recipe
    from llmasr.train.resolve import build_loaders, text_side

    recipe = load_recipe(recipe_file)
    sampler = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=8)[1]
    st, slots = sampler.stats(0), len(sampler) * 8
    real = slots - st["num_padding_batches"]
    assert st["num_padding_batches"] / slots > 0.1  # the case under test
    assert len({tuple(b) for r in range(8) for b in sampler.batches(0, r)}) == real  # a repeat is a batch of a rank
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--world-size", "8",
                               "--out", str(tmp_path))  # fmt: skip
    assert code == 0, err
    assert f"mean utterances per batch: {st['kept_items'] / real:.2f} (padding duplicates not counted);" in out
    want = f"  warning: {real} batches over 8 ranks: {st['num_padding_batches']} of the {slots} rank-batches ("
    assert want in out and "are padding duplicates" in out
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path))
    assert code == 0 and "padding duplicates, batches trained again" not in out, err


def test_check_does_not_pass_on_torch_s_warning_of_more_workers_than_this_machine_has(recipe_file, tmp_path, capsys):
    """data.num_workers is for the training machine; check, which starts no worker, had printed torch's "This
    DataLoader will create N worker processes" warning on a smaller one. Training's loader still warns."""
    import os
    import warnings

    from llmasr.recipe import load_recipe
    from llmasr.train.resolve import build_loaders, text_side

    workers = f"data.num_workers={len(os.sched_getaffinity(0)) + 1}"
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        code, _, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path),
                                 workers)  # fmt: skip
    assert code == 0, err
    assert [str(w.message) for w in got if "worker processes" in str(w.message)] == []
    recipe = load_recipe(recipe_file, [workers])
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    assert any("worker processes in total" in str(w.message) for w in got)


def test_a_precision_this_machine_cannot_run_passes_check_with_a_note(recipe_file, tmp_path, capsys, monkeypatch):
    """`llmasr check` passed train.precision fp16 on a machine whose accelerator lacks it and `llmasr train` then
    refused it: check still passes (it checks for the cluster) and says what train would do here. Whether fp16 runs
    is the accelerator's answer (DeepSpeed's CPU accelerator has it on CPUs with AVX512-FP16), so the test asks for a
    machine without it, then for the machine as it is."""
    from deepspeed.accelerator import get_accelerator

    from llmasr.commands.train import main as train_main

    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path)]
    supported = get_accelerator().is_fp16_supported()
    code, out, err = run_check(capsys, *base, "train.precision=fp16")
    assert code == 0, err
    assert ("would refuse fp16" in out) is not supported
    monkeypatch.setattr(get_accelerator(), "is_fp16_supported", lambda: False)
    code, out, err = run_check(capsys, *base, "train.precision=fp16")
    assert code == 0, err
    device = "its accelerator" if torch.cuda.is_available() else "no CUDA device"
    note = f"note: on this machine `llmasr train` would refuse fp16 ({device}): "
    assert note in out
    refused = out.split(note, 1)[1].splitlines()[0]
    assert train_main(["--config", str(recipe_file), "--deepspeed", "zero2", "train.precision=fp16"]) == 2
    assert refused in capsys.readouterr().err  # train's own words
    code, out, _ = run_check(capsys, *base)
    assert code == 0 and "would refuse" not in out


def test_the_checkpoint_lines_say_which_saves_best_k_ranks(recipe_file, tmp_path, capsys):
    """best.json ranks only the saves at validation updates (each validation saves, to be ranked); a save every
    save_every_updates at no validation has no metrics. The check had said neither, nor that a run without data.valid
    ranks nothing. What it says is what the trainer does: a real run's best.json holds the validation updates."""
    from llmasr.config_io import dump_yaml, to_dict
    from llmasr.run_dir import read_best, read_meta
    from llmasr.testing.run_dirs import model_section, train_run
    from llmasr.testing.tiny_corpus import write_tiny_corpus
    from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path / "o")]
    code, out, err = run_check(capsys, *base, "data.valid=[]", "train.best_k=2")
    assert code == 0, err
    assert (
        "  warning: train.best_k 2 ranks saves by their valid loss, but data.valid names no manifest: no save is "
        "validated, none is ranked"
    ) in out
    code, out, err = run_check(capsys, *base, "data.valid=[]")  # the default best_k: a note, not a warning
    assert code == 0, err
    assert "\n  train.best_k 1 ranks saves by their valid loss, but data.valid names no manifest" in out
    code, out, err = run_check(capsys, *base, "data.valid=[]", "train.best_k=0")
    assert code == 0 and "best_k" not in out, err
    code, out, err = run_check(capsys, *base, "train.best_metric=acc", "train.valid_every_updates=2",
                               "train.save_every_updates=4")  # fmt: skip
    assert code == 0, err
    assert "  train.best_k 1 keeps the best by valid acc (higher is better) of the saves at validation updates" in out
    assert "never ranked" not in out  # every save every 4 updates is at a validation

    llm, enc = write_tiny_llm_dir(tmp_path / "llm"), write_funasr_dir(tmp_path / "enc", encoder_conf=tiny_sanm_conf())
    corpus = write_tiny_corpus(tmp_path / "corpus", n=16)
    run = train_run(tmp_path / "run", model_section(llm, enc), corpus, preset="zero2", updates=6, valid=corpus,
                    save_every_updates=3, valid_every_updates=2, keep_last=0, best_k=10)  # fmt: skip
    dump_yaml(to_dict(run.recipe), tmp_path / "recipe.yaml")
    code, out, err = run_check(capsys, "--config", str(tmp_path / "recipe.yaml"), "--deepspeed", "zero2", "--out",
                               str(tmp_path / "o2"), f"train.output_dir={tmp_path / 'again'}")  # fmt: skip
    assert code == 0, err
    assert (
        "  train.best_k 10 keeps the best by valid loss (lower is better) of the saves at validation updates only: "
        "the run's 3 validation(s), every 2 updates and at each epoch's end; its 1 save(s) every 3 updates at no "
        "validation (update 3) have no metrics and are never ranked (train.keep_last rotates them)\n"
    ) in out
    ckpts = run.run_dir / "checkpoints"
    assert sorted(read_meta(ckpts / e["tag"]).update for e in read_best(ckpts)) == [2, 4, 6]
    assert not read_meta(ckpts / "update_00000003").metrics  # no validation at update 3: nothing to rank it by


def test_out_at_a_run_folder_is_refused_before_it_overwrites_the_run_s_curves(recipe_file, capsys):
    """--out had bypassed the check/ rule above: `--out RUN` wrote over the lr_schedule.csv the run had trained with."""
    run = recipe_file.parent / "run"
    run.mkdir(exist_ok=True)
    (run / "recipe.yaml").write_text("# a run started here\n")
    (run / "ds_config.json").write_text("{}\n")
    (run / "lr_schedule.csv").write_text("the run's own\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(run)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"--out {run} holds a run (recipe.yaml, ds_config.json)" in err and f"such as {run / 'check'}" in err
    assert (run / "lr_schedule.csv").read_text() == "the run's own\n"
    code, out, err = run_check(
        capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(run / "check")
    )
    assert code == 0, err
    assert (run / "check" / "lr_schedule.csv").is_file() and (run / "lr_schedule.csv").read_text() == "the run's own\n"
    # a folder holding a recipe named recipe.yaml is no run: its own check writes the curves beside it
    mine = recipe_file.parent / "mine"
    mine.mkdir()
    (mine / "recipe.yaml").write_text(recipe_file.read_text())
    code, out, err = run_check(
        capsys, "--config", str(mine / "recipe.yaml"), "--deepspeed", "zero2", "--out", str(mine)
    )
    assert code == 0, err
    assert (mine / "lr_schedule.csv").is_file()


def test_a_branch_with_lora_says_how_much_of_what_trains_is_the_adapters(recipe_file, tmp_path, capsys):
    """A branch under LoRA splits its trainable count into the adapters and its own weights, so freeze: false beside
    lora (the whole base trains too) and lora.bias (the base's biases train) read from the report; the count alone had
    looked the same for either."""
    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path)]
    encoder_lora = "model.encoder.lora={r: 2, target_modules: [linear_q_k_v]}"
    code, out, err = run_check(
        capsys, *base, "model.llm.lora.bias=lora_only", encoder_lora, "model.encoder.freeze=true"
    )
    assert code == 0, err
    from llmasr.models.config import LoraConfig
    from llmasr.recipe import load_recipe

    recipe = load_recipe(recipe_file)
    recipe.model.llm.lora.bias = "lora_only"
    recipe.model.encoder.lora = LoraConfig(r=2, target_modules=["linear_q_k_v"])
    recipe.model.encoder.freeze = True
    model = llmasr.build_model(recipe.model)
    for branch in ("encoder", "llm"):
        params = [(n, p.numel()) for n, p in getattr(model, branch).named_parameters() if p.requires_grad]
        lora, own = sum(k for n, k in params if "lora_" in n), sum(k for n, k in params if "lora_" not in n)
        assert lora and (own > 0) is (branch == "llm")
        layers = {"encoder": 2, "llm": 4}[branch]  # linear_q_k_v of each SAN-M block; q_proj, v_proj of 2 layers
        split = f"{lora:,} in LoRA adapters on {layers} linear layers, {own:,} of the branch's own"
        assert f"({lora + own:,} trainable: {split})" in out
    assert re.search(r"  adaptor: [\d,]+ \([\d,]+ trainable\)\n", out)  # no LoRA, nothing to split

    code, out, err = run_check(capsys, *base, "model.llm.freeze=false")
    assert code == 0, err
    llm = llmasr.build_model(load_recipe(recipe_file).model).llm
    own = sum(p.numel() for n, p in llm.named_parameters() if "lora_" not in n)
    assert re.search(
        rf"  llm: [\d,]+ \([\d,]+ trainable: [\d,]+ in LoRA adapters on 4 linear layers, {own:,} of the branch's "
        r"own\)",
        out,
    )


def test_the_report_says_how_many_layers_a_lora_regex_reached(recipe_file, tmp_path, capsys):
    """A regex target_modules reaches what it matches, which a reader cannot count from the recipe: the report says
    how many layers took LoRA before any run does."""
    base = ["--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path)]
    code, out, err = run_check(capsys, *base, r"model.llm.lora.target_modules=.*layers\.1\.self_attn\.(q_proj|v_proj)")
    assert code == 0, err
    assert re.search(
        r"  llm: [\d,]+ \(([\d,]+) trainable: \1 in LoRA adapters on 2 linear layers, 0 of the branch's own\)", out
    )
