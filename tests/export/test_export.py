"""Export: merged LoRA equals base + adapter, plain transformers loads it, ZeRO stages agree, errors are clear."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from llmasr.commands.export import main
from llmasr.export import staged_dir
from llmasr.export.export import ExportError, export_model, load_checkpoint_model, shard_bytes
from llmasr.export.exported import load_exported
from llmasr.run_dir import CheckpointError, list_tags
from llmasr.run_dir.files import hash_share
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

    from llmasr.export.exported import ExportedModelError

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
    ):
        path.write_text(text)
        with pytest.raises(ExportedModelError, match=f"{path}: {why}"):
            load_exported(moved)


def test_bf16_export_casts_the_llm(runs, tmp_path):
    out = export_model(runs[0], tmp_path / "bf16", dtype="bf16")
    cfg = json.loads((out / "llm" / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    model = load_exported(out)
    assert next(model.llm.parameters()).dtype == torch.bfloat16
    batch = random_batch(model, TARGETS[:2], seed=1)
    assert len(model.generate(batch, max_new_tokens=3)) == 2


def test_sharded_export(runs, tmp_path):
    out = export_model(runs[0], tmp_path / "sharded", max_shard_size="100KB")
    assert (out / "llm" / "model.safetensors.index.json").is_file()
    assert len(list((out / "llm").glob("model-*.safetensors"))) > 1
    load_exported(out)


def test_averaging_equals_mean_of_tensors(trained_run, tmp_path):
    from llmasr.export.trained_model import average_states
    from llmasr.run_dir import read_best, read_meta, resolve_checkpoint, select_tags
    from llmasr.train.ds_files import read_trained_state

    ref = resolve_checkpoint(trained_run)
    assert ref.tag == "update_00000004"
    tags = select_tags(ref, 3, "last")
    assert tags == ["update_00000002", "update_00000003", "update_00000004"]
    states = [read_trained_state(ref.root / t, read_meta(ref.root / t)) for t in tags]
    key = next(k for k in states[0] if "lora_B" in k)
    assert not torch.equal(states[0][key], states[2][key])  # training moved the weights
    avg = average_states(states)
    for k in states[0]:
        torch.testing.assert_close(avg[k], torch.stack([s[k] for s in states]).mean(0), rtol=0, atol=1e-7)
    model, info = load_checkpoint_model(trained_run, average=3)
    assert info["tags"] == tags
    params = dict(model.named_parameters())
    torch.testing.assert_close(params[key].detach(), avg[key], rtol=0, atol=0)
    # best-N follows best.json, the trainer's ranking by validation loss
    best = [b["tag"] for b in read_best(ref.root)][:2]
    assert select_tags(ref, 2, "best") == best and len(best) == 2
    out = export_model(trained_run, tmp_path / "avg", average=2, average_by="best")
    import yaml

    desc = yaml.safe_load((out / "llmasr_model.yaml").read_text())
    assert desc["source"]["tags"] == best
    assert desc["source"]["average"] == {"n": 2, "by": "best"}


def test_average_by_best_with_a_checkpoint_named_is_refused(trained_run, tmp_path, capsys):
    """--average-by best with a tag named had exported best.json's best checkpoint instead, saying nothing."""
    named = trained_run / "checkpoints" / "update_00000001"
    for where, tag in ((named, None), (trained_run, "update_00000001")):
        args = ["--checkpoint", str(where), "--average-by", "best", "--output", str(tmp_path / "out")]
        assert main(args + (["--tag", tag] if tag else [])) == 2
        err = capsys.readouterr().err
        assert "--average-by best takes the best checkpoints of" in err and "not the one named (update_00000001)" in err
        assert not (tmp_path / "out").exists()
    assert main(["--checkpoint", str(trained_run), "--average-by", "best", "--output", str(tmp_path / "out")]) == 0


def test_checkpoint_path_forms(trained_run):
    from llmasr.run_dir import resolve_checkpoint

    assert resolve_checkpoint(trained_run).tag == "update_00000004"
    assert resolve_checkpoint(trained_run / "checkpoints" / "update_00000002").tag == "update_00000002"
    assert resolve_checkpoint(trained_run, "update_00000001").tag == "update_00000001"
    assert resolve_checkpoint(trained_run / "checkpoints").run_dir == trained_run


# ------------------------------------------------------------------------------------------------ errors
def test_missing_tag_and_no_latest(trained_run, tmp_path, copy_run):
    with pytest.raises(CheckpointError, match=r"tag 'update_00000099' not found .*available: update_00000001"):
        load_checkpoint_model(trained_run, tag="update_00000099")
    run = copy_run(trained_run, tmp_path / "run")
    (run / "checkpoints" / "latest").unlink()
    with pytest.raises(CheckpointError, match=r"no 'latest' file.*update_00000004"):
        load_checkpoint_model(run)
    assert main(["--checkpoint", str(run), "--output", str(tmp_path / "x")]) == 2


def test_truncated_checkpoint_file(runs, tmp_path, copy_run):
    for stage, name in ((0, "mp_rank_00_model_states.pt"), (2, "zero_pp_rank_0_mp_rank_00_optim_states.pt")):
        run = copy_run(runs[stage], tmp_path / f"trunc{stage}")
        f = run / "checkpoints" / "update_00000001" / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        with pytest.raises(CheckpointError, match=rf"{name}.*(cannot be read|truncated|corrupt)"):
            load_checkpoint_model(run)


def test_missing_shard(runs, tmp_path, copy_run):
    run = copy_run(runs[3], tmp_path / "partial3")
    (run / "checkpoints" / "update_00000001" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(CheckpointError, match=r"ZeRO-3 checkpoint of world size 1 but 1 model and 0 optimizer shard"):
        load_checkpoint_model(run)
    run = copy_run(runs[2], tmp_path / "partial2")
    (run / "checkpoints" / "update_00000001" / "llmasr_meta.json").unlink()
    with pytest.raises(CheckpointError, match=r"llmasr_meta.json: missing"):
        load_checkpoint_model(run)


def test_mismatched_base_model(train_corpus, tmp_path, base_dirs):
    llm, enc = base_dirs
    own_llm = tmp_path / "llm"
    shutil.copytree(llm, own_llm)
    run = train_run(tmp_path / "run", model_section(own_llm, enc, encoder_lora=False, ctc=False), train_corpus).run_dir
    cfg = json.loads((own_llm / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5 if cfg.get("rms_norm_eps") != 1e-5 else 1e-6
    (own_llm / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"base model changed.*\n  llm/config.json: trained on \w+, now \w+"):
        load_checkpoint_model(run)


def test_same_shape_other_base_weights_are_refused(train_corpus, tmp_path, base_dirs):
    from safetensors.torch import load_file, save_file

    llm, enc = base_dirs
    own_llm = tmp_path / "llm"
    shutil.copytree(llm, own_llm)
    run = train_run(tmp_path / "run", model_section(own_llm, enc, encoder_lora=False, ctc=False), train_corpus).run_dir
    weights = own_llm / "model.safetensors"
    size = weights.stat().st_size
    state = load_file(str(weights))
    name = next(k for k in state if "q_proj.weight" in k)
    state[name] = state[name] + 0.01  # another fine-tune of the same architecture
    save_file(state, str(weights), metadata={"format": "pt"})
    assert weights.stat().st_size == size
    changed = rf"base model changed.*\n  llm/model.safetensors: trained on {size} bytes"
    with pytest.raises(CheckpointError, match=changed):
        load_checkpoint_model(run)
    assert main(["--checkpoint", str(run), "--output", str(tmp_path / "x")]) == 2


def test_trained_tensor_mismatch_names_keys_and_shapes(runs, tmp_path, copy_run):
    run = copy_run(runs[0], tmp_path / "mm")
    tag = run / "checkpoints" / "update_00000001"
    sd = torch.load(tag / "mp_rank_00_model_states.pt", weights_only=False)
    key = next(k for k in sd["module"] if k.startswith("adaptor.") and k.endswith("weight"))
    sd["module"][key] = torch.zeros(3, 3)
    dropped = next(k for k in sd["module"] if "lora_A" in k)
    del sd["module"][dropped]
    sd["module"]["adaptor.bogus"] = torch.zeros(2)
    torch.save(sd, tag / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states.pt: \d+ bytes, but the save wrote"):
        load_checkpoint_model(run)  # the edited file no longer matches its recorded checksum
    meta = json.loads((tag / "llmasr_meta.json").read_text())
    (tag / "llmasr_meta.json").write_text(json.dumps({**meta, "files": hash_share(tag)}))  # as if saved so
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_model(run)
    msg = str(err.value)
    assert f"shape mismatch: {key}: checkpoint [3, 3] vs model [64, " in msg
    assert f"missing from checkpoint: {dropped}" in msg
    assert "unexpected in checkpoint: adaptor.bogus [2]" in msg


def test_output_must_be_new(runs, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    assert main(["--checkpoint", str(runs[0]), "--output", str(tmp_path / "busy")]) == 2
    assert main(["--checkpoint", str(runs[0]), "--output", str(tmp_path / "busy"), "--overwrite"]) == 0
    assert (tmp_path / "busy" / "llmasr_model.yaml").is_file() and not (tmp_path / "busy" / "f").exists()
    # --overwrite replaces a folder, never a file (a file had been replaced by the model folder)
    (tmp_path / "precious.txt").write_text("important")
    assert main(["--checkpoint", str(runs[0]), "--output", str(tmp_path / "precious.txt"), "--overwrite"]) == 2
    assert (tmp_path / "precious.txt").read_text() == "important"


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot write in: mode 555, and immutable (chattr +i) where that alone does not stop
    it (root)."""
    folder = tmp_path / "unwritable"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = os.access(folder, os.W_OK)
    if immutable and (subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0
                      or os.access(folder, os.W_OK)):  # fmt: skip
        pytest.skip("no way to make a folder unwritable for this user here")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_folder_without_write_permission_is_refused_before_the_model_is_built(
    runs, unwritable, monkeypatch, capsys, overwrite
):
    """An existing --output the user may not write in had failed at the last rename, after the whole model was
    rebuilt, merged and written (minutes at real size); it is refused before any weight is read."""
    import llmasr.export.export as export_module

    def no_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the refusal")

    monkeypatch.setattr(export_module, "load_checkpoint_model", no_load)
    args = ["--checkpoint", str(runs[0]), "--output", str(unwritable)] + (["--overwrite"] if overwrite else [])
    assert main(args) == 2
    assert f"--output {unwritable}: no permission to write in this folder" in capsys.readouterr().err
    assert sorted(p.name for p in unwritable.parent.iterdir()) == ["unwritable"]


def test_a_second_export_to_the_same_output_is_refused_while_the_first_writes(runs, tmp_path, capsys):
    """Two exports to one --output had cleared and filled the same staging folder, each deleting the other's files.
    The second is refused at once, naming the output; a lock file a killed export left does not block the next."""
    out = tmp_path / "shared_out"
    with staged_dir.writing(out, flag="--output"):  # the first export, still writing
        assert main(["--checkpoint", str(runs[0]), "--output", str(out)]) == 2
        assert f"--output {out}: another export or conversion is writing it now" in capsys.readouterr().err
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the lock went with its holder
    (tmp_path / ".shared_out.lock").write_text("")  # left by a killed export: no process holds it
    assert main(["--checkpoint", str(runs[0]), "--output", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared_out"]
    load_exported(out)


def test_shard_size_in_bytes_or_with_a_unit_and_refused_before_loading(runs, tmp_path, capsys):
    """--max-shard-size 200000 (bytes) had reached save_pretrained as the string "200000" and failed there, after
    the model was loaded and merged, naming no flag."""
    assert [shard_bytes(v) for v in ("200000", 200000, "5GB", "1.5gb", " 500 MB")] == [
        200000, 200000, 5 * 10**9, 15 * 10**8, 5 * 10**8,
    ]  # fmt: skip
    for bad in ("5GiB", "lots", "0", "-3MB", "1e400"):
        with pytest.raises(ExportError, match=f"--max-shard-size '{bad}': give bytes"):
            shard_bytes(bad)
    out = tmp_path / "sharded"
    assert main(["--checkpoint", str(runs[0]), "--output", str(out), "--max-shard-size", "5GiB"]) == 2
    assert "--max-shard-size '5GiB'" in capsys.readouterr().err and not out.exists()
    nested = tmp_path / "np" / "a" / "out"  # a refused export leaves no folders of its output behind
    assert main(["--checkpoint", str(runs[0]), "--output", str(nested), "--max-shard-size", "5GiB"]) == 2
    assert not (tmp_path / "np").exists()
    assert main(["--checkpoint", str(runs[0]), "--output", str(out), "--max-shard-size", "20000"]) == 0
    assert len(list((out / "llm").glob("model-*.safetensors"))) > 1
    load_exported(out)


def test_an_output_under_home_is_checked_where_it_is_written(runs, tmp_path, monkeypatch, capsys):
    """--output=~/m (a shell leaves `~` after `=`): the checks had looked at ./~/m while the export replaced
    $HOME/m, and with --overwrite a run under $HOME could replace itself."""
    home = tmp_path / "home"
    (home / "m").mkdir(parents=True)
    (home / "m" / "precious.txt").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert main(["--checkpoint", str(runs[0]), "--output=~/m"]) == 2
    assert "--output ~/m: exists and is not empty" in capsys.readouterr().err
    assert (home / "m" / "precious.txt").is_file() and not (tmp_path / "~").exists()
    shutil.copytree(runs[0], home / "run")
    assert main(["--checkpoint", str(home / "run"), "--output=~/run", "--overwrite"]) == 2
    assert "is the training run" in capsys.readouterr().err and (home / "run" / "recipe.yaml").is_file()


def test_an_output_that_is_a_mount_point_is_staged_inside_it(runs, tmp_path, monkeypatch):
    """A mount point's sibling lies on another filesystem, where renaming the staged files into it fails after its
    old files are gone: the export is staged inside it instead, and an export that fails leaves nothing behind."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    (mount / "old.txt").write_text("x")
    monkeypatch.setattr(staged_dir, "_mount_point", lambda where: where == mount.resolve())
    rename = Path.rename

    def across_devices(self, target):  # what the kernel says to a rename into the mount from outside, or out of it
        if Path(target).resolve().is_relative_to(mount) != self.resolve().is_relative_to(mount):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(self))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", across_devices)
    assert main(["--checkpoint", str(runs[0]), "--output", str(mount), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnt"] and not (mount / "old.txt").exists()
    assert not (mount / ".partial").exists()
    load_exported(mount)
    monkeypatch.setattr(staged_dir, "_mount_point", lambda where: False)  # staged beside it: the rename fails
    with pytest.raises(OSError, match="cross-device"):
        main(["--checkpoint", str(runs[0]), "--output", str(mount), "--overwrite"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnt"]  # no .mnt.partial left
    load_exported(mount)  # the export before it, still whole


def test_output_as_the_current_folder_is_written_in_place(runs, tmp_path, monkeypatch):
    """--output . : the export lands in the current folder, which stays (it had been deleted with the export)."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["--checkpoint", str(runs[0]), "--output", "."]) == 0
    assert (here / "llmasr_model.yaml").is_file() and Path.cwd() == here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]
    load_exported(here)


def test_output_over_what_the_run_reads_is_refused(runs, base_dirs, capsys, monkeypatch):
    """--overwrite onto the base LLM (which an --adapter-only export points at) or what holds the encoder would have
    deleted them; refused, naming the recipe key, before any weight is read (a real-size load takes minutes)."""

    def no_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the refusal")

    monkeypatch.setattr("llmasr.export.export.load_checkpoint_model", no_load)
    llm, enc = base_dirs
    for out, key in ((llm, "model.llm.path"), (enc.parent, "model.encoder.path")):
        assert main(["--checkpoint", str(runs[0]), "--output", str(out), "--overwrite", "--adapter-only"]) == 2
        assert f"({key} of the run's recipe), which writing the export would replace" in capsys.readouterr().err
    assert (llm / "config.json").is_file() and (enc / "config.yaml").is_file()


def test_output_over_the_run_itself_is_refused(runs, capsys):
    """--overwrite replaces the output folder whole: the run being exported (or what holds it, or its checkpoints)
    is never that folder."""
    run = runs[0]
    for out, why in ((run, "is"), (run.parent, "holds"), (run / "checkpoints" / "x", "lies in")):
        assert main(["--checkpoint", str(run), "--output", str(out), "--overwrite"]) == 2
        assert f"--output {out}: {why} the training run {run.resolve()} being exported" in capsys.readouterr().err
    assert list_tags(run / "checkpoints") and (run / "recipe.yaml").is_file()


def test_the_chat_template_variables_travel_with_the_export(exported_dir, tmp_path):
    """model.prompt.template_kwargs (Qwen3's enable_thinking) are written into llmasr_model.yaml and the loaded
    export renders its prompts with them, as training did."""
    import yaml

    from llmasr.export.exported import MODEL_FILE

    out = tmp_path / "model"
    shutil.copytree(exported_dir, out)
    desc = yaml.safe_load((out / MODEL_FILE).read_text(encoding="utf-8"))
    assert desc["prompt"]["template_kwargs"] == {}
    desc["prompt"]["template_kwargs"] = {"enable_thinking": False}
    (out / MODEL_FILE).write_text(yaml.safe_dump(desc), encoding="utf-8")
    assert load_exported(out).prompt.template_kwargs == {"enable_thinking": False}


def test_an_overwrite_cut_short_leaves_the_old_export_whole(runs, tmp_path, monkeypatch):
    """Publishing into an existing OUT had deleted the old export, then moved the new files in one by one, the
    completion marker (llmasr_model.yaml) among the first: cut short, OUT held a marker and a part of a model, the old
    export gone. Now the old files wait aside until the new ones are in, the marker moves last, and a move that fails
    puts the old export back."""
    out = tmp_path / "m"
    assert main(["--checkpoint", str(runs[0]), "--output", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    rename, moved = Path.rename, []

    def cut_short(self, target):
        if self.parent.name == ".m.partial":  # a new file going into OUT
            moved.append(self.name)
            if len(moved) == 2:
                raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", cut_short)
    with pytest.raises(KeyboardInterrupt):
        main(["--checkpoint", str(runs[2]), "--output", str(out), "--overwrite"])
    monkeypatch.setattr(Path, "rename", rename)
    assert "llmasr_model.yaml" not in moved  # the marker had not gone in: it goes last
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging or aside folder left
    load_exported(out)
    moved.clear()
    monkeypatch.setattr(Path, "rename", lambda self, target: (moved.append(self.name), rename(self, target))[1])
    assert main(["--checkpoint", str(runs[2]), "--output", str(out), "--overwrite"]) == 0
    new = [name for name in moved if (out / name).exists()]
    assert new[-1] == "llmasr_model.yaml" and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_full_disk_during_export_names_the_folder_and_its_free_space(runs, tmp_path, monkeypatch, capsys):
    """safetensors reports a full disk as "I/O error: No space left on device (os error 28)", not an OSError: the
    export had printed that line alone, naming no folder and no free space."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    from llmasr.cli import main as cli

    monkeypatch.setattr("safetensors.torch.save_file", full)
    out = tmp_path / "m"
    assert cli(["export", "--checkpoint", str(runs[0]), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / '.m.partial'}: No space left on device while writing it (" in err
    assert "MiB free there" in err and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


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
