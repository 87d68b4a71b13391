"""llmasr.models.context: the audio tokens an utterance puts into the LLM are the ones its forward pass writes there,
for every encoder subsampling and adaptor, and what does not fit the LLM's context is refused with its numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmasr.data.features import FeatureExtractor
from llmasr.models.builder import build_model
from llmasr.models.context import (
    ContextError,
    audio_tokens,
    decoding_fit,
    llm_context,
    model_context,
    training_fit,
)
from llmasr.testing.tiny_llm import write_tiny_llm_dir
from llmasr.testing.tiny_recipe import tiny_model_section
from llmasr.testing.tiny_whisper import tiny_conformer_conf

SECONDS = [0.07, 0.5, 1.0, 1.37, 3.2]


def _forward_tokens(model, seconds: float) -> int:
    """The audio embeddings the model's own encoder pass gives a waveform of `seconds`."""
    wave = np.random.default_rng(0).standard_normal(round(seconds * model.frontend.sample_rate)).astype(np.float32)
    feats = torch.from_numpy(FeatureExtractor(model.frontend)(wave * 0.1, train=False))[None]
    with torch.no_grad():
        _, _, audio, audio_lens = model.eval().encode_audio(feats, torch.tensor([feats.shape[1]]))
    assert audio.shape[1] == int(audio_lens[0])
    return int(audio_lens[0])


@pytest.mark.parametrize(
    "adaptor, extra",
    [("linear", {}), ("conv", {"downsample": 3}), ("transformer", {}), ("qformer", {"num_queries": 2}),
     ("linear", {"downsample": 1, "audio_token_cap": "funasr_nano"})],
)  # fmt: skip
def test_audio_tokens_are_the_forward_pass_s(tiny_llm_dir, adaptor, extra):
    section = tiny_model_section(tiny_llm_dir, adaptor=adaptor, lora=False)
    section["adaptor"].update(extra)
    model = build_model(section, weights="random")
    counts = audio_tokens(model, SECONDS)
    assert counts.tolist() == [_forward_tokens(model, s) for s in SECONDS]
    assert audio_tokens(model, 1.0) == counts[2] and isinstance(audio_tokens(model, 1.0), int)


def test_a_subsampling_encoder_counts_its_frames(tiny_llm_dir):
    section = tiny_model_section(tiny_llm_dir, lora=False)
    section["encoder"] = {"type": "conformer", "conf": tiny_conformer_conf(80), "frontend": {"lfr_m": 1, "lfr_n": 1}}
    model = build_model(section, weights="random")
    assert audio_tokens(model, SECONDS[1:]).tolist() == [_forward_tokens(model, s) for s in SECONDS[1:]]


def test_context_and_its_key_come_from_config_json(tmp_path):
    path = write_tiny_llm_dir(tmp_path / "llm", max_position_embeddings=96)
    assert llm_context(path) == 96
    stated = json.loads((path / "config.json").read_text())
    assert stated["max_position_embeddings"] == 96


@pytest.mark.parametrize(
    "rope, context, said",
    [
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 96}, 384,
         "rope_scaling.original_max_position_embeddings x rope_scaling.factor 4"),
        ({"type": "linear", "factor": 2.0}, 192, "max_position_embeddings x rope_scaling.factor 2"),
        ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 12, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0}, 96, "max_position_embeddings"),
        ({"rope_type": "yarn", "factor": 1.0}, 96, "max_position_embeddings"),
    ],
)  # fmt: skip
def test_a_rope_scaling_that_stretches_positions_stretches_the_context(tmp_path, rope, context, said):
    """Qwen's YaRN recipe keeps max_position_embeddings at the trained length and sets rope_scaling's factor: the
    context is their product (the check had refused what the stretched model reads). llama3's and longrope's
    max_position_embeddings is already the stretched length."""
    path = write_tiny_llm_dir(tmp_path / "llm", max_position_embeddings=96)
    stated = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**stated, "rope_scaling": rope}))
    assert llm_context(path) == context
    model = build_model(tiny_model_section(path), weights="meta")  # the config transformers loads (rope_parameters)
    got, key = model_context(model)
    assert got == context and key == said.replace("rope_scaling", "rope_parameters")


def test_what_does_not_fit_is_named_with_its_numbers(tmp_path):
    llm = write_tiny_llm_dir(tmp_path / "llm", max_position_embeddings=64)
    model = build_model(tiny_model_section(llm, lora=False), weights="meta")
    per_second = audio_tokens(model, 1.0)
    training_fit(model, [1.0, 2.0], [10, 64 - audio_tokens(model, 2.0)], lambda i: f"m.jsonl:{i + 1}")  # fits
    with pytest.raises(ContextError) as err:
        training_fit(model, [1.0, 6.0], [10, 20], lambda i: f"m.jsonl:{i + 1}", what="data.train")
    six = audio_tokens(model, 6.0)
    assert str(err.value).startswith(
        f"data.train: 1 utterance(s) do not fit the LLM's context of 64 tokens (config.json's max_position_embeddings);"
        f" the worst, m.jsonl:2, is heard as 6 s of audio, {six} audio tokens, beside 20 prompt and transcript tokens "
        f"({six + 20} in all). Lower data.batching.max_duration"
    )
    # decoding: the longest window whose audio, prompt and written tokens fit; the window itself where it fits
    fit, why = decoding_fit(model, 30.0, 20, lambda s: 8)
    assert audio_tokens(model, fit) + 28 <= 64 < audio_tokens(model, fit + 0.02) + 28
    assert why == (
        f"a decode window of 30 s gives {audio_tokens(model, 30.0)} audio tokens, which beside the prompt (20 tokens) "
        "and the tokens decoding may write (decode.max_new_tokens, else tokens_per_second x seconds + 8) pass the "
        f"LLM's context of 64 tokens (config.json's max_position_embeddings); {fit:g} s fit"
    )
    assert decoding_fit(model, 1.0, 20, lambda s: 8) == (1.0, "")
    assert decoding_fit(model, 0.0, 20, lambda s: 8)[0] == fit  # no limit: lowered to what fits
    with pytest.raises(ContextError, match=r"one second of audio \(\d+ audio tokens\) .* context of 64 tokens"):
        decoding_fit(model, 30.0, 20, lambda s: 64 - 20 - per_second + 1)
