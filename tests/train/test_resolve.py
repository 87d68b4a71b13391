"""The update count the schedules are sized by (the run plan), with weighted manifest mixing: read from the
sampler's exact per-epoch plans, equal to the batches the loader yields and to the updates a real training run
makes."""

import math
import re
from collections import Counter

import numpy as np
import pytest

from llmasr.data.sampler import DynamicBucketSampler
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.ds_config import resolve_ds_config
from llmasr.train.plan import plan_run
from llmasr.train.resolve import batches_per_epoch, build_loaders, rng_state, set_rng_state, text_side
from llmasr.train.trainer import train


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    return write_tiny_corpus(root / "a", n=12), write_tiny_corpus(root / "b", n=10, seed=3)


def mixed_recipe(tiny_llm_dir, corpora, run_dir, weights, **kw):
    d = tiny_recipe_dict(tiny_llm_dir, train=list(corpora), output_dir=run_dir, max_seconds=2.0, **kw)
    d["data"]["train"] = [{"path": str(p), "weight": w} for p, w in zip(corpora, weights)]
    return load_recipe(data=d)


def sampler_for(recipe):
    _, sampler, _ = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    return sampler


def yielded_per_epoch(sampler, epochs):
    counts = []
    for e in range(epochs):
        sampler.set_epoch(e)
        counts.append(sum(1 for _ in sampler))
    return counts


def test_weighted_mixing_sizes_each_epoch_by_the_batches_it_yields(tiny_llm_dir, two_corpora, tmp_path):
    epochs = 4
    plain = sampler_for(mixed_recipe(tiny_llm_dir, two_corpora, tmp_path / "r", [1.0, 1.0]))
    mixed = sampler_for(mixed_recipe(tiny_llm_dir, two_corpora, tmp_path / "r", [1.0, 2.5]))
    mixed.set_epoch(2)
    got = batches_per_epoch(mixed, epochs)
    assert mixed.epoch == 2  # counting does not move the sampler
    assert got == yielded_per_epoch(mixed, epochs)
    # 2.5 passes over the second corpus: more batches than one pass each, and the fractional part is drawn afresh
    assert min(got) > max(batches_per_epoch(plain, epochs))


def test_epochs_whose_shuffled_windows_cut_into_another_count_are_counted_each():
    """Windows of the shuffle buffer cut greedily: one epoch's shuffle can give a batch more than the first's, and
    the schedules are sized by what each epoch yields, not by the first epoch's count."""
    durations = np.random.default_rng(0).uniform(0.5, 6.0, 300)
    sampler = DynamicBucketSampler(durations, max_seconds=20, seed=0, shuffle_buffer=20, num_buckets=4)
    got = batches_per_epoch(sampler, 4)
    assert got == yielded_per_epoch(sampler, 4)
    assert len(set(got)) > 1, got  # the case this guards: epochs that differ


def test_a_mixed_run_makes_the_updates_its_plan_counted(tiny_llm_dir, two_corpora, tmp_path):
    r = mixed_recipe(tiny_llm_dir, two_corpora, tmp_path / "run", [1.0, 0.5], epochs=2, grad_accum=3)
    plan = plan_run(r, resolve_ds_config("zero0", r.train, world_size=1), rank=0, world_size=1)
    per_epoch = batches_per_epoch(sampler_for(r), 2)
    assert plan.per_epoch == per_epoch and plan.grad_accum == 3
    assert plan.total == plan.natural == sum(math.ceil(n / 3) for n in per_epoch)
    history = train(r, "zero0")["history"]
    by_epoch = Counter(h["epoch"] for h in history)
    assert [by_epoch[e] for e in range(2)] == plan.updates_per_epoch
    assert history[-1]["update"] == plan.total
    capped = plan_run(mixed_recipe(tiny_llm_dir, two_corpora, tmp_path / "r2", [1.0, 0.5], max_updates=2),
                      resolve_ds_config("zero0", r.train, world_size=1), rank=0, world_size=1)  # fmt: skip
    assert capped.total == 2 and "(train.max_updates)" in capped.update_line()


@pytest.mark.parametrize("trim", [True, False])
def test_validation_hears_its_utterances_from_where_decoding_starts_them(tiny_llm_dir, two_corpora, tmp_path, trim):
    d = tiny_recipe_dict(tiny_llm_dir, train=[two_corpora[0]], valid=[two_corpora[1]], output_dir=tmp_path / "r")
    d["decode"] = {"trim_leading_silence": trim}
    recipe = load_recipe(data=d)
    train_loader, _, valid_loader = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    assert valid_loader.dataset.trim_leading_silence is trim  # decode.trim_leading_silence
    assert train_loader.dataset.trim_leading_silence is False  # training hears its clips whole


def test_features_on_auto_follows_the_device_the_model_trains_on(tiny_llm_dir, two_corpora, tmp_path, monkeypatch):
    """auto computes features on the training device when it is an accelerator: a CPU run on a host with CUDA (the
    launcher's DS_ACCELERATOR=cpu) keeps them in the workers; it had followed torch.cuda.is_available() alone."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    d = tiny_recipe_dict(tiny_llm_dir, train=[two_corpora[0]], valid=[two_corpora[1]], output_dir=tmp_path / "r")
    recipe = load_recipe(data=d)
    assert recipe.data.features_on == "auto"
    ds = resolve_ds_config("zero0", recipe.train, world_size=1)
    for device, where in ((torch.device("cpu"), "worker"), (torch.device("cuda", 0), "device")):
        train_loader, _, valid_loader = plan_run(recipe, ds, rank=0, world_size=1, device=device).loaders
        assert train_loader.dataset.features_on == valid_loader.dataset.features_on == where, device


def test_pin_memory_follows_the_device_the_model_trains_on(tiny_llm_dir, two_corpora, tmp_path, monkeypatch):
    """data.pin_memory pins batches bound for a GPU only: a CPU run on a host with CUDA (DS_ACCELERATOR=cpu) had
    pinned them, each rank's loader creating a CUDA context on the first GPU for copies that never go there."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    d = tiny_recipe_dict(tiny_llm_dir, train=[two_corpora[0]], valid=[two_corpora[1]], output_dir=tmp_path / "r")
    d["data"]["pin_memory"] = True
    recipe = load_recipe(data=d)
    ds = resolve_ds_config("zero0", recipe.train, world_size=1)
    for device, pins in ((torch.device("cpu"), False), (torch.device("cuda", 0), True)):
        train_loader, _, valid_loader = plan_run(recipe, ds, rank=0, world_size=1, device=device).loaders
        assert train_loader.pin_memory is valid_loader.pin_memory is pins, device


def test_rng_state_touches_cuda_only_on_a_cuda_rank(monkeypatch):
    """A CPU rank on a host with CUDA (DS_ACCELERATOR=cpu) had saved and restored the CUDA generator at every
    validation and checkpoint, each call creating a CUDA context on the first GPU; a CUDA rank keeps its own
    device's generator."""
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": calls.append(("get", device)) or "gen")
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(("set", device)))
    cpu = rng_state(torch.device("cpu"))
    set_rng_state({**cpu, "cuda": "gen"}, torch.device("cpu"))  # a CUDA rank's state, resumed on a CPU rank
    assert "cuda" not in cpu and calls == []
    gpu = torch.device("cuda", 1)
    state = rng_state(gpu)
    set_rng_state(state, gpu)
    assert state["cuda"] == "gen" and calls == [("get", gpu), ("set", gpu)]


def test_a_world_size_drop_last_leaves_without_batches_is_named(tiny_llm_dir, two_corpora, tmp_path):
    """drop_last over more ranks than the epoch has batches leaves every rank none: the refusal said "every item
    filtered?" with nothing filtered."""
    from llmasr.config_io import ConfigError

    recipe = mixed_recipe(tiny_llm_dir, two_corpora[:1], tmp_path / "run", [1.0])
    recipe.data.batching.drop_last = True
    n = len(sampler_for(recipe))
    with pytest.raises(ConfigError) as err:
        build_loaders(recipe, text_side(recipe.model), rank=0, world_size=n + 1)
    assert str(err.value) == (
        f"data.train: no batch for rank 0 of {n + 1} (data.batching.drop_last left out all {n} batch(es), fewer than "
        "the ranks: set it false, or train on fewer ranks)"
    )


@pytest.mark.parametrize(
    ("precision", "dtype", "why"),
    [
        ("bf16", "float16", "rounded to float16 as they load and again to bfloat16; set model.llm.dtype bfloat16"),
        ("fp16", "bfloat16", "rounded to bfloat16 as they load and again to float16; set model.llm.dtype float16"),
        ("fp32", "float16", "runs the LLM's backward in float16 with no loss scale, so the small gradients it passes "
                            "on (model.llm.lora, model.adaptor.freeze false, model.encoder.freeze false) underflow"),
    ],
)  # fmt: skip
def test_an_llm_dtype_the_run_would_not_train_in_is_refused(tiny_llm_dir, tmp_path, precision, dtype, why):
    """model.llm.dtype a 16-bit type other than train.precision's had been accepted: DeepSpeed then cast the loaded
    weights once more (a bfloat16 load trained in fp16 differed in 98,048 of the tiny LLM's 112,704 weights from its
    float32 file cast once); a float16 LLM under fp32 precision backpropagated through float16 with no loss scale
    (the adaptor's gradient 15% off at a real run's token count, 0.5% in bfloat16)."""
    from llmasr.config_io import ConfigError
    from llmasr.train.resolve import check_run_settings

    d = tiny_recipe_dict(
        tiny_llm_dir, train=[tmp_path / "train.jsonl"], output_dir=tmp_path / "run", precision=precision
    )
    d["model"]["llm"]["dtype"] = dtype
    with pytest.raises(ConfigError) as refused:
        check_run_settings(load_recipe(data=d))
    assert str(refused.value).startswith(f"model.llm.dtype: {dtype} with train.precision {precision}")
    assert why in str(refused.value)
    for fine in ("float32", {"bf16": "bfloat16", "fp16": "float16", "fp32": "bfloat16"}[precision]):
        d["model"]["llm"]["dtype"] = fine
        check_run_settings(load_recipe(data=d))  # the training dtype itself, or float32, is what it trains


def test_a_float16_llm_under_fp32_precision_that_passes_no_gradient_on_is_fine(tiny_llm_dir, tmp_path):
    """Only the CTC head trains (no gradient runs back through the LLM): a float16 LLM there is just a forward."""
    from llmasr.train.resolve import check_run_settings

    d = tiny_recipe_dict(tiny_llm_dir, train=[tmp_path / "train.jsonl"], output_dir=tmp_path / "run", ctc_weight=0.3)
    d["model"]["llm"].update(dtype="float16", lora=None)
    d["model"]["adaptor"]["freeze"] = True
    d["model"]["encoder"]["freeze"] = True
    check_run_settings(load_recipe(data=d))


def test_a_manifest_that_is_not_there_is_named_by_its_key_and_where_it_was_set(recipe_file, tmp_path, capsys):
    """`data.train=[data/trian.jsonl]` was refused as "manifest not found: data/trian.jsonl" alone: no key, no
    override, no recipe line, and nothing on where a relative path is looked for."""
    import yaml

    from llmasr.commands.check import main

    args = ["--config", str(recipe_file), "--deepspeed", "zero0", f"train.output_dir={tmp_path / 'run'}"]
    assert main([*args, "data.valid=[dve.jsonl]"]) == 2
    err = capsys.readouterr().err
    # an override's path is read from the working directory alone (not beside the recipe, as a recipe's is)
    assert "error: data.valid[0]: manifest not found: dve.jsonl (an override's relative path is read from the " in err
    assert err.rstrip().endswith("(set by the override 'data.valid=[dve.jsonl]')")
    recipe = yaml.safe_load(recipe_file.read_text())
    recipe["data"]["train"].append({"path": str(tmp_path / "gone.jsonl"), "weight": 2.0})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["--config", str(tmp_path / "r.yaml"), *args[2:]]) == 2
    err = capsys.readouterr().err
    assert f"error: data.train[1]: manifest not found: {tmp_path / 'gone.jsonl'} ({tmp_path / 'r.yaml'}, line " in err
    assert main([*args, f"data.valid=[{tmp_path}]"]) == 2
    assert f"error: data.valid[0]: {tmp_path}: a directory, not a manifest file" in capsys.readouterr().err


def test_an_empty_manifest_of_a_mix_is_named_by_its_key_in_check_data_check_and_train(recipe_file, tmp_path, capsys):
    """An empty dialect manifest listed third in a weighted mix: `llmasr check`, `llmasr train` and `llmasr data
    check --recipe` had named its file alone, where a missing one is named by its data.train[i] key."""
    import yaml

    from llmasr.commands.check import main as check_main
    from llmasr.commands.data_check import main as data_check_main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    recipe = yaml.safe_load(recipe_file.read_text())
    recipe["data"]["train"] = [recipe["data"]["train"][0], {"path": str(empty), "weight": 2.0}]
    recipe["train"]["output_dir"] = str(tmp_path / "run")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    said = f"data.train[1]: manifest {empty}: no records (the file is empty or holds only blank lines)"
    assert check_main(["--config", str(tmp_path / "r.yaml"), "--deepspeed", "zero0"]) == 2
    assert f"error: {said}" in capsys.readouterr().err
    with pytest.raises(ValueError, match=re.escape(said)):
        train(load_recipe(tmp_path / "r.yaml"), "zero0")
    assert data_check_main(["--recipe", str(tmp_path / "r.yaml")]) != 0
    assert (
        f"error: data.train[1]: {empty}: cannot open manifest: manifest {empty}: no records" in capsys.readouterr().out
    )
    assert data_check_main([str(empty)]) != 0  # named on the command line: no recipe key to give
    assert f"error: {empty}: cannot open manifest" in capsys.readouterr().out


def test_a_prompt_setting_refused_at_build_says_where_it_was_set(recipe_file, tmp_path, capsys):
    """`model.prompt.chat_template=templ.jinja` (no such file) is refused as the builder reads it, naming the override
    that set it, as the recipe's other refusals are; the prompt's own refusals had named the key alone."""
    from llmasr.commands.check import main

    args = ["--config", str(recipe_file), "--deepspeed", "zero0", f"train.output_dir={tmp_path / 'run'}"]
    assert main([*args, "model.prompt.chat_template=templ.jinja"]) == 2
    err = capsys.readouterr().err
    assert "model.prompt.chat_template: file not found: templ.jinja" in err
    assert err.rstrip().endswith("(set by the override 'model.prompt.chat_template=templ.jinja')")


def test_the_data_s_text_side_reads_the_tokenizer_the_model_is_built_with(tiny_llm_dir, tmp_path):
    """model.llm.tokenizer (or an adapter folder's own tokenizer) is the one the model is built with; the data's
    text side, which renders the training rows' prompts, had read model.llm.path's instead, so the rows came from
    another chat template than the model decodes with."""
    from llmasr.models.builder import build_model
    from llmasr.testing.tiny_llm import CHATML_TEMPLATE, write_tiny_llm_dir

    other = write_tiny_llm_dir(tmp_path / "tok", chat_template=CHATML_TEMPLATE.replace("'\\n'", "'\\n\\n'"))
    corpus = write_tiny_corpus(tmp_path / "corpus", n=2)
    d = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run")
    d["model"]["llm"]["tokenizer"] = str(other)
    recipe = load_recipe(data=d)
    side, model = text_side(recipe.model), build_model(recipe.model)
    assert side.prompt.rendered("seven") == model.prompt.rendered("seven")
    assert "\n\n" in side.prompt.rendered("seven")  # the template of model.llm.tokenizer's folder
