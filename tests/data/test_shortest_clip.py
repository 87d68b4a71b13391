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


@pytest.mark.parametrize("factors", [[1.0, 2.0], [0.9, 1.1]])
def test_a_clip_that_speed_perturbation_would_make_too_short_is_skipped_at_start_up(tiny_llm_dir, tmp_path, factors):
    """A clip the encoder takes at speed 1 but not at the fastest factor had loaded too short in each epoch that drew
    that factor, a bad item every time: a run with speed_perturb's factors [1.0, 2.0] over a few such clips stopped at
    its first epoch's end with "too much bad data", which start-up and `llmasr check` had passed. Batching
    skips it from the start, at the least length the encoder takes at the fastest factor, and every clip it keeps
    loads long enough at every draw."""
    corpus = write_tiny_corpus(tmp_path / "c", n=6)
    shortest = FeatureExtractor(FrontendConfig()).shortest_seconds()
    lines = []
    for i, seconds in enumerate([0.03, 0.03 * factors[-1], shortest * factors[-1] + 0.002]):
        n = round(seconds * 16000)
        sf.write(tmp_path / "c" / f"s{i}.wav", np.full(n, 0.01, np.float32), 16000, subtype="PCM_16")
        lines.append(json.dumps({"key": f"s{i}", "source": f"s{i}.wav", "target": "one", "duration": n / 16000}))
    corpus.write_text(corpus.read_text() + "\n".join(lines) + "\n")
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run")
    data["data"]["augment"] = {"speed_perturb": {"enable": True, "factors": factors}}
    recipe = load_recipe(data=data)
    loader, sampler, _ = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    too_short = sampler.skipped_indices("too_short").tolist()
    assert too_short == ([6] if factors[-1] == 2.0 else [])
    for epoch in range(4):
        loader.set_epoch(epoch)
        for batch in loader:
            assert not batch.bad, batch.bad
