"""A clip shorter than the encoder takes cannot train: data.batching.min_duration (0 unless set) had let it through to
be found bad when loaded, one warning per epoch and a count against data.max_bad_fraction mid-run. Batching now skips
it from the start as too short, at the least length the frontend and the encoder's subsampling take, and says so."""

import json
import logging

import numpy as np
import pytest
import soundfile as sf

from llmasr.data.features import FeatureExtractor
from llmasr.data.frontend import FrontendConfig
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.resolve import build_loaders, text_side


@pytest.mark.parametrize(
    "frontend",
    [FrontendConfig(), FrontendConfig(min_frames=7), FrontendConfig(lfr_m=7, lfr_n=6, min_frames=3),
     FrontendConfig(kind="whisper", n_fft=400, chunk_seconds=2.0, waveform_scale=1.0)],
)  # fmt: skip
def test_the_shortest_clip_is_the_fewest_samples_giving_the_frames_the_encoder_needs(frontend):
    fx = FeatureExtractor(frontend)
    n = round(fx.shortest_seconds() * frontend.sample_rate + 0.5)
    assert fx.num_frames(n) >= max(1, frontend.min_frames) > fx.num_frames(n - 1)


def test_a_10_ms_clip_is_skipped_at_start_up_as_too_short(tiny_llm_dir, tmp_path, caplog):
    corpus = write_tiny_corpus(tmp_path / "c", n=6)
    sf.write(tmp_path / "c" / "short.wav", np.full(160, 0.01, np.float32), 16000, subtype="PCM_16")
    line = {"key": "short", "source": "short.wav", "target": "one two", "duration": 0.01}
    corpus.write_text(corpus.read_text() + json.dumps(line) + "\n")
    recipe = load_recipe(data=tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run"))
    with caplog.at_level(logging.INFO, logger="llmasr.data"):
        loader, sampler, _ = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    assert sampler.filtered == {"too_short": 1}
    assert "1 shorter than 0.01603 s, the least audio the encoder takes" in caplog.text
    assert f"(first: {corpus}:7)" in caplog.text
    with caplog.at_level(logging.WARNING, logger="llmasr.data"):
        caplog.clear()
        assert sum(len(b.keys) for b in loader) == 6
    assert "skipping bad item" not in caplog.text
