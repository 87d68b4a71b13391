"""The hand-off the toolkit exists for, on tiny data that needs no espeak-ng: the real trainer writes a run
directory, the real export turns its newest checkpoint into a model directory, and the real decode transcribes a
manifest with it. The exported model must compute what the trainer's model computed."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from llmasr.export.decode import decode_manifest, load_decode_model
from llmasr.export.export import export_model, load_checkpoint_model
from llmasr.models.exported import load_exported
from llmasr.run_dir import checkpoints_dir, latest, read_meta
from llmasr.scoring import score_corpus
from llmasr.testing.run_dirs import TARGETS, model_section, train_run, write_corpus
from llmasr.testing.tiny_recipe import random_batch, speech_logits

TEXTS = ["zero one two", "three four", "five six seven eight", "nine", "one one", "two three four five"]


@pytest.fixture(scope="module")
def handed_off(tiny_llm_dir, tiny_encoder_dir, tmp_path_factory):
    """(TrainedRun of 3 ZeRO-2 updates with validation, its fp32 export, the decode manifest)."""
    root = tmp_path_factory.mktemp("handoff")
    train_m = write_corpus(root / "train", TEXTS * 2, name="train")
    test_m = write_corpus(root / "test", TEXTS[:4], name="test")
    run = train_run(root / "run", model_section(tiny_llm_dir, tiny_encoder_dir), train_m, preset="zero2", updates=3,
                    valid=test_m, save_every_updates=1)  # fmt: skip
    return run, export_model(run.run_dir, root / "model", dtype="fp32"), test_m


def test_the_export_computes_what_the_trainer_trained(handed_off):
    run, out, _ = handed_off
    ckpts = checkpoints_dir(run.run_dir)
    assert latest(ckpts) == "update_00000003" and read_meta(ckpts / "update_00000003").update == 3
    trainer_model = run.reference_model()  # the trainer's tensors after update 3, no checkpoint file involved
    exported = load_exported(out)
    batch = random_batch(trainer_model, TARGETS, seed=2)
    want = speech_logits(trainer_model, batch)
    torch.testing.assert_close(speech_logits(exported, batch), want, rtol=0, atol=1e-5)
    from_checkpoint, info = load_checkpoint_model(run.run_dir)  # what `decode --checkpoint` loads
    assert info["tags"] == ["update_00000003"]
    torch.testing.assert_close(speech_logits(from_checkpoint, batch), want, rtol=0, atol=1e-5)
    with torch.no_grad():
        enc, lens = trainer_model.encoder(batch.feats, batch.feat_lens)
        got = exported.ctc_head(*exported.encoder(batch.feats, batch.feat_lens))
        torch.testing.assert_close(got, trainer_model.ctc_head(enc, lens), rtol=0, atol=1e-5)


def test_decoding_the_export_writes_scored_transcripts(handed_off, tmp_path):
    run, out, manifest = handed_off
    model, cfg, opts = load_decode_model(model_dir=out)
    cfg, opts = dataclasses.replace(cfg, max_new_tokens=5), dataclasses.replace(opts, num_workers=0)
    summary = decode_manifest(model, manifest, tmp_path / "m", cfg, opts)

    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows = [json.loads(line) for line in (tmp_path / "m" / "results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == [line["key"] for line in lines]
    assert [r["ref"] for r in rows] == [line["target"] for line in lines]
    hyp_lines = [line.rstrip() for line in (tmp_path / "m" / "hyp.txt").read_text().splitlines()]
    assert hyp_lines == [f"{r['key']} {r['hyp']}".rstrip() for r in rows]
    assert (tmp_path / "m" / "ref.txt").read_text().splitlines() == [f"{r['key']} {r['ref']}" for r in rows]
    corpus, _ = score_corpus([(r["ref"], r["hyp"]) for r in rows])
    on_disk = json.loads((tmp_path / "m" / "wer.json").read_text())
    assert on_disk["utterances"] == summary["utterances"] == len(lines) and on_disk["skipped"] == 0
    assert on_disk["rate"] == pytest.approx(corpus.rate) and on_disk["errors"] == corpus.errors
    assert (tmp_path / "m" / "wer.txt").read_text().startswith(f"{manifest.name}: ")

    # The run's checkpoint, decoded without exporting, transcribes the same.
    model, cfg, opts = load_decode_model(checkpoint=run.run_dir)
    cfg, opts = dataclasses.replace(cfg, max_new_tokens=5), dataclasses.replace(opts, num_workers=0)
    decode_manifest(model, manifest, tmp_path / "c", cfg, opts)
    assert (tmp_path / "c" / "hyp.txt").read_text() == (tmp_path / "m" / "hyp.txt").read_text()
