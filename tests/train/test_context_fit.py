"""llmasr.train.context_fit: the audio tokens counted against the LLM's context are those of the clip training hears,
augmented as far as it can be."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from llmasr.data.stated_duration import DURATION_SLACK_FRACTION, DURATION_SLACK_S
from llmasr.models.builder import build_model
from llmasr.models.context import ContextError, audio_tokens
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_llm import write_tiny_llm_dir
from llmasr.testing.tiny_recipe import tiny_model_section
from llmasr.testing.tiny_whisper import write_tiny_whisper_dir
from llmasr.train.context_fit import check_context_fit
from llmasr.train.resolve import build_loaders, text_side


def loaded_at_most(stated: float) -> float:
    """The longest audio the dataset loads for a line stating `stated` seconds: audio longer by up to max(0.1 s, 1 %)
    passes as right (stated_duration.durations_disagree), so the check counts that much."""
    return stated + max(DURATION_SLACK_S, DURATION_SLACK_FRACTION * stated)


def whisper_run(root, seconds: float, context_at: float):
    """(recipe, loaders, audio tokens of the slowed clip, text tokens): a tiny Whisper (2 s window) whose LLM's context
    holds the prompt, transcript and `context_at` seconds of audio; one clip of `seconds`, slowed by 0.75."""
    sf.write(root / "a.wav", (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype(np.float32),
             16000)  # fmt: skip
    line = {"key": "a", "source": str(root / "a.wav"), "target": "one two", "duration": seconds}
    (root / "m.jsonl").write_text(json.dumps(line) + "\n")
    section = tiny_model_section(write_tiny_llm_dir(root / "llm0"), lora=False)
    section["encoder"] = {"type": "whisper", "path": str(write_tiny_whisper_dir(root / "whisper"))}
    probe = build_model(section, weights="meta")
    text = len(probe.prompt.encode("one two").ids)
    context = text + audio_tokens(probe, context_at)
    section["llm"]["path"] = str(write_tiny_llm_dir(root / "llm", max_position_embeddings=context))
    data = {"model": section, "data": {"train": [str(root / "m.jsonl")], "num_workers": 0, "pin_memory": False,
            "batching": {"max_seconds": 3.0, "max_duration": 2.0},
            "augment": {"speed_perturb": {"enable": True, "factors": [0.75]}}},
            "train": {"output_dir": str(root / "run"), "precision": "fp32"}}  # fmt: skip
    recipe = load_recipe(data=data)
    return recipe, build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1), context, text


def test_a_whisper_clip_counts_as_slowed_as_the_augmenter_slows_it(tmp_path):
    """A Whisper frontend's batch cost leaves speed perturbation out (every clip costs the window); the augmenter
    still slows a clip as far as the window holds it, and the encoder gives tokens for all of it: a 1.4 s clip slowed
    by 0.75 passed the check at 1.4 s and put more tokens into the LLM than its context."""
    recipe, loaders, context, text = whisper_run(tmp_path, 1.4, context_at=1.4)
    model = build_model(recipe.model, weights="random")
    counted = loaded_at_most(1.4) / 0.75  # 1.5 s of audio pass as 1.4 s, slowed to the 2 s window
    batch = next(iter(loaders[0]))
    with torch.no_grad():
        _, _, _, lens = model.eval().encode_audio(batch.feats, batch.feat_lens)
    heard = int(lens[0])
    assert heard + text > context
    with pytest.raises(ContextError) as err:
        check_context_fit(model, recipe, loaders)
    assert heard <= audio_tokens(model, counted)
    assert (
        f"is heard as {counted:g} s of audio, {audio_tokens(model, counted)} audio tokens, beside {text} prompt"
        in str(err.value)
    )


def test_a_whisper_clip_is_not_counted_past_its_window(tmp_path):
    """Slowed, a 1.9 s clip would pass the 2 s window: the augmenter slows it only to the window, so it counts so."""
    recipe, loaders, _, _ = whisper_run(tmp_path, 1.9, context_at=2.0)
    check_context_fit(build_model(recipe.model, weights="meta"), recipe, loaders)


@pytest.mark.parametrize("split", ["train", "valid"])
def test_a_line_s_own_biasing_list_counts_with_its_prompt(tmp_path, split):
    """Validation, and training without drawn lists (data.hotwords), render a line's own `hotwords` into its
    prompt: the check had counted the prompt without them, and passed a line the list took past the context."""
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus

    manifest = write_tiny_corpus(tmp_path / "corpus", n=2)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    lines[0]["hotwords"] = ["alpha beta gamma delta", "epsilon zeta eta theta"]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    probe = build_model(tiny_recipe_dict(write_tiny_llm_dir(tmp_path / "llm0"), train=[manifest],
                                         output_dir=tmp_path / "run")["model"], weights="meta")  # fmt: skip
    text = len(probe.prompt.encode(lines[0]["target"], hotwords=lines[0]["hotwords"]).ids)
    audio = audio_tokens(probe, loaded_at_most(lines[0]["duration"]))  # a token short of what the check counts
    llm = write_tiny_llm_dir(tmp_path / "llm", max_position_embeddings=text + audio - 1)
    other = write_tiny_corpus(tmp_path / "other", n=2, seed=1)
    train, valid = (manifest, other) if split == "train" else (other, manifest)
    data = tiny_recipe_dict(llm, train=[train], valid=[valid], output_dir=tmp_path / "run", max_seconds=20.0)
    recipe = load_recipe(data=data)
    loaders = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    item = loaders[0 if split == "train" else 2].dataset[0]
    assert item["hotwords"] == lines[0]["hotwords"] and len(item["text_ids"]) == text  # what the LLM reads
    with pytest.raises(ContextError) as err:
        check_context_fit(build_model(recipe.model, weights="meta"), recipe, loaders)
    assert str(err.value).startswith(f"data.{split}: 1 utterance(s) do not fit the LLM's context of {text + audio - 1}")
    assert f"{manifest}:1, is heard as" in str(err.value) and f"{audio} audio tokens, beside {text} prompt" in str(
        err.value
    )


def test_only_lines_whose_length_could_pass_the_context_are_read(tmp_path, monkeypatch):
    """A line's bytes bound its prompt and transcript tokens: with a roomy context no line is parsed (the check had
    read and encoded every line on every rank, minutes at ten million lines); near the context the long line is read,
    and refused as before."""
    from llmasr.data.manifest import Manifest
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus

    manifest = write_tiny_corpus(tmp_path / "corpus", n=6)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    lines[3]["target"] = " ".join(["seven"] * 40)
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    probe = build_model(tiny_recipe_dict(write_tiny_llm_dir(tmp_path / "llm0"), train=[manifest],
                                         output_dir=tmp_path / "run")["model"], weights="meta")  # fmt: skip
    long_tokens = len(probe.prompt.encode(lines[3]["target"]).ids) + audio_tokens(probe, lines[3]["duration"])
    read, getitem = [], Manifest.__getitem__

    def spy(self, i):
        read.append(int(i))
        return getitem(self, i)

    for context, refused in ((4096, False), (long_tokens - 1, True)):
        llm = write_tiny_llm_dir(tmp_path / f"llm{context}", max_position_embeddings=context)
        recipe = load_recipe(
            data=tiny_recipe_dict(llm, train=[manifest], output_dir=tmp_path / "run", max_seconds=20.0)
        )
        loaders = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
        model = build_model(recipe.model, weights="meta")
        read.clear()
        monkeypatch.setattr(Manifest, "__getitem__", spy)
        if refused:
            with pytest.raises(ContextError, match=f"{manifest}:4, is heard as"):
                check_context_fit(model, recipe, loaders)
            assert 3 in read and len(read) < len(lines)
        else:
            check_context_fit(model, recipe, loaders)
            assert read == []
        monkeypatch.undo()


def _listed_run(tmp_path, hotwords: dict, own: list[str] | None, slack: int):
    """(recipe, loaders, the most of an item's prompt + transcript tokens as the dataset gives them and its audio tokens
    at the longest the dataset loads for its stated duration, as the check counts them): a 4-line
    corpus trained with `hotwords` (data.hotwords) and no model.prompt.hotwords_max_tokens, line 1 with its own list
    `own`, an LLM whose context is that longest item's tokens + `slack`."""
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus

    manifest = write_tiny_corpus(tmp_path / "corpus", n=4)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    if own is not None:
        lines[0]["hotwords"] = own
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "pool.txt").write_text("".join(f"alpha {i}\n" for i in range(20)))
    section = {"enable": True, "distractors": str(tmp_path / "pool.txt"), "empty_prob": 0.0, **hotwords}

    def run(llm):
        data = tiny_recipe_dict(llm, train=[manifest], output_dir=tmp_path / "run", max_seconds=20.0)
        data["data"]["hotwords"] = section
        recipe = load_recipe(data=data)
        return recipe, build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)

    recipe, loaders = run(write_tiny_llm_dir(tmp_path / "llm0"))
    probe = build_model(recipe.model, weights="meta")
    items = [loaders[0].dataset[i] for i in range(len(lines))]
    most = max(
        len(it["text_ids"]) + audio_tokens(probe, loaded_at_most(line["duration"])) for it, line in zip(items, lines)
    )
    return (*run(write_tiny_llm_dir(tmp_path / "llm", max_position_embeddings=most + slack)), most)


def test_drawn_lists_without_a_cap_count_at_their_longest(tmp_path, caplog):
    """Without model.prompt.hotwords_max_tokens, training's drawn lists had not been counted (a note said so): an
    item whose list took it past the context passed the check and ran past the LLM's positions without an error.
    They count at list_size's maximum of the longest phrase that can be drawn, each byte a token, and the check says
    so."""
    import logging

    hotwords = {"source": "sample", "list_size": [3, 3], "true_phrases": [1, 1]}
    recipe, loaders, most = _listed_run(tmp_path, hotwords, None, slack=-1)
    with caplog.at_level(logging.INFO, logger="llmasr.train"), pytest.raises(ContextError) as err:
        check_context_fit(build_model(recipe.model, weights="meta"), recipe, loaders)
    longest = loaders[0].dataset.hotword_sampler.longest_phrase_bytes  # "alpha 10" or a reference n-gram
    bound = len(f"Hotwords: {', '.join(['x' * longest] * 3)}. ") + 2
    assert f"do not fit the LLM's context of {most - 1} tokens" in str(err.value)
    assert str(err.value).endswith(
        f"(its prompt tokens include {bound} for a drawn biasing list of up to 3 phrases (data.hotwords.list_size) of "
        f"up to {longest} bytes, each byte counted as a token: no model.prompt.hotwords_max_tokens caps it (set one, "
        "or lower list_size))"
    )
    assert f"training's drawn lists count as {bound} tokens against the LLM's context" in caplog.text
    recipe, loaders, _ = _listed_run(tmp_path / "roomy", hotwords, None, slack=bound)
    check_context_fit(build_model(recipe.model, weights="meta"), recipe, loaders)  # the bound fits: no refusal


def test_a_line_s_own_list_counts_where_training_draws_the_others(tmp_path):
    """Under source manifest_or_sample a line's own list is what training renders for it: the check had counted
    only the drawn ones (or none, without a cap), and passed a line its own long list took past the context."""
    own = ["one two three four five", "six seven eight nine ten", "alpha beta gamma delta epsilon"]
    hotwords = {"source": "manifest_or_sample", "list_size": [1, 1], "true_phrases": [1, 1]}
    recipe, loaders, most = _listed_run(tmp_path, hotwords, own, slack=-1)
    model = build_model(recipe.model, weights="meta")
    assert loaders[0].dataset[0]["hotwords"] == own
    with pytest.raises(ContextError) as err:
        check_context_fit(model, recipe, loaders)
    assert f"the worst, {tmp_path / 'corpus' / 'data.jsonl'}:1, is heard as" in str(err.value)
    assert f"({most} in all)" in str(err.value) and "drawn biasing list" not in str(err.value)


def test_audio_a_little_longer_than_its_stated_duration_counts_against_the_context(tmp_path):
    """The dataset takes audio up to max(0.1 s, 1 %) longer than a line states as right, and the model reads all of
    it: the check had counted the stated duration, and passed a line stating 95 ms less than its audio whose row in
    the model's forward was past the LLM's context. It counts the longest audio that passes, as max_llm_tokens does."""
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus

    manifest = write_tiny_corpus(tmp_path / "corpus", n=1, max_words=3)
    line = json.loads(manifest.read_text())
    line["duration"] = round(line["duration"] - 0.095, 4)  # within the tolerance: no bad line
    manifest.write_text(json.dumps(line) + "\n")
    probe = build_model(tiny_recipe_dict(write_tiny_llm_dir(tmp_path / "llm0"), train=[manifest],
                                         output_dir=tmp_path / "run")["model"], weights="meta")  # fmt: skip
    text = len(probe.prompt.encode(line["target"]).ids)
    context = text + audio_tokens(probe, line["duration"])  # the stated duration fits exactly
    llm = write_tiny_llm_dir(tmp_path / "llm", max_position_embeddings=context)
    recipe = load_recipe(data=tiny_recipe_dict(llm, train=[manifest], valid=[manifest], output_dir=tmp_path / "run",
                                               max_seconds=20.0))  # fmt: skip
    loaders = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
    model = build_model(recipe.model, weights="random").eval()
    batch = next(iter(loaders[2]))
    with torch.no_grad():
        _, _, _, merged = model._embed(batch, False)
    assert int(merged.attention_mask.sum()) > context  # the row the model builds passes the context
    audio = audio_tokens(model, loaded_at_most(line["duration"]))
    with pytest.raises(ContextError) as err:
        check_context_fit(model, recipe, loaders)
    assert f"{audio} audio tokens, beside {text} prompt and transcript tokens ({audio + text} in all)" in str(err.value)


def test_validation_s_greedy_pass_counts_the_tokens_it_may_write(tmp_path):
    """Validation's WER comes from a greedy pass that reads a line's prompt and audio and writes up to
    decode.max_new_tokens: the check had counted the transcript only, and passed an LLM whose context that pass runs
    past (a learned position table: an IndexError at the first validation, hours into the run). Every row counts the
    most any row may write, as a row that has ended keeps taking positions while its batch writes on."""
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus

    manifest = write_tiny_corpus(tmp_path / "corpus", n=3, max_words=2)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    probe = build_model(tiny_recipe_dict(write_tiny_llm_dir(tmp_path / "llm0"), train=[manifest],
                                         output_dir=tmp_path / "run")["model"], weights="meta")  # fmt: skip
    prompt = len(probe.prompt.encode(None).ids)
    new = 40  # far more than any transcript here
    rows = [prompt + audio_tokens(probe, loaded_at_most(line["duration"])) for line in lines]
    worst = int(np.argmax(rows))
    assert max(len(probe.prompt.encode(line["target"]).ids) for line in lines) < prompt + new
    for slack, refused in ((0, False), (-1, True)):
        llm = write_tiny_llm_dir(tmp_path / f"llm{slack}", max_position_embeddings=rows[worst] + new + slack)
        data = tiny_recipe_dict(llm, train=[manifest], valid=[manifest], output_dir=tmp_path / "run", max_seconds=20.0)
        data["decode"]["max_new_tokens"] = new
        recipe = load_recipe(data=data)
        loaders = build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1)
        model = build_model(recipe.model, weights="meta")
        if not refused:
            check_context_fit(model, recipe, loaders)
            continue
        with pytest.raises(ContextError) as err:
            check_context_fit(model, recipe, loaders)
        assert str(err.value).startswith(
            f"data.valid: validation's greedy pass (its WER) may write {new} tokens (decode.max_new_tokens {new})"
        )
        assert f"the worst, {manifest}:{worst + 1}, is heard as" in str(err.value)
        assert f"beside {prompt} prompt tokens ({rows[worst] + new} in all)" in str(err.value)
        recipe.data.valid = []  # the same data without validation trains
        check_context_fit(model, recipe, build_loaders(recipe, text_side(recipe.model), rank=0, world_size=1))
