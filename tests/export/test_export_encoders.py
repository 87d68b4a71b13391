"""Export of Conformer and Whisper encoders: the reloaded directory computes what the trained model computes, decodes
like the checkpoint does, and a branch whose frozen weights were random is refused instead of silently redrawn."""

from __future__ import annotations

import json

import pytest
import torch

from llmasr.commands.decode import main as decode_main
from llmasr.commands.export import main as export_main
from llmasr.export.export import export_model, load_checkpoint_model
from llmasr.models.exported import load_exported, read_description
from llmasr.run_dir import CheckpointError
from llmasr.testing.run_dirs import TARGETS, model_section, train_run, write_corpus
from llmasr.testing.tiny_recipe import random_batch, speech_logits

KINDS = ("conformer", "whisper")
ENCODER_LORA = {"conformer": ["linear_q", "linear_v"], "whisper": ["q_proj", "v_proj"]}
CLASS = {"conformer": "ConformerEncoder", "whisper": "WhisperAudioEncoder"}
FRAMES = [40, 52, 64, 30]  # distinct lengths: padding and per-utterance masks are exercised
WHISPER_CONF = {
    "num_mel_bins": 80,
    "d_model": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "max_source_positions": 100,
}
FBANK_80 = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10}
FBANK_80.update(lfr_m=1, lfr_n=1)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from llmasr.testing.tiny_funasr import write_funasr_dir
    from llmasr.testing.tiny_llm import write_tiny_llm_dir
    from llmasr.testing.tiny_whisper import tiny_conformer_conf, write_tiny_whisper_dir

    root = tmp_path_factory.mktemp("enc_bases")
    return {
        "llm": write_tiny_llm_dir(root / "llm"),
        "conformer": write_funasr_dir(
            root / "conformer",
            encoder_type="ConformerEncoder",
            encoder_conf=tiny_conformer_conf(80),
            frontend_conf=FBANK_80,
        ),
        "whisper": write_tiny_whisper_dir(root / "whisper"),
    }


def pretrained_section(bases, kind: str) -> dict:
    """Pretrained encoder directory with LoRA (Whisper's base frozen; the Conformer's trained too, so that its
    BatchNorm statistics move); LoRA on the LLM; CTC head."""
    section = model_section(bases["llm"], bases[kind])
    section["encoder"]["type"] = kind
    section["encoder"]["lora"]["target_modules"] = ENCODER_LORA[kind]
    section["encoder"]["freeze"] = kind == "whisper"
    if kind == "whisper":
        section["encoder"]["conf"] = {}  # the FunASR dropout names mean nothing to Whisper (dropouts default to 0)
    return section


def fresh_section(bases, kind: str) -> dict:
    """Encoder built from `conf` with fresh weights, fully trained (no `path`)."""
    from llmasr.testing.tiny_whisper import tiny_conformer_conf

    section = model_section(bases["llm"], None, encoder_lora=False)
    enc = section["encoder"]
    enc.update(type=kind, freeze=False)
    if kind == "whisper":
        enc.update(conf=dict(WHISPER_CONF), frontend={})
    else:
        enc.update(conf={**tiny_conformer_conf(80), "dropout_rate": 0.0, "positional_dropout_rate": 0.0})
        enc["frontend"] = {"n_mels": 80}
    return section


@pytest.fixture(scope="module")
def trained(bases, train_corpus, tmp_path_factory):
    """kind -> (RUN_DIR trained 2 updates under ZeRO-2, its fp32 export)."""
    out = {}
    for kind in KINDS:
        root = tmp_path_factory.mktemp(f"trained_{kind}")
        run = train_run(root / "run", pretrained_section(bases, kind), train_corpus, preset="zero2", updates=2).run_dir
        out[kind] = (run, export_model(run, root / "model", dtype="fp32"))
    return out


def compare(ref, model, *, seed: int) -> None:
    """Encoder, adaptor, CTC head and LLM logits of `model` equal those of `ref` (1e-5)."""
    batch = random_batch(ref, TARGETS, frames=FRAMES, seed=seed)
    with torch.no_grad():
        got = model.encode_audio(batch.feats, batch.feat_lens)
        want = ref.encode_audio(batch.feats, batch.feat_lens)
        for name, a, b in zip(("encoder", "encoder lengths", "adaptor", "adaptor lengths"), got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(model.ctc_head(got[0], got[1]), ref.ctc_head(want[0], want[1]), rtol=0, atol=1e-5)
        torch.testing.assert_close(speech_logits(model, batch), speech_logits(ref, batch), rtol=0, atol=1e-5)
        torch.testing.assert_close(model(batch).loss, ref(batch).loss, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_reloaded_export_equals_the_trained_model(trained, kind):
    run, out = trained[kind]
    ref, _ = load_checkpoint_model(run)
    assert any("lora_" in n for n, _ in ref.encoder.named_parameters())  # encoder LoRA is merged by the export
    model = load_exported(out)  # what `llmasr decode --model DIR` loads
    assert type(model.encoder).__name__ == CLASS[kind]
    assert not any("lora_" in n for n, _ in model.named_parameters())
    desc = read_description(out)
    assert desc["encoder"]["type"] == kind and desc["encoder"]["class"] == CLASS[kind]
    fe_ref, fe_got = json.loads(json.dumps(vars(ref.frontend))), json.loads(json.dumps(vars(model.frontend)))
    if kind == "conformer":  # the fbank frontend's CMVN file travels with the export
        assert fe_got.pop("cmvn_file") == str(out / "am.mvn")
        assert (out / "am.mvn").read_bytes() == open(fe_ref.pop("cmvn_file"), "rb").read()
    else:
        assert fe_got["kind"] == "whisper" and fe_got["chunk_seconds"] == 2.0 and fe_got["cmvn_file"] is None
    assert fe_got == fe_ref
    compare(ref, model, seed=5)


def test_a_whisper_export_holds_the_encoder_settings_only_and_older_ones_still_load(trained, tmp_path):
    """The export's encoder conf holds the WhisperConfig keys the encoder reads; an export an older llmasr wrote
    (the whole WhisperConfig: decoder keys, apply_spec_augment) loads to the same model, though a recipe may not
    set such keys."""
    import shutil

    import yaml
    from transformers import WhisperConfig

    from llmasr.models.exported import MODEL_FILE
    from llmasr.models.whisper import ENCODER_KEYS

    run, out = trained["whisper"]
    desc = read_description(out)
    assert set(desc["encoder"]["conf"]) == set(ENCODER_KEYS)
    old = tmp_path / "old_export"
    shutil.copytree(out, old)
    raw = yaml.safe_load((old / MODEL_FILE).read_text())
    raw["encoder"]["conf"] = {**WhisperConfig(**desc["encoder"]["conf"]).to_dict(), "apply_spec_augment": True}
    (old / MODEL_FILE).write_text(yaml.safe_dump(raw))
    compare(load_exported(out), load_exported(old), seed=6)


def test_conformer_batchnorm_statistics_are_exported(trained, bases):
    """The Conformer's base trains beside its LoRA, so its BatchNorm statistics move; they are buffers, not trained
    parameters, and must come across all the same (a frozen base keeps them: tests/models/test_speech_llm.py)."""
    run, out = trained["conformer"]
    ref, _ = load_checkpoint_model(run)
    model = load_exported(out)
    base = torch.load(bases["conformer"] / "model.pt", weights_only=True)
    got = dict(model.encoder.named_buffers())
    names = [n for n in got if n.endswith(("running_mean", "running_var"))]
    assert names
    for name in names:
        ref_buf = ref.encoder.get_buffer(name)
        assert not torch.allclose(base[f"encoder.{name}"], ref_buf)  # training moved them
        torch.testing.assert_close(got[name], ref_buf, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_decoding_the_export_equals_decoding_the_checkpoint(trained, kind, tmp_path):
    run, out = trained[kind]
    texts = ["zero one two", "three four", "five six"]
    corpus = write_corpus(tmp_path / "data", texts)
    common = ["--data", str(corpus), "--max-new-tokens", "4", "--num-workers", "0", "--device", "cpu", "--beam", "1"]
    assert decode_main(["--model", str(out), "--output", str(tmp_path / "m"), *common]) == 0
    assert decode_main(["--checkpoint", str(run), "--output", str(tmp_path / "c"), *common]) == 0
    hyp_m = (tmp_path / "m" / "hyp.txt").read_text().splitlines()
    assert hyp_m == (tmp_path / "c" / "hyp.txt").read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in hyp_m] == ["test000", "test001", "test002"]
    assert any(len(line.split(" ", 1)) > 1 for line in hyp_m)  # something was generated
    summary = json.loads((tmp_path / "m" / "wer.json").read_text())
    assert summary["utterances"] == len(texts) and summary["skipped"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_built_from_conf_exports_under_zero3(bases, train_corpus, kind, tmp_path, caplog):
    """An encoder without a pretrained directory, trained fully: described from its conf (no FunASR config.yaml
    to read), and equal to the trainer's own model (its tensors, not the checkpoint reader's). Whisper's frozen
    sinusoidal positions are not random and do not block the export. The log line of its build, shared by the
    run's start and the export, had said "built from conf with fresh weights", as if the export's were."""
    with caplog.at_level("INFO", logger="llmasr.models.builder"):
        run = train_run(tmp_path / "run", fresh_section(bases, kind), train_corpus, preset="zero3")
        built = f"{kind} encoder built from conf with random initial weights (no model.encoder.path or init_from): "
        assert built + "a new run trains it from these; " in caplog.text
        caplog.clear()
        out = export_model(run.run_dir, tmp_path / "model", dtype="fp32")
    assert "a checkpoint read next (a resume, llmasr export, decode --checkpoint) replaces them" in caplog.text
    assert "fresh weights" not in caplog.text
    ref = run.reference_model()
    if kind == "whisper":
        assert not ref.encoder.encoder.embed_positions.weight.requires_grad
    desc = read_description(out)
    assert desc["encoder"]["class"] == CLASS[kind]
    if kind == "whisper":
        assert {k: desc["encoder"]["conf"][k] for k in WHISPER_CONF} == WHISPER_CONF
    else:
        assert desc["encoder"]["conf"]["input_size"] == 80 and desc["encoder"]["conf"]["cnn_module_kernel"] == 15
    compare(ref, load_exported(out), seed=9)


def test_frozen_random_branches_are_refused(bases, train_corpus, tmp_path):
    """A frozen encoder built from conf (LoRA on top) and a frozen fresh adaptor hold random weights that no file
    keeps: rebuilding would draw new ones, so export and checkpoint decoding refuse, naming branch and tensors."""
    section = fresh_section(bases, "conformer")
    section["encoder"].update(freeze=True, lora={"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["linear_q"]})
    section["adaptor"]["freeze"] = True
    run = train_run(tmp_path / "run", section, train_corpus).run_dir
    # the recipe's optim.branches.adaptor changes nothing, and train.log says so
    assert "optim.branches.adaptor: sets lr, but the adaptor branch trains nothing" in (run / "train.log").read_text()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_model(run)
    msg = str(err.value)
    assert "cannot be rebuilt" in msg
    assert "model.encoder: " in msg and "frozen parameter(s) with random initial values: encoder.embed." in msg
    assert "model.adaptor: " in msg and "adaptor." in msg
    assert "lora_" not in msg  # the trained LoRA tensors are in the checkpoint
    assert export_main(["--checkpoint", str(run), "--output", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_an_export_that_records_no_min_frames_gets_the_conformers(trained, tmp_path):
    """Exports written before the frontend recorded `min_frames` (the fewest frames a Conformer's subsampling takes)
    get it from the encoder's recorded input_layer when rebuilt, so decoding names a too-short clip as bad."""
    import shutil

    import yaml

    from llmasr.models.encoder_spec import encoder_frontend
    from llmasr.models.exported import exported_model_config

    _, out = trained["conformer"]
    old = tmp_path / "old"
    shutil.copytree(out, old)
    desc = yaml.safe_load((old / "llmasr_model.yaml").read_text())
    assert desc["frontend"].pop("min_frames") == 7
    (old / "llmasr_model.yaml").write_text(yaml.safe_dump(desc, allow_unicode=True))
    assert encoder_frontend(exported_model_config(old).encoder).min_frames == 7
    assert load_exported(old).frontend.min_frames == 7
