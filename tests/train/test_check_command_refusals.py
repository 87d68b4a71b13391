"""`llmasr check`: config problems exit non-zero with the reason, as training would refuse them: bad overrides and
DeepSpeed files, pretrained files that do not fit the model, a decode VAD that does not load, half-precision
weights trained without master copies, utterances past the LLM's context."""

import json
import shutil

import numpy as np
import pytest
import yaml
from check_runner import run_check

from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus


def test_errors_exit_non_zero_with_the_reason(recipe_file, tmp_path, capsys):
    base = ["--config", str(recipe_file), "--out", str(tmp_path)]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"gradient_accumulation_steps": 8, "zero_optimization": {"stage": 2}}))
    code, _, err = run_check(capsys, *base, "--deepspeed", str(bad_json))
    assert code == 2 and "gradient_accumulation_steps" in err and "train.grad_accum" in err
    code, _, err = run_check(capsys, *base, "--deepspeed", "zero2", "data.train=[/nonexistent/train.jsonl]")
    assert code == 2 and "/nonexistent/train.jsonl" in err
    code, _, err = run_check(capsys, *base, "--deepspeed", "zero2", "data.valid=[]", "train.valid_every_updates=5")
    assert code == 2 and "data.valid" in err
    code, _, err = run_check(capsys, *base, "--deepspeed", "zero9")
    assert code == 2 and "zero9" in err
    code, _, err = run_check(capsys, *base, "--deepspeed", "zero2", "optim.branches.decoder.lr=1e-4")
    assert code == 2 and "decoder" in err
    (tmp_path / "a_file").write_text("")  # refused by name before the plan (it had failed on mkdir at the end)
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        run_check(capsys, *base, "--deepspeed", "zero2", "--out", str(tmp_path / "a_file"))
    assert exit_.value.code == 2 and f"--out {tmp_path / 'a_file'}: a file, not a folder" in capsys.readouterr().err


def test_an_override_s_missing_relative_path_says_it_was_read_from_the_working_directory(
    recipe_file, tmp_path, capsys, monkeypatch
):
    """`data.train=[train/data.jsonl]` given from another folder than the recipe's, where that file is beside the
    recipe: the refusal had said it was looked for beside the recipe too, which it never is for an override."""
    assert (recipe_file.parent / "train" / "data.jsonl").is_file()
    monkeypatch.chdir(tmp_path)
    code, _, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path),
                             "data.train=[train/data.jsonl]")  # fmt: skip
    assert code == 2 and "beside the recipe" not in err, err
    assert (
        f"data.train[0]: manifest not found: train/data.jsonl (an override's relative path is read from the working "
        f"directory {tmp_path} alone) (set by the override 'data.train=[train/data.jsonl]')"
    ) in err
    # the item's path alone, in a recipe that gives its manifests as {path, weight}: it had been named by the
    # recipe's line, which holds another path
    weighted = tmp_path / "weighted.yaml"
    data = yaml.safe_load(recipe_file.read_text())
    data["data"]["train"] = [{"path": str(recipe_file.parent / "train" / "data.jsonl"), "weight": 2.0}]
    weighted.write_text(yaml.safe_dump(data))
    code, _, err = run_check(capsys, "--config", str(weighted), "--deepspeed", "zero2", "--out", str(tmp_path),
                             "data.train[0].path=train/data.jsonl")  # fmt: skip
    assert code == 2 and "line" not in err, err
    assert "alone) (set by the override 'data.train[0].path=train/data.jsonl')" in err


@pytest.fixture(scope="module")
def pretrained_recipe(tiny_llm_dir, tmp_path_factory):
    """A recipe whose encoder is a FunASR directory (model.pt) and whose adaptor starts from a file."""
    import torch
    from safetensors.torch import save_file

    from llmasr.models.builder import build_model
    from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir

    root = tmp_path_factory.mktemp("check_pretrained")
    enc = write_funasr_dir(root / "paraformer", encoder_conf=tiny_sanm_conf())
    train_m = write_tiny_corpus(root / "train", n=8)
    data = tiny_recipe_dict(tiny_llm_dir, train=[train_m], output_dir=root / "run", encoder_dir=enc, dropout=None)
    model = build_model(data["model"], weights="random")
    save_file({k: v.contiguous() for k, v in model.adaptor.state_dict().items()}, str(root / "adaptor.safetensors"))
    wide = {k: torch.zeros(*v.shape[:-1], v.shape[-1] + 8) for k, v in model.adaptor.state_dict().items()}
    save_file(wide, str(root / "adaptor_wide.safetensors"))
    data["model"]["adaptor"]["init_from"] = str(root / "adaptor.safetensors")
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_pretrained_files_that_do_not_fit_the_model_are_refused_before_training(pretrained_recipe, tmp_path, capsys):
    """`llmasr check` runs the encoder, adaptor and CTC head loaders on the files' names and shapes, as training's
    load does, so what the first minutes of a GPU job would refuse is refused here."""
    from llmasr.models.builder import build_model
    from llmasr.recipe import load_recipe

    base = ["--config", str(pretrained_recipe), "--out", str(tmp_path), "--deepspeed", "zero2"]
    code, out, err = run_check(capsys, *base, "model.ctc.weight=0.3")
    assert code == 0, err
    root = pretrained_recipe.parent
    assert f"  encoder: {root / 'paraformer' / 'model.pt'} (encoder.*)\n" in out
    assert f"  adaptor: {root / 'adaptor.safetensors'}\n" in out
    assert "  ctc_head: fresh over the LLM's vocabulary\n" in out
    meta = build_model(load_recipe(pretrained_recipe).model, weights="shapes")
    assert {p.device.type for p in meta.parameters()} == {"meta"}  # nothing allocated, no data read

    deeper = tmp_path / "deeper"  # config.yaml says 3 blocks, model.pt holds 2
    shutil.copytree(root / "paraformer", deeper)
    config = yaml.safe_load((deeper / "config.yaml").read_text())
    config["encoder_conf"]["num_blocks"] = 3
    (deeper / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_check(capsys, *base, f"model.encoder.path={deeper}")
    assert (
        code == 2
        and f"model.pt (encoder.*) does not match the SANMEncoder built from {deeper.resolve()}/config.yaml" in err
    )
    assert "missing from checkpoint: encoders.1." in err, err
    code, _, err = run_check(capsys, *base, "model.encoder.conf.num_blocks=3")  # over the directory's 2
    assert code == 2 and "model.encoder.conf.num_blocks: 3, but " in err and "config.yaml states 2" in err, err
    wide = pretrained_recipe.parent / "adaptor_wide.safetensors"
    code, _, err = run_check(capsys, *base, f"model.adaptor.init_from={wide}")
    assert code == 2 and "adaptor_wide.safetensors" in err, err
    code, _, err = run_check(capsys, *base, "model.ctc.weight=0.3", "model.ctc.from_encoder=true")
    assert code == 2 and "model.ctc.from_encoder:" in err and "holds no CTC head" in err, err


def test_a_decode_vad_is_loaded_by_the_check(recipe_file, tmp_path, capsys):
    from llmasr.testing.tiny_vad import write_fsmn_vad_dir

    vad = write_fsmn_vad_dir(tmp_path / "vad")
    args = ["--config", str(recipe_file), "--deepspeed", "zero2", "--out", str(tmp_path)]
    code, out, err = run_check(capsys, *args, f"decode.vad={vad}", "decode.vad_max_end_silence_ms=800")
    assert code == 0, err
    assert f"long audio cut at the speech segments of the FSMN VAD {vad} (ending silence: 800 ms)" in out
    (vad / "model.pt").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # a weight file never pulled
    code, out, err = run_check(capsys, *args, f"decode.vad={vad}")
    assert code == 2 and "model.pt" in err and "Git LFS" in err
    code, out, err = run_check(capsys, *args, f"decode.vad={tmp_path}")
    assert code == 2 and "decode.vad: " in err and "is not a FunASR VAD directory" in err


def test_an_unfrozen_half_precision_llm_without_master_weights_is_refused(recipe_file, tmp_path, capsys):
    """A bf16 LLM trained under train.precision fp32 has no fp32 master copy: small updates round away (it had been
    accepted); a frozen bf16 LLM with fp32 LoRA, or bf16 precision with its master weights, are fine."""
    base = ["--config", str(recipe_file), "--deepspeed", "zero0", "--out", str(tmp_path), "model.llm.dtype=bfloat16"]
    code, _, err = run_check(capsys, *base, "model.llm.freeze=false", "train.precision=fp32")
    assert code == 2 and "model.llm.dtype: bfloat16 with model.llm.freeze false and train.precision fp32" in err
    assert "set train.precision bf16" in err
    assert run_check(capsys, *base, "train.precision=fp32")[0] == 0
    assert run_check(capsys, *base, "model.llm.freeze=false", "train.precision=bf16")[0] == 0


def test_half_precision_llm_biases_lora_trains_without_master_weights_are_refused(recipe_file, tmp_path, capsys):
    """lora.bias all / lora_only trains the frozen LLM's own biases, bf16 ones under model.llm.dtype bfloat16: under
    train.precision fp32 they had been stepped with no fp32 master copy, as an unfrozen LLM's weights are."""
    base = ["--config", str(recipe_file), "--deepspeed", "zero0", "--out", str(tmp_path), "model.llm.dtype=bfloat16"]
    for bias in ("all", "lora_only"):
        code, _, err = run_check(capsys, *base, f"model.llm.lora.bias={bias}", "train.precision=fp32")
        assert code == 2 and f"model.llm.dtype: bfloat16 with model.llm.lora.bias {bias} and train.precision" in err
    assert run_check(capsys, *base, "model.llm.lora.bias=all", "train.precision=bf16")[0] == 0


def test_utterances_past_the_llm_context_are_refused_at_start(tmp_path, capsys):
    """Audio tokens count against the LLM's context with the prompt and transcript: a line whose sum passes
    config.json's max_position_embeddings is named, with its numbers, before training (RoPE reads past it silently)."""
    import soundfile as sf

    from llmasr.models.builder import build_model
    from llmasr.models.context import audio_tokens
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    llm = write_tiny_llm_dir(tmp_path / "llm", max_position_embeddings=64)
    manifest = write_tiny_corpus(tmp_path / "train", n=4)
    sf.write(str(tmp_path / "train" / "long.wav"), np.zeros(6 * 16000, dtype=np.float32), 16000)
    with manifest.open("a") as f:
        f.write(json.dumps({"key": "long", "source": "long.wav", "target": "one two", "duration": 6.0}) + "\n")
    data = tiny_recipe_dict(llm, train=[manifest], output_dir=tmp_path / "run", max_seconds=20.0)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    code, _, err = run_check(capsys, "--config", str(path), "--deepspeed", "zero2", "--out", str(tmp_path / "c"))
    model = build_model(data["model"], weights="meta")
    # counted at the longest audio the dataset loads for 6 s stated: 6 s + max(0.1 s, 1 %) (stated_duration)
    audio, text = audio_tokens(model, 6.1), len(model.prompt.encode("one two").ids)
    assert code != 0
    assert (
        f"data.train: 1 utterance(s) do not fit the LLM's context of 64 tokens (config.json's max_position_embeddings);"
        f" the worst, {manifest}:5, is heard as 6.1 s of audio, {audio} audio tokens, beside {text} prompt and "
        f"transcript tokens ({audio + text} in all). Lower data.batching.max_duration" in err
    )
    # kept under max_duration (3 s) it fits
    code, _, err = run_check(capsys, "--config", str(path), "--deepspeed", "zero2", "--out", str(tmp_path / "c"),
                             "data.batching.max_duration=3")  # fmt: skip
    assert code == 0, err


def test_a_valid_line_outside_the_valid_max_utts_subset_does_not_refuse_the_run(tmp_path, capsys):
    """Validation hears data.valid_max_utts lines of its manifest: one it never hears had refused the run."""
    import soundfile as sf

    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    llm = write_tiny_llm_dir(tmp_path / "llm", max_position_embeddings=64)
    train = write_tiny_corpus(tmp_path / "train", n=4)
    valid = write_tiny_corpus(tmp_path / "valid", n=4, seed=1)
    sf.write(str(tmp_path / "valid" / "long.wav"), np.zeros(6 * 16000, dtype=np.float32), 16000)
    with valid.open("a") as f:  # line 5: the last, which an evenly spaced subset of 2 takes and one of 1 does not
        f.write(json.dumps({"key": "long", "source": "long.wav", "target": "one two", "duration": 6.0}) + "\n")
    data = tiny_recipe_dict(llm, train=[train], valid=[valid], output_dir=tmp_path / "run", max_seconds=20.0)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    base = ["--config", str(path), "--deepspeed", "zero2", "--out", str(tmp_path / "c")]
    code, _, err = run_check(capsys, *base, "data.valid_max_utts=1")
    assert code == 0, err
    code, _, err = run_check(capsys, *base, "data.valid_max_utts=2")
    assert code != 0 and "data.valid: 1 utterance(s) do not fit the LLM's context of 64 tokens" in err
    assert f"the worst, {valid}:5," in err


def test_training_hotword_lists_count_at_their_cap(tmp_path, capsys, caplog):
    """A drawn biasing list goes into the prompt of a training line: capped by hotwords_max_tokens, it counts at
    the cap; without a cap, at list_size's maximum of its longest phrase (they had not been counted, and this
    recipe's lists took a line to 97 tokens of the 96)."""
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    llm = write_tiny_llm_dir(tmp_path / "llm", max_position_embeddings=96)
    train = write_tiny_corpus(tmp_path / "train", n=4)
    data = tiny_recipe_dict(llm, train=[train], output_dir=tmp_path / "run", max_seconds=20.0)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    base = ["--config", str(path), "--deepspeed", "zero2", "--out", str(tmp_path / "c"), "data.hotwords.enable=true"]
    with caplog.at_level("INFO", logger="llmasr"):
        code, _, err = run_check(capsys, *base)
    assert code != 0 and "data.train: " in err and "do not fit the LLM's context of 96 tokens" in err
    assert "for a drawn biasing list of up to 10 phrases (data.hotwords.list_size)" in err
    assert "training's drawn lists count as" in caplog.text
    code, _, err = run_check(capsys, *base, "model.prompt.hotwords_max_tokens=8")
    assert code == 0, err
    code, _, err = run_check(capsys, *base, "model.prompt.hotwords_max_tokens=60")
    assert code != 0 and "data.train: " in err and "do not fit the LLM's context of 96 tokens" in err
    assert "for a biasing list of model.prompt.hotwords_max_tokens 60)" in err


def test_a_key_the_model_builder_refuses_is_named_where_the_recipe_sets_it(recipe_file, tmp_path, capsys):
    """model.encoder.frontend's keys are checked when the model is built, after the recipe has loaded: the error
    named the key but neither the recipe's line nor the override that set it."""
    from llmasr.commands.train import main as train_main

    data = yaml.safe_load(recipe_file.read_text())
    data["model"]["encoder"].setdefault("frontend", {})["n_mel"] = 80
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip() == "n_mel: 80")
    code, _, err = run_check(capsys, "--config", str(path), "--deepspeed", "zero0", "--out", str(tmp_path / "o"))
    assert code == 2 and "unknown key(s) ['n_mel']" in err and f"({path}, line {line})" in err
    assert train_main(["--config", str(path), "--deepspeed", "zero0"]) == 2
    assert f"({path}, line {line})" in capsys.readouterr().err
    code, _, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero0", "--out", str(tmp_path / "o"),
                             "model.encoder.frontend.n_mel=40")  # fmt: skip
    assert code == 2 and "(set by the override 'model.encoder.frontend.n_mel=40')" in err


def test_features_sized_unlike_the_encoders_are_named_where_the_recipe_or_an_override_sizes_them(
    pretrained_recipe, recipe_file, tmp_path, capsys
):
    """The refusal of n_mels (or lfr_m) that makes features of another size than the encoder takes began with no
    key, so neither the override that set it nor the recipe's line was named."""
    base = ["--deepspeed", "zero0", "--out", str(tmp_path / "o")]
    code, _, err = run_check(capsys, "--config", str(pretrained_recipe), *base, "model.encoder.frontend.n_mels=64")
    assert code == 2 and "error: model.encoder.frontend.n_mels: the frontend makes 448-dim features (n_mels x " in err
    assert "takes 560 (config.yaml's encoder input_size)" in err
    assert err.rstrip().endswith("(set by the override 'model.encoder.frontend.n_mels=64')")
    data = yaml.safe_load(pretrained_recipe.read_text())
    data["model"]["encoder"]["frontend"] = {"n_mels": 64}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip() == "n_mels: 64")
    code, _, err = run_check(capsys, "--config", str(path), *base)
    assert code == 2 and err.rstrip().endswith(f"({path}, line {line})")
    # an encoder built from conf: the input_size an override set, though the line leads with the frontend's key
    code, _, err = run_check(capsys, "--config", str(recipe_file), *base, "model.encoder.conf.input_size=80")
    assert code == 2 and "model.encoder.frontend.n_mels: the frontend makes 560-dim features" in err
    assert err.rstrip().endswith("but model.encoder.conf.input_size is 80; make them agree (or leave input_size out) "
                                 "(set by the override 'model.encoder.conf.input_size=80')")  # fmt: skip


def test_a_deepspeed_key_refused_with_advice_naming_a_recipe_key_is_not_pinned_on_that_keys_override(
    recipe_file, tmp_path, capsys
):
    """checkpoint.use_node_local_storage is refused saying why, in words naming train.output_dir: the refusal ended
    "(set by the override 'train.output_dir=...')", as if the run folder given on the command line were at fault."""
    ds = tmp_path / "nls.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "checkpoint": {"use_node_local_storage": True}}))
    code, _, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", str(ds), "--out", str(tmp_path),
                             f"train.output_dir={tmp_path / 'run'}")  # fmt: skip
    assert code == 2 and f"{ds}: checkpoint.use_node_local_storage is true; llmasr keeps" in err
    assert "set by the override" not in err and err.rstrip().endswith("at once: remove it"), err


def test_a_recipe_without_training_manifests_is_told_how_to_give_them(recipe_file, tmp_path, capsys):
    """A recipe with no data.train (the one `llmasr convert funasr` writes) is named, with the override that gives
    them; the error had said only that none was given."""
    data = yaml.safe_load(recipe_file.read_text())
    del data["data"]["train"]
    recipe = tmp_path / "no_train.yaml"
    recipe.write_text(yaml.safe_dump(data))
    code, _, err = run_check(capsys, "--config", str(recipe), "--deepspeed", "zero2", "--out", str(tmp_path))
    assert code == 2
    assert "data.train: no training manifest given; name them on the command line after the recipe, " in err
    assert "data.train=[data/train.jsonl]" in err and f"({recipe} sets none)" in err
    train = yaml.safe_load(recipe_file.read_text())["data"]["train"][0]
    del data["data"]["valid"]
    data["train"]["valid_every_updates"] = 5
    recipe.write_text(yaml.safe_dump(data))
    code, _, err = run_check(capsys, "--config", str(recipe), "--deepspeed", "zero2", "--out", str(tmp_path),
                             f"data.train=[{train}]")  # fmt: skip
    assert (
        code == 2 and "data.valid names no manifest; give one on the command line, data.valid=[data/dev.jsonl]" in err
    )


def test_an_unknown_key_is_named_by_its_own_line_not_its_sections(recipe_file, tmp_path, capsys):
    """`model.encoder.freez` on the recipe's line 6 was named at line 3, `encoder:`: in a long section the reader
    searched for it."""
    lines = recipe_file.read_text().splitlines()
    at = next(i for i, text in enumerate(lines) if text.strip() == "encoder:")
    lines.insert(at + 1, "    freez: true")
    path = tmp_path / "recipe.yaml"
    path.write_text("\n".join(lines) + "\n")
    code, _, err = run_check(capsys, "--config", str(path), "--deepspeed", "zero0", "--out", str(tmp_path / "o"))
    assert code == 2 and "model.encoder: unknown key(s) ['freez']; did you mean 'freeze'?" in err
    assert err.rstrip().endswith(f"({path}, line {at + 2})"), err


def test_a_copied_deepspeed_json_is_refused_once_with_every_key(recipe_file, tmp_path, capsys):
    """A copied HF/DeepSpeed config took three runs to mend: its optimizer and scheduler blocks, then the values that
    disagree with the recipe, then train_batch_size (checked against the JSON's accumulation, which was to go)."""
    copied = {
        "train_batch_size": 64, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 4,
        "gradient_clipping": 0.5, "bf16": {"enabled": True},
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-4, "weight_decay": 0.01}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 100, "total_num_steps": 1000}},
        "zero_optimization": {"stage": 2},
    }  # fmt: skip
    ds = tmp_path / "copied.json"
    ds.write_text(json.dumps(copied))
    code, _, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", str(ds), "--out", str(tmp_path))
    assert code == 2 and f"{ds}: 3 groups of refusals; mend them all before the next run:" in err
    assert '- remove the "scheduler" block.' in err and '- remove the "optimizer" block.' in err
    assert "gradient_accumulation_steps: 4 in the JSON, but train.grad_accum = 2 in the recipe" in err
    assert "gradient_clipping: 0.5 in the JSON, but train.grad_clip = 1.0 in the recipe" in err
    assert "bf16.enabled: True in the JSON, but train.precision = 'fp32' in the recipe" in err
    # the product the JSON will have once its accumulation agrees with the recipe's
    assert "train_batch_size is 64, but train_micro_batch_size_per_gpu * gradient_accumulation_steps * world " in err
    assert "= 8 * 2 * 1 = 16" in err
