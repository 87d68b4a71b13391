"""An LLM directory's weight files (llmasr.models.llm_files): present, readable, not Git LFS pointers, and holding
every weight of the model its config.json describes, checked from headers alone by `llmasr check`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmasr.models.llm import load_llm
from llmasr.models.llm_files import LLMWeightsError, check_llm_weights
from llmasr.models.state_dict import CheckpointMismatchError, torch_load
from llmasr.testing.tiny_llm import write_tiny_llm_dir

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:0123abcd\nsize 1234567\n"


@pytest.fixture(scope="module")
def llm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_files")
    return {
        "untied": write_tiny_llm_dir(root / "untied"),
        "tied": write_tiny_llm_dir(root / "tied", tie_word_embeddings=True),
    }


def copy_of(src, tmp_path):
    return shutil.copytree(src, tmp_path / src.name)


def check(path):
    """What `llmasr check` does with the LLM: build it from config.json on the meta device, check its files."""
    with torch.device("meta"):
        return load_llm(path, pretrained=False, shapes_only=True)[0]


@pytest.mark.parametrize("kind", ["untied", "tied"])
def test_a_directory_saved_by_transformers_passes(llm_dirs, kind):
    model = check(llm_dirs[kind])
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_a_missing_or_partial_download_is_named(llm_dirs, tmp_path):
    d = copy_of(llm_dirs["untied"], tmp_path)
    (d / "model.safetensors").unlink()
    for load in (check, lambda p: load_llm(p)):
        with pytest.raises(LLMWeightsError, match=r"no weight files \(model.safetensors.index.json, model.safetensors"):
            load(d)
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "part-2.safetensors"}})
    )
    with pytest.raises(LLMWeightsError, match=r"model.safetensors.index.json lists shards that are not in .*: part-2"):
        check(d)


def test_a_config_json_transformers_cannot_read_is_named_as_bad_input(llm_dirs, tmp_path):
    """A config.json cut short, saved in a local code page, holding a list or lacking model_type had reached the user
    as transformers' OSError or ValueError, an internal error (exit 1); each is the folder's fault, named."""
    from llmasr.models.llm import LLMLoadError

    d = copy_of(llm_dirs["untied"], tmp_path)
    text = (d / "config.json").read_text()
    without_type = json.dumps({k: v for k, v in json.loads(text).items() if k != "model_type"})
    for written, said in (
        (text[:-20].encode(), r"config.json: not valid JSON \(.* at line \d+, column \d+\)"),
        (text.replace("{", '{"_name_or_path": "\u6a21\u578b",', 1).encode("gbk"), "config.json: not UTF-8 text"),
        (b"[1, 2]", "config.json: a JSON list, not the object of a model's settings"),
        (without_type.encode(), "config.json: transformers cannot build a model from it: .*model_type"),
    ):
        (d / "config.json").write_bytes(written)
        for load in (check, lambda p: load_llm(p)):
            with pytest.raises(LLMLoadError, match=said):
                load(d)


def test_git_lfs_pointers_are_named_as_such(llm_dirs, tmp_path):
    d = copy_of(llm_dirs["untied"], tmp_path)
    (d / "model.safetensors").write_text(LFS_POINTER)
    for load in (check, lambda p: load_llm(p)):  # `llmasr check`, and training's load
        with pytest.raises(
            CheckpointMismatchError, match=r"model.safetensors: a Git LFS pointer, not the weights .*git lfs pull"
        ):
            load(d)
    (tmp_path / "model.pt").write_text(LFS_POINTER)  # a FunASR model.pt cloned from ModelScope without LFS
    with pytest.raises(CheckpointMismatchError, match=r"model.pt: a Git LFS pointer"):
        torch_load(tmp_path / "model.pt")


def test_weights_or_a_tokenizer_cut_short_are_named(llm_dirs, tmp_path):
    """A copy cut short (a full disk, an interrupted rsync) of the weights or of tokenizer.json: the load had failed
    with the parsers' own errors, which name no file."""
    from llmasr.models.llm import LLMLoadError
    from llmasr.models.tokenizer import load_tokenizer

    d = copy_of(llm_dirs["untied"], tmp_path)
    for name in ("model.safetensors", "tokenizer.json"):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointMismatchError, match=r"model.safetensors: not a readable safetensors file"):
        load_llm(d)
    with pytest.raises(LLMLoadError, match=rf"{d}: its tokenizer files cannot be read \(JSONDecodeError"):
        load_tokenizer(d)


def test_the_files_checked_are_the_ones_transformers_reads(llm_dirs, tmp_path):
    """Shards with their index beside a model.safetensors: transformers reads the single file. The check had read the
    shards, passed, and left a Git LFS pointer in model.safetensors to a bare SafetensorError at the load."""
    d = copy_of(llm_dirs["untied"], tmp_path)
    state = load_file(str(d / "model.safetensors"))
    keys = sorted(state)
    halves = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2 :]}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, str(d / name), metadata={"format": "pt"})
    weight_map = {k: name for name, part in halves.items() for k in part}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    check(d)
    (d / "model.safetensors").write_text(LFS_POINTER)
    for load in (check, lambda p: load_llm(p)):
        with pytest.raises(CheckpointMismatchError, match=r"model.safetensors: a Git LFS pointer"):
            load(d)


def test_weights_that_do_not_fit_config_json_are_listed_with_both_shapes(llm_dirs, tmp_path):
    d = copy_of(llm_dirs["untied"], tmp_path)
    config = json.loads((d / "config.json").read_text())
    config["intermediate_size"] += 8
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(LLMWeightsError, match=r"0 weights missing, \d+ of another shape") as err:
        check(d)
    want = config["intermediate_size"]
    assert f"model.layers.0.mlp.gate_proj.weight: stored [{want - 8}, " in str(err.value)
    assert f"config.json gives [{want}, " in str(err.value)
    # training's load refuses them in the same words (transformers had raised a RuntimeError naming no file)
    with pytest.raises(LLMWeightsError) as loaded:
        load_llm(d)
    assert str(loaded.value) == str(err.value)
    # under ZeRO-3 too, before the partitioned load (whose own error named no directory)
    from transformers.integrations import HfDeepSpeedConfig

    hf_ds = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    try:
        with pytest.raises(LLMWeightsError) as loaded:
            load_llm(d)
    finally:
        del hf_ds
    assert str(loaded.value) == str(err.value)
    # a directory with its own modeling code (trust_remote_code) may map names its own way: its files are only
    # checked to be there and readable
    model = check(llm_dirs["untied"])
    check_llm_weights(d, model, remote_code=True)
    (d / "model.safetensors").write_text(LFS_POINTER)
    with pytest.raises(CheckpointMismatchError, match="a Git LFS pointer"):
        check_llm_weights(d, model, remote_code=True)


def test_an_lm_head_the_files_lack_is_refused_not_left_random(llm_dirs, tmp_path):
    """Weights saved from the bare model (no `model.` prefix, no lm_head): transformers reads the body and would start
    the untied lm_head from random values, logging it among its warnings."""
    d = copy_of(llm_dirs["untied"], tmp_path)
    state = load_file(str(d / "model.safetensors"))
    body = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    save_file(body, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        LLMWeightsError, match=r"1 weights missing, 0 of another shape.*\n  missing: lm_head.weight$"
    ) as err:
        check(d)
    # training's and export's load too, in the same words (it had started lm_head from new random values at every
    # load, so two exports of one checkpoint differed)
    with pytest.raises(LLMWeightsError) as loaded:
        load_llm(d)
    assert str(loaded.value) == str(err.value)
    tied = copy_of(llm_dirs["tied"], tmp_path / "t")
    state = load_file(str(tied / "model.safetensors"))
    save_file({k.removeprefix("model."): v for k, v in state.items()}, str(tied / "model.safetensors"))
    check(tied)  # tied to the embeddings, which are stored
    load_llm(tied)


@pytest.fixture(scope="module")
def adapter_dir(llm_dirs, tmp_path_factory):
    """A peft LoRA adapter saved from the untied tiny LLM (as `llmasr export --adapter-only` writes one)."""
    import peft

    model, _ = load_llm(llm_dirs["untied"])
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft.get_peft_model(model, config).save_pretrained(str(out))
    return out


def test_a_saved_adapter_is_checked_against_the_llm(llm_dirs, adapter_dir, tmp_path):
    import peft

    with torch.device("meta"):
        model = load_llm(llm_dirs["untied"], pretrained=False, shapes_only=True, adapter=adapter_dir)[0]
    assert any(".lora_A." in n for n, _ in model.named_parameters())
    # a tensor the file lacks: peft would leave it fresh and only warn
    d = copy_of(adapter_dir, tmp_path)
    state = load_file(d / "adapter_model.safetensors")
    dropped = sorted(k for k in state if k.endswith("lora_B.weight"))[0]
    save_file({k: v for k, v in state.items() if k != dropped}, d / "adapter_model.safetensors")
    with torch.device("meta"), pytest.raises(LLMWeightsError, match=r"1 of its tensors missing") as err:
        load_llm(llm_dirs["untied"], pretrained=False, shapes_only=True, adapter=d)
    assert f"missing: {dropped}" in str(err.value)
    with pytest.raises(LLMWeightsError, match=r"1 of its tensors missing"):  # the real load too: it had only warned
        load_llm(llm_dirs["untied"], adapter=d)
    # a module the adapter trains whole (modules_to_save): `llmasr check` had passed it, the load failed on a KeyError
    mts = tmp_path / "mts"
    model, _ = load_llm(llm_dirs["untied"])
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"])
    peft.get_peft_model(model, config).save_pretrained(str(mts))
    head = {k: v for k, v in load_file(mts / "adapter_model.safetensors").items() if "lm_head" not in k}
    save_file(head, mts / "adapter_model.safetensors")
    with torch.device("meta"), pytest.raises(LLMWeightsError, match=r"1 of its tensors missing") as err:
        load_llm(llm_dirs["untied"], pretrained=False, shapes_only=True, adapter=mts)
    assert "missing: base_model.model.lm_head.weight" in str(err.value)
    with pytest.raises(LLMWeightsError, match=rf"{mts}: the adapter's weights lack base_model.model.lm_head.weight"):
        load_llm(llm_dirs["untied"], adapter=mts)
    # an adapter trained on an LLM of another width
    wide = next(k for k in state if k.endswith("lora_A.weight"))
    save_file({**state, wide: torch.zeros(4, 3)}, d / "adapter_model.safetensors")
    with torch.device("meta"), pytest.raises(LLMWeightsError, match=rf"{wide}: stored \[4, 3\], the LLM gives"):
        load_llm(llm_dirs["untied"], pretrained=False, shapes_only=True, adapter=d)
    (d / "adapter_model.safetensors").write_text(LFS_POINTER)
    with torch.device("meta"), pytest.raises(CheckpointMismatchError, match="Git LFS pointer"):
        load_llm(llm_dirs["untied"], pretrained=False, shapes_only=True, adapter=d)


def test_a_head_transformers_renames_on_load_is_found(tmp_path):
    """GPT-NeoX saves its head as `embed_out` and transformers reads it as `lm_head` (a renaming registered for its
    class, not its model type): check refused the directory as lacking lm_head, and so did training's load, which
    checks the headers first."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmasr.models.llm import _causal_lm

    config = AutoConfig.for_model(
        "gpt_neox", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "neox")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    check_llm_weights(tmp_path / "neox", model)
    _causal_lm(tmp_path / "neox", torch.float32, False, pretrained=True, shapes_only=False)


def test_weights_float16_cannot_hold_are_named_when_the_llm_loads_in_float16(llm_dirs, tmp_path):
    """A weight past 65504 loaded as inf in float16 without a word (a bf16 export decoded with --dtype fp16 wrote NaN
    logits); now it is named. bfloat16 and float32 hold it."""
    path = copy_of(llm_dirs["untied"], tmp_path)
    state = load_file(str(path / "model.safetensors"))
    state["model.layers.0.self_attn.k_proj.bias"][3] = 69632.0
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(LLMWeightsError) as err:
        load_llm(path, dtype="float16")
    assert str(err.value) == (
        f"{path}: loaded in float16, 1 weight tensor(s) hold values beyond its largest finite value 65504, now inf: "
        "model.layers.0.self_attn.k_proj.bias; load the LLM in bfloat16 or float32 (model.llm.dtype, --dtype)"
    )
    model, _ = load_llm(path, dtype="bfloat16")
    assert float(model.model.layers[0].self_attn.k_proj.bias[3]) == 69632.0
    load_llm(llm_dirs["untied"], dtype="float16")  # weights it holds load as before
