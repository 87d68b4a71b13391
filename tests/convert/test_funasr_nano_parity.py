"""`llmasr convert funasr`: the converted Fun-ASR-Nano decodes as FunASR does.

Always on: tests/fixtures/funasr_nano_parity.pt (written by tests/fixtures/make_nano_fixture.py with FunASR's own
FunASRNano): the converted model's greedy ids on the pinned features equal FunASR's, batched and one by one, and
its logits over each answer are FunASR's.
Opt-in (LLMASR_PARITY=1 and funasr importable): the same on a fresh directory, against FunASR now.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from llmasr.convert.funasr_nano import convert_funasr
from llmasr.data.collate import Collator
from llmasr.models.exported import load_exported
from llmasr.testing.tiny_nano import write_nano_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


FIXTURE = FIXTURES / "funasr_nano_parity.pt"


def feature_batch(model, feats: list[torch.Tensor], hotwords: list[list[str]] | None = None):
    """An inference batch of the given features (and each one's hotword list), through the prompt builder and
    collator decoding uses."""
    prompts = [model.prompt.encode(None, hotwords=h) for h in hotwords or [[]] * len(feats)]
    items = [
        {"key": f"utt{i}", "index": i, "feats": f.numpy().astype(np.float32), "target": "x",
         "text_ids": np.asarray(enc.ids, dtype=np.int64), "audio_pos": enc.audio_pos,
         "target_start": enc.target_start, "ctc_ids": None, "duration": 1.0, "hotwords": enc.hotwords}
        for i, (f, enc) in enumerate(zip(feats, prompts, strict=True))
    ]  # fmt: skip
    return Collator(model.prompt.pad_id)(items)


def until_end(ids: list[int], end_id: int) -> list[int]:
    return ids[: ids.index(end_id) + 1] if end_id in ids else ids


def check_parity(
    src: Path, out: Path, feats: list[torch.Tensor], expected: list[list[int]], max_new: int, hotwords=None
) -> None:
    if not out.exists():
        convert_funasr(src, out)
    model = load_exported(out)
    end = model.prompt.end_id
    # FunASR's greedy search has no repetition stop (the random stand-in loops), so ours runs without it too.
    search = {"max_new_tokens": max_new, "repeat_limit": 0}
    batched = model.generate_ids(feature_batch(model, feats, hotwords), **search)
    alone = [model.generate_ids(feature_batch(model, [f], hotwords and [hotwords[i]]), **search)[0]
             for i, f in enumerate(feats)]  # fmt: skip
    for i, ref in enumerate(expected):
        assert until_end(batched[i], end) == until_end(ref, end), f"utterance {i} batched"
        assert until_end(alone[i], end) == until_end(ref, end), f"utterance {i} alone"


def check_ctc_parity(out: Path, feats: list[torch.Tensor], log_probs: list[torch.Tensor], texts: list[str]) -> None:
    """The converted CTC head's log-probabilities (alone and batched; FunASR's are stored as float16) and greedy texts
    are FunASR's (less its special tokens' tags)."""
    model = load_exported(out)
    with torch.no_grad():
        batch = feature_batch(model, feats)
        enc, enc_lens, _, _ = model.encode_audio(batch.feats, batch.feat_lens)
        batched = model.ctc_head(enc, enc_lens)
        one = [feature_batch(model, [f]) for f in feats]
        alone = [model.ctc_head(*model.encode_audio(b.feats, b.feat_lens)[:2]) for b in one]
    for i, ref in enumerate(log_probs):
        assert int(enc_lens[i]) == ref.shape[0]
        torch.testing.assert_close(batched[i, : ref.shape[0]], ref.float(), atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(alone[i][0], ref.float(), atol=1e-3, rtol=1e-3)
    # FunASR writes a special token's tag (<|startoftranscript|>, <|en|>, ...) into its text; llmasr drops them
    assert model.ctc_texts(batched, enc_lens) == [re.sub(r"<\|[^|]*\|>", "", t) for t in texts]


def unpack_fixture(fixture: dict, src: Path) -> Path:
    for name, text in fixture["files"].items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text, encoding="utf-8")
    torch.save({"state_dict": fixture["state_dict"]}, src / "model.pt")
    return src


def test_pinned_funasr_greedy_ids(tmp_path):
    fixture = torch.load(FIXTURE, weights_only=True)
    assert FIXTURE.stat().st_size < 400_000
    assert len({tuple(i) for i in fixture["ids"]}) == len(fixture["ids"]), "the ids must depend on the audio"
    src = unpack_fixture(fixture, tmp_path / "nano")
    check_parity(src, tmp_path / "out", fixture["feats"], fixture["ids"], fixture["max_new"])
    check_ctc_parity(tmp_path / "out", fixture["feats"], fixture["ctc_log_probs"], fixture["ctc_texts"])


def test_pinned_funasr_logits_with_the_rotary_frequencies_funasr_rounds(tmp_path):
    """FunASR casts Nano's LLM to llm_conf.llm_dtype (bf16) as it builds it, rounding the rotary frequencies it decodes
    and trains with; the converted LLM computes with the same ones (model.llm.rotary_dtype), so on FunASR's prompt
    embeddings followed by its greedy ids its logits over the answer are FunASR's (exact frequencies: ~5e-3 apart)."""
    fixture = torch.load(FIXTURE, weights_only=True)
    src = unpack_fixture(fixture, tmp_path / "nano")
    convert_funasr(src, tmp_path / "out")
    llm = load_exported(tmp_path / "out").llm
    for prompt, ids, want in zip(fixture["prompt_embeds"], fixture["ids"], fixture["logits"], strict=True):
        with torch.no_grad():
            answer = llm.get_input_embeddings()(torch.tensor([ids]))
            logits = llm(inputs_embeds=torch.cat([prompt[None], answer], 1)).logits[0]
        torch.testing.assert_close(logits[prompt.shape[0] - 1 :], want, atol=2e-5, rtol=0)


def test_pinned_funasr_greedy_ids_with_hotwords_in_nanos_own_prompt(tmp_path):
    """An utterance's hotwords go into the prompt as FunASRNano.get_prompt writes them, so the ids are FunASR's."""
    fixture = torch.load(FIXTURE, weights_only=True)
    assert fixture["ids_hotwords"][:2] != fixture["ids"][:2], "the lists must change the output"
    src = unpack_fixture(fixture, tmp_path / "nano")
    check_parity(src, tmp_path / "out", fixture["feats"], fixture["ids_hotwords"], fixture["max_new"],
                 fixture["hotwords"])  # fmt: skip


def test_pinned_funasr_ctc_tokenizer_ids(tmp_path):
    """The converted CTC vocabulary encodes as FunASR's SenseVoiceTokenizer (tiktoken) does, and decodes back."""
    fixture = torch.load(FIXTURE, weights_only=True)
    src = unpack_fixture(fixture, tmp_path / "nano")
    convert_funasr(src, tmp_path / "out")
    tok = load_exported(tmp_path / "out").ctc_tokenizer
    for text, ids in zip(fixture["ctc_encode_texts"], fixture["ctc_encoded"], strict=True):
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == text
    assert any(
        len(ids) < len(text.encode("utf-8")) for text, ids in zip(fixture["ctc_encode_texts"], fixture["ctc_encoded"])
    )  # merges ran


@pytest.mark.parity
@pytest.mark.skipif(
    os.environ.get("LLMASR_PARITY") != "1" or importlib.util.find_spec("funasr") is None,
    reason="opt-in: set LLMASR_PARITY=1 and install funasr (see tests/fixtures/make_nano_fixture.py)",
)
def test_live_against_funasr_nano(tmp_path):
    spec = importlib.util.spec_from_file_location("make_nano_fixture", FIXTURES / "make_nano_fixture.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    src = write_nano_dir(tmp_path / "nano", encoder_conf=make.ENCODER, frontend_conf=make.FRONTEND, llm_hidden=32,
                         seed=11)  # fmt: skip
    g = torch.Generator().manual_seed(12)
    feats = [torch.randn(n, 24, generator=g) for n in (31, 7, 18)]
    check_parity(src, tmp_path / "out", feats, make.funasr_nano_ids(src, feats), make.MAX_NEW)
    lists = [["你好"], [], ["world", "语音"]]
    expected = make.funasr_nano_ids(src, feats, hotwords=lists)
    check_parity(src, tmp_path / "out", feats, expected, make.MAX_NEW, lists)
    check_ctc_parity(tmp_path / "out", feats, *make.funasr_nano_ctc(src, feats))
