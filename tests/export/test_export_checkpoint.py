"""Export's reading of a run's checkpoints: the path forms and tags it takes, averaging, and every damaged or
mismatched checkpoint refused with a clear error."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from llmasr.commands.export import main
from llmasr.export.export import export_model, load_checkpoint_model
from llmasr.models.exported import read_description
from llmasr.run_dir import CheckpointError
from llmasr.run_dir.files import hash_share
from llmasr.testing.run_dirs import model_section, train_run


def test_averaging_equals_mean_of_tensors(trained_run, tmp_path):
    from llmasr.export.trained_model import average_states
    from llmasr.run_dir import read_best, read_meta, resolve_checkpoint, select_tags
    from llmasr.train.ds_files import read_trained_state

    ref = resolve_checkpoint(trained_run)
    assert ref.tag == "update_00000004"
    tags = select_tags(ref, 3, "last")
    assert tags == ["update_00000002", "update_00000003", "update_00000004"]
    states = [read_trained_state(ref.root / t, read_meta(ref.root / t)) for t in tags]
    key = next(k for k in states[0] if k.startswith("adaptor.") and k.endswith("weight"))
    assert not torch.equal(states[0][key], states[2][key])  # training moved the weights
    avg = average_states(states)
    for k in states[0]:
        torch.testing.assert_close(avg[k], torch.stack([s[k] for s in states]).mean(0), rtol=0, atol=1e-7)
    model, info = load_checkpoint_model(trained_run, average=3)
    assert info["tags"] == tags
    params = dict(model.named_parameters())  # trained tensors but LoRA's (tests/export/test_lora_average.py)
    torch.testing.assert_close(params[key].detach(), avg[key], rtol=0, atol=0)
    # best-N follows best.json, the trainer's ranking by validation loss
    best = [b["tag"] for b in read_best(ref.root)][:2]
    assert select_tags(ref, 2, "best") == best and len(best) == 2
    out = export_model(trained_run, tmp_path / "avg", average=2, average_by="best")
    import yaml

    desc = yaml.safe_load((out / "llmasr_model.yaml").read_text())
    assert desc["source"]["tags"] == best
    assert desc["source"]["average"] == {"n": 2, "by": "best"}


def test_average_by_best_of_a_run_that_ranked_nothing_says_why(trained_run, tmp_path, capsys):
    """A run without validation data keeps an empty best.json: this had said "only 0 are available ...: none"."""
    run = shutil.copytree(trained_run, tmp_path / "run")
    (run / "checkpoints" / "best.json").write_text("[]\n")
    assert (
        main(["--checkpoint", str(run), "--average", "2", "--average-by", "best", "--output", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err
    assert f"{run / 'checkpoints' / 'best.json'} ranks no checkpoint: the run has no validation result" in err
    assert "(--average 2 without --average-by best)" in err and not (tmp_path / "o").exists()


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


def test_the_latest_file_names_the_newest_checkpoint(trained_run, tmp_path, copy_run):
    """`--checkpoint RUN/checkpoints/latest`, DeepSpeed's pointer file, is the checkpoint it names: it had been
    refused as "not a run directory and not a checkpoint tag directory", naming neither form to give instead."""
    from llmasr.run_dir import resolve_checkpoint

    latest = trained_run / "checkpoints" / "latest"
    assert resolve_checkpoint(latest).tag == "update_00000004"
    assert resolve_checkpoint(latest).run_dir == trained_run
    run = copy_run(trained_run, tmp_path / "run")
    (run / "checkpoints" / "latest").write_text("update_00000002")
    assert resolve_checkpoint(run / "checkpoints" / "latest").tag == "update_00000002"
    assert main(["--checkpoint", str(latest), "--output", str(tmp_path / "out")]) == 0


def test_a_path_that_is_neither_a_run_nor_a_checkpoint_says_which_forms_are(tmp_path):
    from llmasr.run_dir import resolve_checkpoint

    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"give RUN_DIR .*RUN_DIR/checkpoints/update_N"):
        resolve_checkpoint(tmp_path / "notes.txt")


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


def test_a_save_killed_before_it_named_itself_latest_is_the_one_exported(trained_run, tmp_path, copy_run, caplog):
    """A save writes its meta, then `latest`; a job killed between the two leaves the newest checkpoint complete but
    unnamed, the one a resume continues from. RUN_DIR had exported the save before it, silently (and --average 2
    counted one checkpoint): it exports the newest, saying so; a `latest` pointed back by hand is still obeyed."""
    run = copy_run(trained_run, tmp_path / "run")
    ckpts = run / "checkpoints"
    (ckpts / "latest").write_text("update_00000003")
    os.utime(ckpts / "update_00000004" / "llmasr_meta.json")  # written before `latest` would have been
    with caplog.at_level("WARNING", logger="llmasr"):
        assert main(["--checkpoint", str(run), "--output", str(tmp_path / "out"), "--average", "2"]) == 0
    assert read_description(tmp_path / "out")["source"]["tags"] == ["update_00000003", "update_00000004"]
    said = [r for r in caplog.records if "update_00000004" in r.getMessage() and "latest" in r.getMessage()]
    assert len(said) == 1  # once, though export looks the checkpoint up twice
    from llmasr.run_dir import resolve_checkpoint

    assert resolve_checkpoint(ckpts / "latest").tag == "update_00000003"  # the pointer file named: what it names
    (ckpts / "latest").write_text("update_00000003")  # pointed back after the saves: obeyed
    assert main(["--checkpoint", str(run), "--output", str(tmp_path / "back")]) == 0
    assert read_description(tmp_path / "back")["source"]["tags"] == ["update_00000003"]


def test_a_run_s_max_new_tokens_0_exports_as_the_cap_by_duration(runs, tmp_path, copy_run):
    """A recipe's `decode.max_new_tokens: 0` means what `--max-new-tokens 0` does, the cap by duration: the export
    saves it unset (null) and decodes by duration; it had been refused ("must be >= 1 (or unset: by duration)")."""
    import yaml

    from llmasr.export.decode import load_decode_model

    run = copy_run(runs[2], tmp_path / "run")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["decode"]["max_new_tokens"] = 0
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["--checkpoint", str(run), "--output", str(tmp_path / "out")]) == 0
    assert read_description(tmp_path / "out")["decode"]["max_new_tokens"] is None
    cfg = load_decode_model(tmp_path / "out")[1]
    assert cfg.max_new_tokens is None and cfg.new_token_cap(2.0) == 2 * cfg.tokens_per_second + 8
