"""Paraformer-streaming and SenseVoiceSmall directories end to end: a run trained from them (encoder frozen with
LoRA, ZeRO-2) exports, and the exported directory rebuilds the same encoder class (streaming chunk settings and
SenseVoice's CMVN, mapped by configuration.json, included) and computes what the trained model computes. The
SenseVoice run keeps SenseVoiceSmall's query frames and trains its own CTC head (its sentencepiece vocabulary,
blank <unk>): the export carries both."""

from __future__ import annotations

import pytest
import torch

from llmasr.export.export import export_model, load_checkpoint_model
from llmasr.models.exported import load_exported, read_description
from llmasr.models.sanm_chunk import ChunkSettings
from llmasr.testing.run_dirs import TARGETS, model_section, train_run
from llmasr.testing.tiny_funasr import SENSEVOICE_BPE, tiny_sensevoice_conf, tiny_streaming_conf, write_funasr_dir
from llmasr.testing.tiny_recipe import random_batch, speech_logits

FAMILIES = {  # recipe type, FunASR model, encoder_conf, class llmasr builds
    "streaming": ("paraformer", "ParaformerStreaming", tiny_streaming_conf(), "SANMEncoder"),
    "sensevoice": ("sensevoice", "SenseVoiceSmall", tiny_sensevoice_conf(), "SenseVoiceEncoderSmall"),
}


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    return write_tiny_llm_dir(tmp_path_factory.mktemp("llm"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trained_from_a_zoo_directory_exports_and_reloads(family, llm_dir, train_corpus, tmp_path):
    kind, model, conf, cls = FAMILIES[family]
    enc_dir = write_funasr_dir(tmp_path / model, model=model, encoder_conf=conf, seed=4)
    section = model_section(llm_dir, enc_dir)
    section["encoder"]["type"] = kind
    if family == "sensevoice":  # as SenseVoiceSmall runs itself: its query frames, its own CTC head
        section["encoder"]["conf"]["queries"] = {"language": "en", "itn": True}
        section["ctc"] = {"weight": 0.3, "from_encoder": True}  # the run's saved recipe holds what it derived
    run = train_run(tmp_path / "run", section, train_corpus, preset="zero2").run_dir
    out = export_model(run, tmp_path / "model", dtype="fp32")
    desc = read_description(out)
    assert (desc["encoder"]["type"], desc["encoder"]["class"]) == (kind, cls)
    ref, _ = load_checkpoint_model(run)
    got = load_exported(out)
    assert type(got.encoder).__name__ == cls
    assert (out / "am.mvn").read_bytes() == (enc_dir / "am.mvn").read_bytes()
    if family == "streaming":
        assert got.encoder.chunk == ChunkSettings.from_conf(conf) and got.encoder.chunk.chunk_size == (12, 15)
        assert desc["encoder"]["conf"]["chunk_size"] == [12, 15]
        assert (
            desc["encoder"]["conf"]["context"] == "chunked" and got.encoder.context == ref.encoder.context == "chunked"
        )
    else:
        assert desc["encoder"]["conf"]["queries"] == {"language": "en", "itn": True} and desc["ctc"]["blank"] == "<unk>"
        assert got.encoder.query_ids.tolist() == [4, 1, 2, 14] and got.ctc_tokenizer.blank_id == 0
        assert (out / desc["ctc"]["vocab"]).read_bytes() == (enc_dir / SENSEVOICE_BPE).read_bytes()
    batch = random_batch(ref, TARGETS, frames=[30, 41, 25, 36], seed=3)
    with torch.no_grad():
        for a, b in zip(got.encode_audio(batch.feats, batch.feat_lens), ref.encode_audio(batch.feats, batch.feat_lens)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(speech_logits(got, batch), speech_logits(ref, batch), rtol=0, atol=1e-5)
        enc, lens = ref.encode_audio(batch.feats, batch.feat_lens)[:2]
        torch.testing.assert_close(got.ctc_head(enc, lens), ref.ctc_head(enc, lens), rtol=0, atol=1e-5)
