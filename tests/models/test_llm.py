"""models.llm: loading a Hugging Face LLM directory."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("pretrained", [True, False])
def test_a_transformers_from_before_the_dtype_rename_gets_torch_dtype(tiny_llm_dir, monkeypatch, pretrained):
    """pyproject.toml allows transformers releases whose loaders know the dtype as `torch_dtype` and hand a `dtype`
    on to the model's constructor, which refuses it: every load had failed there ("Qwen2ForCausalLM.__init__() got
    an unexpected keyword argument 'dtype'"), `llmasr check` and training alike. Such a release is stood in for by its
    version and loaders that refuse the new name as it does."""
    import transformers
    from transformers import AutoModelForCausalLM

    from llmasr.models.llm import load_llm

    def older(real):
        def load(*args, **kwargs):
            if "dtype" in kwargs:
                raise TypeError("Qwen2ForCausalLM.__init__() got an unexpected keyword argument 'dtype'")
            return real(*args, **kwargs)

        return load

    monkeypatch.setattr(transformers, "__version__", "4.51.3")
    for name in ("from_pretrained", "from_config"):
        monkeypatch.setattr(AutoModelForCausalLM, name, older(getattr(AutoModelForCausalLM, name)))
    model, _ = load_llm(tiny_llm_dir, dtype="bfloat16", pretrained=pretrained)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_a_hub_id_or_a_hub_cache_folder_given_as_the_llm_says_what_to_give(tiny_llm_dir, tmp_path, monkeypatch):
    """`model.llm.path: Qwen/Qwen2.5-1.5B-Instruct` (as from_pretrained takes it) was "LLM directory not found", and
    the cache folder `huggingface-cli download` fills (models--Qwen--.../snapshots/HASH) given at its top "no
    config.json", neither saying that llmasr reads a local folder, nor where the files are."""
    import shutil

    from llmasr.models.llm import LLMLoadError, check_llm_dir

    monkeypatch.chdir(tmp_path)
    with pytest.raises(LLMLoadError, match=r"not found: Qwen/Qwen2.5-1.5B-Instruct .*; llmasr reads a local folder "
                                           r"and downloads nothing: `huggingface-cli download Qwen/Qwen2.5-1.5B-"
                                           r"Instruct --local-dir DIR` fetches it"):  # fmt: skip
        check_llm_dir("Qwen/Qwen2.5-1.5B-Instruct")
    (tmp_path / "models").mkdir()
    with pytest.raises(LLMLoadError) as err:  # a local folder's path, mistyped: no word of the hub
        check_llm_dir("models/Qwen2.5")
    assert "huggingface-cli" not in str(err.value)
    cache = tmp_path / "models--Qwen--Qwen2.5-1.5B-Instruct"
    shutil.copytree(tiny_llm_dir, cache / "snapshots" / "abc123")
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("abc123")
    with pytest.raises(LLMLoadError, match=rf"{cache}: no config.json; .*a Hugging Face cache folder: give its "
                                           rf"snapshot, {cache / 'snapshots' / 'abc123'}$"):  # fmt: skip
        check_llm_dir(cache)
    assert check_llm_dir(cache / "snapshots" / "abc123") == cache / "snapshots" / "abc123"


def test_a_modelscope_download_given_at_its_top_names_the_nested_model(tiny_llm_dir, tmp_path):
    """`modelscope download Qwen/Qwen2.5-1.5B-Instruct --cache_dir models` nests the model as
    models/Qwen/Qwen2___5-1___5B-Instruct (dots written "___"); given as `models`, the error had said "no
    config.json" and nothing of the folder holding one."""
    import shutil

    from llmasr.models.llm import LLMLoadError, check_llm_dir

    nested = tmp_path / "models" / "Qwen" / "Qwen2___5-1___5B-Instruct"
    shutil.copytree(tiny_llm_dir, nested)
    for top in (tmp_path / "models", tmp_path / "models" / "Qwen"):
        with pytest.raises(LLMLoadError, match=rf"^{top}: no config.json; .*Folders under it hold one: {nested}: set "
                                               r"model.llm.path to the model's own folder"):  # fmt: skip
            check_llm_dir(top)
    assert check_llm_dir(nested) == nested


def test_lora_given_in_python_is_a_loraconfig_or_its_dict_checked_before_the_load(tiny_llm_dir, monkeypatch):
    """`load_llm(path, lora={"r": 8})` had been an AttributeError from inside peft's wrapping, LoraConfig(r=0) peft's
    own error once the weights had loaded, and LoraConfig(r="8") had reached peft as text."""
    from llmasr.config_io import ConfigError
    from llmasr.models import llm as llm_module
    from llmasr.models.config import LoraConfig
    from llmasr.models.llm import load_llm

    model, _ = load_llm(tiny_llm_dir, lora={"r": 4, "target_modules": ["q_proj"]})
    assert model.peft_config["default"].r == 4 and model.peft_config["default"].target_modules == {"q_proj"}

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights loaded before lora was checked")

    monkeypatch.setattr(llm_module, "_causal_lm", no_weights)
    for lora, said in (
        (LoraConfig(r=0), r"^model.llm.lora.r: LoRA rank must be positive, got 0$"),
        (LoraConfig(r="8"), r"^model.llm.lora.r: expected an integer, got '8'$"),
        ({"rank": 8}, r"^model.llm.lora: unknown key\(s\) \['rank'\]"),
        ("q_proj", r"^model.llm.lora: expected a LoraConfig or a dict of its keys, got str 'q_proj'$"),
    ):
        with pytest.raises(ConfigError, match=said):
            load_llm(tiny_llm_dir, lora=lora)


@pytest.mark.parametrize(
    "dtype, loaded",
    [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32), ("bfloat16", torch.bfloat16),
     (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)],
)  # fmt: skip
def test_load_llm_takes_every_dtype_spelling_the_exports_take(tiny_llm_dir, dtype, loaded):
    """`load_llm(path, dtype="bf16")` had been refused ("model.llm.dtype: 'bf16' is not one of [...]"), though
    export_model, load_exported and Transcriber.load take bf16/fp16/fp32 and torch dtypes: one reading now."""
    from llmasr.models.llm import load_llm

    model, _ = load_llm(tiny_llm_dir, dtype=dtype, pretrained=False)
    assert {p.dtype for p in model.parameters()} == {loaded}


@pytest.mark.parametrize("dtype", ["half", "", torch.int8])
def test_a_dtype_of_no_llm_weights_is_refused_naming_the_spellings_taken(tiny_llm_dir, dtype):
    from llmasr.models.llm import load_llm
    from llmasr.models.tokenizer import LLMLoadError

    with pytest.raises(LLMLoadError, match=r"dtype must be one of bf16, fp16, fp32 \(or bfloat16, float16, float32, or "
                       rf"their torch dtypes\); got {dtype!r}"):  # fmt: skip
        load_llm(tiny_llm_dir, dtype=dtype, pretrained=False)


def test_llms_loaded_in_two_threads_at_once_are_built_one_at_a_time_and_stay_tied(tmp_path, monkeypatch):
    """transformers makes PreTrainedModel.tie_weights a no-op while it builds a model, then puts it back: two builds
    in two threads at once put back each other's no-op, and every later load in the process left tied embeddings
    untied (a test's thread ranks decoding broke eight later tests that way). The builds take turns."""
    import threading
    import time

    from transformers import AutoModelForCausalLM, PreTrainedModel

    from llmasr.models.llm import load_llm
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    path = write_tiny_llm_dir(tmp_path / "tied", tie_word_embeddings=True)
    real, tie = AutoModelForCausalLM.from_pretrained, PreTrainedModel.tie_weights
    inside, most, count = [0], [0], threading.Lock()

    def load(*args, **kwargs):
        with count:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.3)  # long enough for the other thread to come in, were it let
            return real(*args, **kwargs)
        finally:
            with count:
                inside[0] -= 1

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", load)
    models = []
    threads = [threading.Thread(target=lambda: models.append(load_llm(path)[0])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(models) == 2 and most[0] == 1 and PreTrainedModel.tie_weights is tie
    assert all(m.get_output_embeddings().weight is m.get_input_embeddings().weight for m in models)
