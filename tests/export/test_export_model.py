"""Export: merged LoRA equals base + adapter, plain transformers and peft load it, ZeRO stages agree, the folder is
self-contained and byte-for-byte repeatable, and its description and tokenizer carry what training used."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from llmasr.commands.export import main
from llmasr.config_io import ConfigError
from llmasr.export.decode import load_decode_model
from llmasr.export.export import export_model, load_checkpoint_model
from llmasr.models.exported import MODEL_FILE, ExportedModelError, load_exported
from llmasr.run_dir import CheckpointError
from llmasr.testing.run_dirs import TARGETS, model_section, train_run
from llmasr.testing.tiny_recipe import random_batch, speech_logits


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    return {
        0: export_model(runs[0], out / "z0", dtype="fp32"),
        2: export_model(runs[2], out / "z2", dtype="fp32"),
        3: export_model(runs[3], out / "z3", dtype="fp32"),
        "adapter": export_model(runs[2], out / "adapter", adapter_only=True),
    }


def test_merged_export_equals_base_plus_adapter(runs, exported):
    ref, _ = load_checkpoint_model(runs[2])
    assert any("lora_" in n for n, _ in ref.encoder.named_parameters())  # encoder LoRA is exercised
    model = load_exported(exported[2])
    assert not any("lora_" in n for n, _ in model.named_parameters())
    batch = random_batch(ref, TARGETS, seed=7)
    a, b = speech_logits(ref, batch), speech_logits(model, batch)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    # The CTC head came across too.
    enc, lens = ref.encoder(batch.feats, batch.feat_lens)
    torch.testing.assert_close(
        model.ctc_head(*model.encoder(batch.feats, batch.feat_lens)), ref.ctc_head(enc, lens), rtol=0, atol=1e-5
    )


def test_exported_llm_loads_with_plain_transformers_and_generates(runs, exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm_dir = exported[2] / "llm"
    assert (llm_dir / "model.safetensors").is_file() or (llm_dir / "model.safetensors.index.json").is_file()
    llm = AutoModelForCausalLM.from_pretrained(str(llm_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(llm_dir))
    ref, _ = load_checkpoint_model(runs[2])
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hello world"}], add_generation_prompt=True, tokenize=True
    )
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    x = torch.tensor([list(ids)])
    with torch.no_grad():
        torch.testing.assert_close(llm(x).logits, ref.llm(input_ids=x).logits, rtol=0, atol=1e-5)
        out = llm.generate(x, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > x.shape[1]
    assert llm.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert "im_start" in (tok.chat_template or "")


def test_adapter_only_export_loads_with_peft_and_equals_merged(exported, base_dirs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    llm_base, _ = base_dirs
    adapter = exported["adapter"] / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(str(llm_base))
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(exported[2] / "llm")).eval()
    x = torch.tensor([[1, 5, 9, 20, 33, 2]])
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x).logits, merged(x).logits, rtol=0, atol=1e-5)
    # The whole speech model loads from the adapter export too and agrees with the merged export.
    a, b = load_exported(exported["adapter"]), load_exported(exported[2])
    batch = random_batch(b, TARGETS, seed=3)
    torch.testing.assert_close(speech_logits(a, batch), speech_logits(b, batch), rtol=0, atol=1e-5)
    for name in ("encoder.safetensors", "adaptor.safetensors", "ctc_head.safetensors", "am.mvn"):
        assert (exported["adapter"] / name).is_file()


def test_adapter_only_is_refused_when_the_base_llm_was_trained_too(base_dirs, train_corpus, tmp_path, capsys):
    llm, enc = base_dirs
    section = model_section(llm, enc, encoder_lora=False, ctc=False)
    section["llm"]["freeze"] = False  # LoRA plus the base weights, as the demo trains
    run = train_run(tmp_path / "run", section, train_corpus).run_dir
    assert main(["--checkpoint", str(run), "--output", str(tmp_path / "adapter"), "--adapter-only"]) == 2
    err = capsys.readouterr().err
    assert "--adapter-only: the base LLM's own weights were trained beside LoRA (model.llm.freeze: false" in err
    assert "llm.base_model.model.model.embed_tokens.weight" in err and not (tmp_path / "adapter").exists()
    assert main(["--checkpoint", str(run), "--output", str(tmp_path / "merged")]) == 0


def test_adapter_only_of_a_run_that_trained_the_base_llm_is_refused_before_its_checkpoints_are_read(
    base_dirs, train_corpus, tmp_path, capsys, monkeypatch
):
    """The refusal came after the checkpoints were read, the model rebuilt and --average's N averaged (minutes and
    the memory of N models at LLM size): the recipe and the checkpoint's list of trained tensors say it first."""
    import llmasr.export.trained_model as trained_model

    llm, enc = base_dirs
    section = model_section(llm, enc, encoder_lora=False, ctc=False)
    section["llm"]["freeze"] = False
    run = train_run(tmp_path / "run", section, train_corpus, updates=2, save_every_updates=1, keep_last=0).run_dir

    def read(*args, **kwargs):
        raise AssertionError("a checkpoint's weights were read")

    monkeypatch.setattr(trained_model, "read_trained_state", read)
    out = tmp_path / "adapter"
    assert main(["--checkpoint", str(run), "--output", str(out), "--adapter-only", "--average", "2"]) == 2
    err = capsys.readouterr().err
    assert "--adapter-only: the base LLM's own weights were trained beside LoRA (model.llm.freeze: false" in err
    assert "llm.base_model.model.model.embed_tokens.weight" in err and not out.exists()


def test_adapter_only_carries_the_biases_lora_bias_trains(base_dirs, train_corpus, tmp_path):
    """lora.bias: all trains the LLM's biases beside LoRA, and peft's adapter file holds them: --adapter-only had
    been refused as if base weights were trained."""
    from safetensors import safe_open

    llm, enc = base_dirs
    section = model_section(llm, enc, encoder_lora=False, ctc=False)
    section["llm"]["lora"]["bias"] = "all"
    run = train_run(tmp_path / "run", section, train_corpus).run_dir
    assert main(["--checkpoint", str(run), "--output", str(tmp_path / "adapter"), "--adapter-only"]) == 0
    assert main(["--checkpoint", str(run), "--output", str(tmp_path / "merged")]) == 0
    with safe_open(str(tmp_path / "adapter" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert any(k.endswith(".bias") for k in f.keys())
    a, b = load_exported(tmp_path / "adapter"), load_exported(tmp_path / "merged")
    batch = random_batch(b, TARGETS, seed=3)
    torch.testing.assert_close(speech_logits(a, batch), speech_logits(b, batch), rtol=0, atol=1e-5)


def test_every_zero_stage_exports_the_trainers_model(trained_runs, exported):
    for stage in (0, 2, 3):
        ref = trained_runs[stage].reference_model()  # the trainer's own tensors, no checkpoint file involved
        model = load_exported(exported[stage])
        batch = random_batch(ref, TARGETS, seed=11)
        torch.testing.assert_close(speech_logits(model, batch), speech_logits(ref, batch), rtol=0, atol=1e-5)
        with torch.no_grad():
            enc, lens = ref.encoder(batch.feats, batch.feat_lens)
            got = model.ctc_head(*model.encoder(batch.feats, batch.feat_lens))
            torch.testing.assert_close(got, ref.ctc_head(enc, lens), rtol=0, atol=1e-5)


def test_exported_dir_is_self_contained(exported, tmp_path):
    import yaml

    moved = tmp_path / "moved"
    shutil.copytree(exported[2], moved)
    desc = yaml.safe_load((moved / "llmasr_model.yaml").read_text())
    assert desc["frontend"]["cmvn_file"] == "am.mvn"
    assert desc["encoder"]["class"] == "SANMEncoder" and desc["encoder"]["conf"]["input_size"] == 560
    assert desc["source"]["tags"] == ["update_00000001"]
    assert desc["ctc"]["vocab"] == "llm"
    model = load_exported(moved)
    assert model.frontend.cmvn_file == str(moved / "am.mvn")
    assert model.prompt.end_id == model.prompt.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_the_same_checkpoint_exports_to_the_same_bytes(runs, exported, tmp_path):
    again = export_model(runs[2], tmp_path / "again", dtype="fp32")
    files = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(exported[2]) for p in exported[2].rglob("*") if p.is_file())
    assert [f for f in files if (again / f).read_bytes() != (exported[2] / f).read_bytes()] == []


def test_a_damaged_or_newer_description_is_refused_naming_the_file(exported, tmp_path):
    import yaml

    from llmasr.models.exported import ExportedModelError

    moved = shutil.copytree(exported[0], tmp_path / "moved")
    path = moved / "llmasr_model.yaml"
    desc = yaml.safe_load(path.read_text())
    for text, why in (
        (yaml.safe_dump({**desc, "format": "llmasr-exported-2"}), r"format 'llmasr-exported-2', but this llmasr reads"),
        ("format: llmasr-exported-1\nencoder: [unclosed\n", "not readable YAML"),
        (yaml.safe_dump({k: v for k, v in desc.items() if k != "encoder"}), "no encoder section"),
        # keys inside a section had failed as a bare KeyError: 'type'
        (
            yaml.safe_dump({**desc, "encoder": {k: v for k, v in desc["encoder"].items() if k != "type"}}),
            "encoder.type missing or not a mapping",
        ),
        (yaml.safe_dump({**desc, "adaptor": {**desc["adaptor"], "conf": 3}}), "adaptor.conf missing or not a mapping"),
        (yaml.safe_dump({**desc, "ctc": {"file": "ctc_head.safetensors"}}), "ctc.weight, ctc.vocab missing"),
        (yaml.safe_dump({**desc, "llm": {**desc["llm"], "kind": "adapter"}}), "llm.base missing"),
        # had been "dtype must be one of ...", naming neither the file nor the key
        (
            yaml.safe_dump({**desc, "llm": {**desc["llm"], "dtype": "half"}}),
            "llm.dtype must be one of bf16, fp16, fp32",
        ),
    ):
        path.write_text(text)
        with pytest.raises(ExportedModelError, match=f"{path}: {why}"):
            load_exported(moved)


@pytest.mark.parametrize("dtype", ["bf16", torch.bfloat16])  # the torch dtype load_exported takes had been refused
def test_bf16_export_casts_the_llm(runs, tmp_path, dtype):
    out = export_model(runs[0], tmp_path / "bf16", dtype=dtype)
    cfg = json.loads((out / "llm" / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    model = load_exported(out)
    assert next(model.llm.parameters()).dtype == torch.bfloat16
    batch = random_batch(model, TARGETS[:2], seed=1)
    assert len(model.generate(batch, max_new_tokens=3)) == 2


def test_a_dtype_it_cannot_write_is_refused_naming_the_argument_a_python_caller_gave(tmp_path):
    """export_model(..., dtype="half") had said "--dtype must be one of ...": a flag of `llmasr export`, whose choices
    never let a bad value through, so only a Python caller saw it, who gave `dtype`. Refused before the run is read."""
    from llmasr.export.export import ExportError

    with pytest.raises(ExportError, match=r"^dtype must be one of bf16, fp16, fp32 .*; got 'half'$"):
        export_model(tmp_path / "no_run", tmp_path / "out", dtype="half")


def test_sharded_export(runs, tmp_path):
    out = export_model(runs[0], tmp_path / "sharded", max_shard_size="100KB")
    assert (out / "llm" / "model.safetensors.index.json").is_file()
    assert len(list((out / "llm").glob("model-*.safetensors"))) > 1
    load_exported(out)


def test_the_chat_template_variables_travel_with_the_export(exported_dir, tmp_path):
    """model.prompt.template_kwargs (Qwen3's enable_thinking) are written into llmasr_model.yaml and the loaded
    export renders its prompts with them, as training did."""
    import yaml

    from llmasr.models.exported import MODEL_FILE

    out = tmp_path / "model"
    shutil.copytree(exported_dir, out)
    desc = yaml.safe_load((out / MODEL_FILE).read_text(encoding="utf-8"))
    assert desc["prompt"]["template_kwargs"] == {}
    desc["prompt"]["template_kwargs"] = {"enable_thinking": False}
    (out / MODEL_FILE).write_text(yaml.safe_dump(desc), encoding="utf-8")
    assert load_exported(out).prompt.template_kwargs == {"enable_thinking": False}


def test_the_exported_tokenizer_writes_the_trained_prompt_in_plain_transformers(tmp_path):
    """DIR/llm's chat template renders the prompt the model was trained and is decoded with, though plain
    transformers is not passed model.prompt.template_kwargs: a Fun-ASR-Nano trained without thinking
    (enable_thinking: false) had been prompted in DIR/llm without its empty <think></think> block."""
    import yaml
    from transformers import AutoTokenizer

    from llmasr.convert.funasr_nano import convert_funasr
    from llmasr.models.prompt import AUDIO_PLACEHOLDER
    from llmasr.testing.tiny_nano import write_nano_dir

    src = write_nano_dir(tmp_path / "src")
    config = yaml.safe_load((src / "config.yaml").read_text(encoding="utf-8"))
    config["dataset_conf"]["do_think"] = False
    (src / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    convert_funasr(src, tmp_path / "out")
    prompt = load_exported(tmp_path / "out").prompt
    assert prompt.template_kwargs == {"enable_thinking": False}
    plain = AutoTokenizer.from_pretrained(str(tmp_path / "out" / "llm"))
    text = plain.apply_chat_template(prompt._messages(prompt.task, None), tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    before, after = text.split(AUDIO_PLACEHOLDER)
    ids = plain.encode(before, add_special_tokens=False) + plain.encode(after, add_special_tokens=False)
    assert ids == prompt.encode(None).ids


def test_an_llm_with_named_chat_templates_exports_and_loads(base_dirs, train_corpus, tmp_path):
    """A tokenizer with named chat templates ("default" and "tool_use", as Hermes-2-Pro-Llama-3's) prompts with its
    default one; the export records that one, and the export loads (`llmasr decode --model DIR`): the whole dict had
    been recorded, which the description's chat_template, one template, refused after the training was done."""
    from llmasr.testing.tiny_llm import CHATML_TEMPLATE, DEFAULT_CORPUS, train_bpe_tokenizer, write_tiny_llm_dir

    tokenizer = train_bpe_tokenizer(DEFAULT_CORPUS, chat_template=None)
    tokenizer.chat_template = {"default": CHATML_TEMPLATE, "tool_use": "tools: " + CHATML_TEMPLATE}
    llm = write_tiny_llm_dir(tmp_path / "llm", tokenizer=tokenizer)
    run = train_run(tmp_path / "run", model_section(llm, base_dirs[1], ctc=False), train_corpus)
    model = load_exported(export_model(run.run_dir, tmp_path / "model", dtype="fp32"))
    assert model.prompt.tokenizer.chat_template == CHATML_TEMPLATE
    assert model.prompt.encode("three four").ids == run.reference_model().prompt.encode("three four").ids

    # An export written before the fix recorded the whole dict: it loads, with the default template it trained with.
    desc_path = tmp_path / "model" / MODEL_FILE
    desc = yaml.safe_load(desc_path.read_text())
    desc["prompt"]["chat_template"] = {"default": CHATML_TEMPLATE, "tool_use": "tools: " + CHATML_TEMPLATE}
    desc_path.write_text(yaml.safe_dump(desc))
    old = load_exported(tmp_path / "model")
    assert old.prompt.encode("three four").ids == run.reference_model().prompt.encode("three four").ids
    desc["prompt"]["chat_template"] = {"tool_use": "tools: " + CHATML_TEMPLATE, "rag": CHATML_TEMPLATE}
    desc_path.write_text(yaml.safe_dump(desc))
    with pytest.raises(ExportedModelError, match=r"llmasr_model.yaml: prompt.chat_template holds named templates "
                                                 r"\(rag, tool_use\) and no 'default'"):  # fmt: skip
        load_exported(tmp_path / "model")


def test_tensors_transformers_keeps_in_float32_stay_float32_in_a_bf16_export(base_dirs, train_corpus, tmp_path):
    """An MoE router's gate and e_score_correction_bias (dots.llm1; DeepSeek-V3-style routers) are kept in float32
    by transformers in a bf16 model (`_keep_in_fp32_modules_strict`), and the trained model routed with them so: the
    export had rounded them to bf16, which from_pretrained then read back into float32, other values than trained."""
    import transformers
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from llmasr.testing.tiny_llm import DEFAULT_CORPUS, train_bpe_tokenizer, write_tiny_llm_dir

    if not hasattr(transformers, "Dots1Config"):
        pytest.skip("this transformers has no dots.llm1")
    tok = train_bpe_tokenizer(DEFAULT_CORPUS)
    config = transformers.Dots1Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
        first_k_dense_replace=0, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(config)
    router = [n for n, _ in [*llm.named_parameters(), *llm.named_buffers()] if n.endswith(("gate.weight", "_bias"))]
    assert len(router) == 4
    with torch.no_grad():  # values bf16 cannot hold (transformers initialises them to zeros)
        for name in router:
            tensor = llm.get_parameter(name) if name.endswith("weight") else llm.get_buffer(name)
            tensor.copy_(1 + 0.3 * torch.randn(tensor.shape))
    llm_dir = write_tiny_llm_dir(tmp_path / "llm", tokenizer=tok, model=llm)
    section = model_section(llm_dir, base_dirs[1], encoder_lora=False, ctc=False)
    section["llm"]["dtype"] = "bfloat16"
    run = train_run(tmp_path / "run", section, train_corpus)
    base = run.reference_model().llm.get_base_model()
    trained = {n: t.detach() for n, t in [*base.named_parameters(), *base.named_buffers()] if n in router}
    assert {t.dtype for t in trained.values()} == {torch.float32}  # the trained model routed in float32
    out = export_model(run.run_dir, tmp_path / "model")
    with safe_open(str(out / "llm" / "model.safetensors"), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    for name in router:
        assert saved[name].dtype == torch.float32 and torch.equal(saved[name], trained[name]), name
    assert saved["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert json.loads((out / "llm" / "config.json").read_text())["dtype"] == "bfloat16"
    plain = AutoModelForCausalLM.from_pretrained(str(out / "llm"))
    loaded = dict([*plain.named_parameters(), *plain.named_buffers()])
    assert all(torch.equal(loaded[name].detach(), trained[name]) for name in router)


def test_an_llm_whose_generation_config_has_flags_greedy_search_ignores_exports(base_dirs, train_corpus, tmp_path):
    """Many published generation_config.json set sampling flags beside do_sample: false (transformers loads them with
    a warning and generate ignores them). A run trained on such an LLM had failed at the export's very end, after
    reading and merging, with transformers' ValueError: save_pretrained refuses a changed generation config its
    validation warns about, and the export changes its end tokens. The export's end tokens are set, and its decoding
    is greedy: a chat model's sampling settings (do_sample, temperature, top_p, repetition_penalty) had been kept, so
    a plain `generate` on the export sampled its transcripts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = shutil.copytree(base_dirs[0], tmp_path / "llm")
    gen_file = llm / "generation_config.json"
    tok = AutoTokenizer.from_pretrained(str(llm))
    endoftext, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    gen = json.loads(gen_file.read_text())
    gen.update(do_sample=False, temperature=0.7, top_p=0.8, eos_token_id=endoftext)  # the export sets <|im_end|>
    gen_file.write_text(json.dumps(gen))
    run = train_run(tmp_path / "run", model_section(llm, base_dirs[1], encoder_lora=False, ctc=False), train_corpus)
    assert main(["--checkpoint", str(run.run_dir), "--output", str(tmp_path / "model")]) == 0
    saved = json.loads((tmp_path / "model" / "llm" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [im_end, endoftext] and saved["pad_token_id"] == tok.pad_token_id
    assert saved["do_sample"] is False and not {"temperature", "top_p", "repetition_penalty"} & set(saved)
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model" / "llm"))
    assert plain.generation_config.eos_token_id == [im_end, endoftext]
    # a published chat model's own sampling settings: the export decodes greedily all the same
    gen.update(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    gen_file.write_text(json.dumps(gen))
    assert main(["--checkpoint", str(run.run_dir), "--output", str(tmp_path / "sampled"), "--overwrite"]) == 0
    saved = json.loads((tmp_path / "sampled" / "llm" / "generation_config.json").read_text())
    assert saved["do_sample"] is False and not {"temperature", "top_p", "top_k", "repetition_penalty"} & set(saved)
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sampled" / "llm"))
    x = torch.tensor([[1, 5, 9]])
    assert torch.equal(plain.generate(x, max_new_tokens=4), plain.generate(x, max_new_tokens=4))
    assert plain.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=2, do_sample=False).shape[1] > 3


def test_an_fp16_export_of_weights_float16_cannot_hold_is_refused_naming_them(base_dirs, train_corpus, tmp_path):
    """float16's largest finite value is 65504: a weight past it had been written as inf without a word, and the
    exported model's outputs were NaN. The export names the tensors; bf16 holds them."""
    from transformers import AutoModelForCausalLM

    from llmasr.export.export import ExportError
    from llmasr.testing.tiny_llm import DEFAULT_CORPUS, train_bpe_tokenizer, write_tiny_llm_dir

    tok = train_bpe_tokenizer(DEFAULT_CORPUS)
    llm_dir = write_tiny_llm_dir(tmp_path / "llm", tokenizer=tok)
    llm = AutoModelForCausalLM.from_pretrained(str(llm_dir))
    with torch.no_grad():  # a value float32 trains with
        llm.model.layers[0].self_attn.k_proj.bias[3] = 69632.0  # bf16 holds it exactly
    llm.save_pretrained(str(llm_dir))
    run = train_run(tmp_path / "run", model_section(llm_dir, base_dirs[1], encoder_lora=False, ctc=False), train_corpus)
    why = (
        r"the LLM in float16: 1 tensor\(s\) hold values beyond its largest finite value 65504, which would be "
        r"written as inf: model.layers.0.self_attn.k_proj.bias \(largest \|value\| 69632\); choose --dtype bf16"
    )
    with pytest.raises(ExportError, match=why):
        export_model(run.run_dir, tmp_path / "fp16", dtype="fp16")
    assert not (tmp_path / "fp16").exists()
    # `decode --checkpoint --dtype fp16` reads the weights the export writes: refused alike, where it had decoded
    # with an inf weight
    with pytest.raises(CheckpointError, match=f"checkpoint {run.run_dir}: {why}"):
        load_decode_model(checkpoint=run.run_dir, dtype="fp16")
    out = export_model(run.run_dir, tmp_path / "bf16", dtype="bf16")
    assert load_exported(out).llm.model.layers[0].self_attn.k_proj.bias[3] == 69632
    # the bf16 export decoded with --dtype fp16: refused alike, where it had decoded with the weight at inf
    with pytest.raises(ConfigError, match=r"llm: loaded in float16, 1 weight tensor\(s\) hold values beyond its"):
        load_decode_model(out, dtype="fp16")
