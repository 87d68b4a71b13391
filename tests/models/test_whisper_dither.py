"""A Whisper frontend that dithers: transformers' WhisperFeatureExtractor dithers the whole zero-padded window, so the
frames after a clip hold noise; llmasr's encoder pads them with the silence floor. Its noise comes from other
generators (transformers' global torch or numpy RNG, per sample or per frame), so the features cannot be compared
value by value at a fixed seed: the start-up says the difference instead, naming where the dither was set."""

import json
import logging

import numpy as np
import torch

from llmasr.data.features import FeatureExtractor
from llmasr.models.builder import build_model
from llmasr.models.config import EncoderConfig
from llmasr.models.start_notes import whisper_dither_note
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.testing.tiny_recipe import tiny_model_section
from llmasr.testing.tiny_whisper import write_tiny_whisper_dir
from llmasr.train.trainer import train


def dithering_whisper(path, dither: float):
    out = write_tiny_whisper_dir(path)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps({**pre, "dither": dither}))
    return out


def test_the_frames_after_a_clip_hold_the_floor_where_transformers_dithers_them(tiny_llm_dir, tmp_path):
    """The difference the start-up names: transformers' frames after the clip vary with its noise, llmasr's are one
    value (the floor). Were llmasr to match transformers, this test and the warning would go together."""
    from transformers import WhisperFeatureExtractor

    folder = dithering_whisper(tmp_path / "w", 1e-3)
    section = tiny_model_section(tiny_llm_dir, lora=False)
    section["encoder"] = {"type": "whisper", "path": str(folder)}
    model = build_model(section, weights="random")
    wave = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)  # 0.5 s of the 2 s window
    ours = FeatureExtractor(model.frontend)(wave, train=True, rng=np.random.default_rng(1))
    t = ours.shape[0]
    seen, _ = model.encoder.prepare_features(torch.from_numpy(ours)[None], torch.tensor([t]))
    torch.manual_seed(0)
    theirs = WhisperFeatureExtractor.from_pretrained(folder)(wave, sampling_rate=16000).input_features[0]
    assert np.unique(seen[0, :, t:].numpy()).size == 1
    assert theirs[:, t:].std() > 0.05


def test_a_dithering_whisper_is_named_at_start_up(tiny_llm_dir, tmp_path, caplog):
    folder = dithering_whisper(tmp_path / "w", 1e-4)
    data = tiny_recipe_dict(tiny_llm_dir, train=[write_tiny_corpus(tmp_path / "c", n=4)], output_dir=tmp_path / "run",
                            max_updates=1)  # fmt: skip
    data["model"]["encoder"] = {"type": "whisper", "path": str(folder)}
    with caplog.at_level(logging.WARNING, logger="llmasr.train"):
        train(load_recipe(data=data), "zero0")
    said = f'{folder}/preprocessor_config.json "dither" is 0.0001: llmasr dithers each clip'
    assert said in caplog.text and said in (tmp_path / "run" / "train.log").read_text()
    assert "Set model.encoder.frontend.dither: 0 for transformers' features" in caplog.text


def test_the_recipe_s_dither_is_named_and_none_is_said_at_zero(tmp_path):
    folder = dithering_whisper(tmp_path / "w", 1e-4)
    assert whisper_dither_note(EncoderConfig(type="whisper", path=str(folder), frontend={"dither": 0.0})) is None
    note = whisper_dither_note(EncoderConfig(type="whisper", path=str(folder), frontend={"dither": 1e-3}))
    assert note.startswith("model.encoder.frontend.dither is 0.001:")
    assert whisper_dither_note(EncoderConfig(type="whisper", path=str(write_tiny_whisper_dir(tmp_path / "z")))) is None
