"""llmasr.train.line_positions: the LLM positions batching counts per line (data.batching.max_llm_tokens), before the
model exists, are those the model builds for the line: its audio tokens from the encoder and adaptor built on the
meta device, its prompt and transcript bounded, and counted exactly where the bound passes the budget."""

import json

import numpy as np
import pytest
import torch

from llmasr.data.stated_duration import DURATION_SLACK_FRACTION, DURATION_SLACK_S
from llmasr.models.builder import build_model
from llmasr.models.context import audio_tokens
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.line_positions import line_text_bound
from llmasr.train.resolve import build_loaders, text_side


def tolerance_tokens(model, manifest) -> np.ndarray:
    """Per line, the audio tokens of the tolerance a stated duration is loaded with (audio that much longer is no
    bad line): what the count holds beyond the audio of the stated duration."""
    d = np.asarray(manifest.durations(), dtype=np.float64)
    longest = d + np.maximum(DURATION_SLACK_S, DURATION_SLACK_FRACTION * d)
    return audio_tokens(model, longest) - audio_tokens(model, d)


def real_rows(model, loader) -> dict[int, int]:
    """Dataset index -> the LLM input length the model builds for it (its row of the merged batch, unpadded)."""
    out = {}
    for batch in loader:
        with torch.no_grad():
            _, _, _, merged = model._embed(batch, False)
        out.update(zip(batch.indices, merged.attention_mask.sum(1).tolist()))
    return out


def recipe_of(tmp_path, tiny_llm_dir, adaptor: str, budget: int):
    m = write_tiny_corpus(tmp_path / "corpus", n=10, max_words=6)
    data = tiny_recipe_dict(tiny_llm_dir, train=[m], valid=[m], output_dir=tmp_path / "run", max_seconds=30.0)
    data["model"]["adaptor"] = {"type": adaptor, "downsample": 2, "ffn_dim": 32} | (
        {"n_layer": 1, "n_head": 4, "num_queries": 3} if adaptor == "qformer" else {}
    )
    data["data"]["batching"]["max_llm_tokens"] = budget
    data["data"]["valid_max_utts"] = None
    return load_recipe(data=data)


@pytest.mark.parametrize("adaptor", ["linear", "conv", "qformer"])
def test_each_line_counts_the_positions_the_model_builds_for_it(tmp_path, tiny_llm_dir, adaptor):
    """Every line's count is at least its row in the model's forward, by exactly its transcript bound's slack and
    the audio tokens of the duration tolerance (the audio tokens and the prompt are the model's own); a line whose
    bound passes the budget has its text counted exactly."""
    recipe = recipe_of(tmp_path, tiny_llm_dir, adaptor, budget=100_000)
    train, sampler, valid = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    model = build_model(recipe.model, weights="random").eval()
    manifest = train.dataset.manifest
    real = real_rows(model, valid)
    assert sorted(real) == list(range(len(manifest)))
    tolerance = tolerance_tokens(model, manifest)
    assert tolerance.max() > 0
    for loader in (train, valid):  # no augmentation: training hears each clip as validation does
        counted = loader.batch_sampler.llm_lens
        for i, n in real.items():
            utt = manifest[i]
            slack = line_text_bound(model.prompt, utt, True) - len(model.prompt.encode(utt.target).ids)
            assert slack >= 0
            assert counted[i] == n + slack + tolerance[i], (i, counted[i], n, slack, tolerance[i])

    # a budget of the longest real row: every line whose bound passes it is encoded, and counted as the model builds
    budget = max(n + int(tolerance[i]) for i, n in real.items())
    tight = recipe_of(tmp_path / "tight", tiny_llm_dir, adaptor, budget=budget)
    _, tight_sampler, _ = build_loaders(tight, text_side(tight.model), rank=0, world_size=1)
    counted = tight_sampler.llm_lens
    exact = [i for i in real if sampler.llm_lens[i] > budget]
    assert exact, "no line's bound passes the budget: the test would not reach the exact count"
    assert all(counted[i] == real[i] + tolerance[i] for i in exact)
    assert all(counted[i] >= real[i] for i in real)
    assert tight_sampler.filtered == {}  # none is over the budget on a bound alone
    for b in tight_sampler:
        assert len(b) * max(real[i] for i in b) <= len(b) * counted[b].max() <= budget


def test_audio_longer_than_its_stated_duration_within_the_tolerance_stays_counted(tmp_path, tiny_llm_dir):
    """A line may state a little less than its audio holds (the dataset takes audio within max(0.1 s, 1 %) of the
    stated duration): its count holds the audio tokens of that longer audio, also where its text is counted exactly
    near the budget, so no batch the sampler cuts passes max_llm_tokens in the model's forward."""
    recipe = recipe_of(tmp_path, tiny_llm_dir, "linear", budget=100_000)
    m = recipe.data.train[0].path
    lines = [json.loads(x) for x in open(m, encoding="utf-8").read().splitlines()]
    for line in lines:  # each states 95 ms less than its audio: no bad line
        line["duration"] = round(line["duration"] - 0.095, 4)
    with open(m, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    _, _, valid = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    model = build_model(recipe.model, weights="random").eval()
    real = real_rows(model, valid)
    assert sorted(real) == list(range(len(lines)))  # none is bad: the durations pass as right
    budget = max(real.values()) + 1  # every line fits as the model builds it; the longest are counted exactly
    tight = recipe_of(tmp_path / "tight", tiny_llm_dir, "linear", budget=budget)
    tight.data.train, tight.data.valid = recipe.data.train, recipe.data.valid
    _, _, tight_valid = build_loaders(tight, text_side(tight.model), rank=0, world_size=1)
    counted = tight_valid.batch_sampler.llm_lens
    assert all(counted[i] >= n for i, n in real.items()), {i: (n, int(counted[i])) for i, n in real.items()}
    for b in tight_valid.batch_sampler:
        assert len(b) * max(real[i] for i in b) <= budget


def test_an_utterance_past_the_budget_alone_is_skipped_and_named(tmp_path, tiny_llm_dir, caplog):
    recipe = recipe_of(tmp_path, tiny_llm_dir, "linear", budget=100_000)
    _, sampler, valid = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    model = build_model(recipe.model, weights="random").eval()
    real = real_rows(model, valid)
    longest = max(real, key=real.get)
    small = recipe_of(tmp_path / "small", tiny_llm_dir, "linear", budget=real[longest] - 1)
    with caplog.at_level("WARNING", logger="llmasr.data"):
        _, small_sampler, _ = build_loaders(small, text_side(small.model), rank=0, world_size=1)
    over = small_sampler.skipped_indices("over_batch_budget").tolist()
    assert longest in over and all(real[i] > real[longest] - 1 for i in over)
    assert small_sampler.filtered["over_batch_budget"] == len(over)
    said = f"too large for a batch of one under the batch budget ({len(over)} past data.batching.max_llm_tokens = "
    assert f"{said}{real[longest] - 1} (its LLM positions))" in caplog.text
    assert np.all(small_sampler.llm_lens[over] > real[longest] - 1)


@pytest.mark.parametrize("cap", [None, 6])
def test_training_rows_hold_the_drawn_biasing_lists(tmp_path, tiny_llm_dir, cap):
    """Training draws a biasing list per visit (data.hotwords): each line counts its prompt with the longest list
    that can be drawn (at model.prompt.hotwords_max_tokens, else list_size's longest phrases), so the rows the model
    builds with the lists drawn never pass the count, and a line with a list of its own counts the larger."""
    recipe_data = recipe_of(tmp_path, tiny_llm_dir, "linear", budget=100_000)
    m = recipe_data.data.train[0].path
    lines = [json.loads(x) for x in open(m, encoding="utf-8").read().splitlines()]
    lines[3]["hotwords"] = ["a rather long phrase of its own that no drawn list could hold"]
    with open(m, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    data = tiny_recipe_dict(tiny_llm_dir, train=[m], output_dir=tmp_path / "run", max_seconds=30.0)
    data["data"]["batching"]["max_llm_tokens"] = 100_000
    data["data"]["hotwords"] = {"enable": True, "list_size": [2, 4], "empty_prob": 0.0}
    data["model"]["prompt"] = {"hotwords_max_tokens": cap}
    recipe = load_recipe(data=data)
    train, sampler, _ = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    model = build_model(recipe.model, weights="random").eval()
    counted = sampler.llm_lens
    for epoch in range(3):
        sampler.set_epoch(epoch)
        real = real_rows(model, train)
        assert sorted(real) == list(range(len(lines)))
        assert all(counted[i] >= n for i, n in real.items()), (epoch, real, counted)
    plain = recipe_of(tmp_path / "plain", tiny_llm_dir, "linear", budget=100_000)
    _, without, _ = build_loaders(plain, text_side(plain.model), rank=0, world_size=1)
    prompt = model.prompt
    own = line_text_bound(prompt, train.dataset.manifest[3], True) - line_text_bound(
        prompt, train.dataset.manifest[3], False
    )
    for i in range(len(lines)):
        extra = counted[i] - without.llm_lens[i]
        assert extra > 0  # every line carries a list
        if i == 3:
            assert extra >= own  # its own list, which training keeps (source manifest_or_sample), counts


def test_a_transcript_bound_counts_the_spacing_the_template_puts_around_it(tiny_llm_dir):
    """A template that writes "[/INST] " + answer + " <|im_end|>" adds the spaces to the answer's tokens; the bound
    from the transcript's bytes alone had counted a one-letter transcript one token short of what the model reads."""
    from types import SimpleNamespace

    from llmasr.models.prompt import PromptBuilder
    from llmasr.models.tokenizer import load_tokenizer

    spaced = (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}{{- '<|im_start|>[INST] ' + message['content'] + ' [/INST]' -}}"
        "{%- elif message['role'] == 'assistant' -%}{{- ' ' + message['content'].strip() + ' <|im_end|>' -}}"
        "{%- endif -%}{%- endfor -%}"
    )
    prompt = PromptBuilder(load_tokenizer(tiny_llm_dir), chat_template=spaced)
    for target in ("q", "z", "the quick"):
        utt = SimpleNamespace(target=target, prompt=None, system=None, hotwords=None)
        assert line_text_bound(prompt, utt, True) >= len(prompt.encode(target).ids), target
