"""LinePrompts (llmasr.models.line_prompts): each line's decode prompt counted once for decoding_prompt and
DecodeRows, equal to a straightforward per-line count (PromptBuilder.encode of every line) on a manifest of mixed
tasks, system messages, own lists, empty lists, no lists, special-token text, lines that cannot render and bad lines."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

import llmasr.models.line_prompts as line_prompts
from llmasr.data.long_audio import Window
from llmasr.data.manifest import BadRecord, Manifest
from llmasr.data.records import given_hotwords, task_of
from llmasr.data.windowed import WindowedManifest
from llmasr.models.context import decoding_prompt
from llmasr.models.line_prompts import LinePrompts
from llmasr.models.prompt import AUDIO_PLACEHOLDER, PromptBuilder
from llmasr.models.tokenizer import load_tokenizer
from llmasr.testing.thread_ranks import lines_counted_by_thread, run_ranks, thread_world
from llmasr.testing.tiny_llm import CHATML_TEMPLATE
from llmasr.train.decode_rows import DecodeRows

# a template that refuses a system message: a line with its own cannot render (PromptError, a ValueError)
NO_SYSTEM = "{%- if messages[0]['role'] == 'system' -%}{{ raise_exception('no system role') }}{%- endif -%}"


def _chatml(system: str | None, task: str, key: str) -> dict:
    turns = [{"role": "system", "content": system}] if system else []
    user = f"{task}<|startofspeech|>!a.wav<|endofspeech|>"
    return {"key": key, "messages": [*turns, {"role": "user", "content": user}], "speech_length": 101}


LINES = [
    {"key": "plain", "source": "a.wav", "duration": 1.0},
    {"key": "own", "source": "a.wav", "duration": 2.0, "hotwords": ["alpha beta", "gamma", "delta epsilon zeta"]},
    {"key": "same", "source": "a.wav", "duration": 1.5, "hotwords": ["alpha beta", "gamma", "delta epsilon zeta"]},
    {"key": "none", "source": "a.wav", "duration": 1.0, "hotwords": []},
    {"key": "task", "source": "a.wav", "duration": 1.0, "prompt": "Write down what is said, word for word."},
    {"key": "blank", "source": "a.wav", "duration": 1.0, "prompt": "   "},
    {"key": "both", "source": "a.wav", "duration": 3.0, "prompt": "Transcribe.", "hotwords": ["one two"]},
    {"key": "special", "source": "a.wav", "duration": 1.0, "hotwords": ["stop <|im_end|> here", "x"]},
    {"key": "placeholder", "source": "a.wav", "duration": 1.0, "prompt": f"say {AUDIO_PLACEHOLDER} twice"},
    _chatml("You answer in capitals only, with every word spelled out.", "Transcribe this:", "sys"),
    _chatml(None, "Write it:", "chat"),
    "{not json",
    {"key": "nosource", "duration": 1.0},
    {"key": "badlist", "source": "a.wav", "duration": 1.0, "hotwords": "not a list"},
    {"key": "long", "source": "a.wav", "duration": 1.0, "hotwords": [f"phrase number {k}" for k in range(12)]},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_llm_dir):
    return load_tokenizer(tiny_llm_dir)


@pytest.fixture(scope="module")
def refusing(tiny_llm_dir):
    """A PromptBuilder whose template refuses a system message (of a tokenizer of its own: the builder sets it)."""
    return PromptBuilder(load_tokenizer(tiny_llm_dir), chat_template=NO_SYSTEM + CHATML_TEMPLATE)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    path = tmp_path_factory.mktemp("line_prompts") / "m.jsonl"
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in LINES)
    path.write_text(text * 3, encoding="utf-8")  # each list, task and system thrice
    return Manifest.open(path, need_target=False)


@pytest.fixture(scope="module")
def builders(tokenizer, refusing) -> list[PromptBuilder]:
    capped = PromptBuilder(tokenizer, system="You are a careful transcriber.", hotwords_max_tokens=6)
    return [PromptBuilder(tokenizer), capped, refusing]


def reference(prompt, hotwords, lists: bool, manifest, task: str | None = None) -> list[int]:
    """Every line read and its prompt encoded, one by one (0: a bad line, or one that cannot render); `task`: that of
    the lines without their own (decode --task)."""
    out = []
    for i in range(len(manifest)):
        try:
            utt = manifest[i]
        except BadRecord:
            out.append(0)
            continue
        listed = given_hotwords(utt, hotwords) if lists else []
        try:
            out.append(len(prompt.encode(None, task=task_of(utt, task), hotwords=listed, system=utt.system).ids))
        except ValueError:
            out.append(0)
    return out


def reference_most(prompt, hotwords, lists: bool, manifest, base: int) -> tuple[int, int | None]:
    """(the most, its line) of decoding_prompt's walk over the lines, largest first, each line encoded alone."""
    sizes = manifest.line_bytes()
    most, line, seams = base, None, 6 + len(prompt.hotwords_template.encode())
    for i in np.argsort(-sizes, kind="stable").tolist():
        if base + int(sizes[i]) + seams <= most:
            break
        try:
            utt = manifest[i]
        except BadRecord:
            continue
        if (utt.hotwords if lists else None) is None and task_of(utt) is None and utt.system is None:
            continue
        try:
            n = len(prompt.encode(None, task=task_of(utt), hotwords=given_hotwords(utt, hotwords) if lists else [],
                                  system=utt.system).ids)  # fmt: skip
        except ValueError:
            n = 0
        if n > most:
            most, line = n, i
    return most, line


@pytest.fixture(params=[3, 4096], ids=["chunks_of_3", "one_chunk"])
def chunk(request, monkeypatch):
    monkeypatch.setattr(line_prompts, "CHUNK", request.param)
    monkeypatch.setattr(line_prompts, "SEEN", 4 if request.param == 3 else line_prompts.SEEN)
    return request.param


@pytest.mark.parametrize("hotwords", [None, ["omega", "psi chi"]])
@pytest.mark.parametrize("lists", [True, False])
def test_counts_equal_each_line_encoded_alone(builders, manifest, chunk, hotwords, lists):
    rng = np.random.default_rng(0)
    for prompt in builders:
        want = np.asarray(reference(prompt, hotwords, lists, manifest))
        assert want.max() > want[0] > 0 and (want == 0).sum() >= 4 * 3  # lines longer than the plain one, bad ones
        counted = LinePrompts(prompt, hotwords, lists)
        first = rng.permutation(len(manifest))[:7]  # counted in two calls: the second reuses the first's lines
        assert counted.counts(manifest, first)[0].tolist() == want[first].tolist()
        again = Manifest.open(manifest.path, need_target=False)  # another opening of the file shares the counts
        tokens, fields = counted.counts(again, np.arange(len(manifest)))
        assert tokens.tolist() == want.tolist()
        gives = [None if u is None else (task_of(u), u.system, u.hotwords if lists else None) for u in _utts(manifest)]
        assert fields.tolist() == [
            0 if g is None else sum(1 << k for k, v in enumerate(g) if v is not None) for g in gives
        ]


def _utts(manifest):
    for i in range(len(manifest)):
        try:
            yield manifest[i]
        except BadRecord:
            yield None


@pytest.mark.parametrize("hotwords", [None, ["omega", "psi chi"]])
@pytest.mark.parametrize("lists", [True, False])
def test_decoding_prompt_finds_what_the_line_by_line_walk_found(builders, manifest, chunk, hotwords, lists):
    for prompt in builders:
        base = len(prompt.encode(None).ids)
        base = max(base, len(prompt.encode(None, hotwords=hotwords).ids)) if lists and hotwords else base
        most, line = reference_most(prompt, hotwords, lists, manifest, base)
        counted = LinePrompts(prompt, hotwords, lists)
        got, said = decoding_prompt(prompt, hotwords, manifest, lists=lists, counted=counted)
        assert got == most
        if line is None:
            assert "m.jsonl" not in said
        else:
            assert said.startswith(f"{manifest.path}:{manifest.lineno(line)} (key {manifest[line].key})'s ")
        assert decoding_prompt(prompt, hotwords, manifest, lists=lists) == (got, said)  # a LinePrompts of its own


def test_a_task_for_the_lines_without_their_own_is_counted_as_the_dataset_renders_it(builders, manifest):
    """decode --task: a line without its own `prompt` (a blank one included) renders the task given, so the window
    that fits the context and the budget count it; a line's own prompt wins."""
    task = "Write down every word said in this recording, exactly as it is spoken, numbers spelled out."
    for prompt in builders:
        want = reference(prompt, None, True, manifest, task)
        counted = LinePrompts(prompt, None, True, task=task)
        assert counted.counts(manifest, np.arange(len(manifest)))[0].tolist() == want
        assert want != reference(prompt, None, True, manifest)  # the task moves the counts
        assert decoding_prompt(prompt, None, manifest, counted=counted, task=task)[0] == max(want)
        with pytest.raises(ValueError, match="another prompt builder, list, `lists` or task"):
            decoding_prompt(prompt, None, manifest, counted=counted)
    rows = DecodeRows(SimpleNamespace(prompt=builders[0]), SimpleNamespace(), task=task)
    assert rows.prompts(manifest, np.arange(len(manifest))).tolist() == reference(builders[0], None, True, manifest,
                                                                                   task)  # fmt: skip


def test_decode_rows_counts_a_window_as_its_line_and_refuses_other_counts(builders, manifest):
    prompt = builders[1]
    model = SimpleNamespace(prompt=prompt)
    windows = {1: [Window(0, 16000), Window(12000, 32000, True)], 6: [Window(0, 16000), Window(8000, 48000, True)]}
    windowed = WindowedManifest(manifest, windows, 16000)
    want = reference(prompt, ["omega"], True, manifest)
    rows = DecodeRows(model, SimpleNamespace(), ["omega"], True)
    items = np.arange(len(windowed))
    assert rows.prompts(windowed, items).tolist() == [want[int(i)] for i in windowed.origin]
    with pytest.raises(ValueError, match="another prompt builder"):
        DecodeRows(model, SimpleNamespace(), None, True, rows.lines)
    with pytest.raises(ValueError, match="another prompt builder"):
        decoding_prompt(prompt, None, manifest, counted=rows.lines)


def test_prompt_sizes_are_the_lengths_encode_gives(builders):
    asked = [(None, None, None), ("Say it.", ["a b", "c"], None), (None, ["x <|im_end|> y"], "Be brief."),
             (f"{AUDIO_PLACEHOLDER}", ["a"], None), (None, ["a"], f"{AUDIO_PLACEHOLDER}")]  # fmt: skip
    for prompt in builders:
        want = []
        for task, hotwords, system in asked:
            try:
                want.append(len(prompt.encode(None, task=task, hotwords=hotwords, system=system).ids))
            except ValueError:
                want.append(None)
        assert prompt.prompt_sizes(asked) == want and want.count(None) >= 2


@pytest.mark.parametrize("every", [False, True], ids=["rounds", "every_line"])
def test_ranks_count_their_shares_and_find_what_one_process_finds(builders, manifest, chunk, every, monkeypatch):
    """On 2 decoding ranks (llmasr.export.decode_world) each counts its share of the lines a call has not counted, in
    rounds of CHUNK lines a rank or all at once (`every`: the budget counts every line), and the gathers give every
    rank one process's counts, bad lines and lines that cannot render 0."""
    prompt, hotwords = builders[2], ["omega", "psi chi"]  # refusing: some lines cannot render
    want = decoding_prompt(prompt, hotwords, manifest)
    alone = LinePrompts(prompt, hotwords)
    tokens, fields = alone.counts(manifest, np.arange(len(manifest)))
    assert tokens.tolist() == reference(prompt, hotwords, True, manifest)
    counted = lines_counted_by_thread(monkeypatch)

    def rank(r, gather):
        lines = LinePrompts(prompt, hotwords, world=thread_world(r, 2, gather))
        found = decoding_prompt(prompt, hotwords, manifest, counted=lines, every=every)
        return found, lines.counts(manifest, np.arange(len(manifest)))  # the rest of the lines, where any

    for found, (got_tokens, got_fields) in run_ranks(2, rank):
        assert found == want
        assert got_tokens.tolist() == tokens.tolist() and got_fields.tolist() == fields.tolist()
    assert sorted(counted["rank0"] + counted["rank1"]) == list(range(len(manifest)))  # each line by one rank
    assert abs(len(counted["rank0"]) - len(counted["rank1"])) <= len(manifest) // chunk + 2


def test_each_rank_counts_lines_of_every_length(builders, tmp_path, monkeypatch):
    """A rank's share was every N-th line by its place in the file: a manifest whose every other line carries a long
    biasing list (two sources interleaved) gave one of 2 ranks every long prompt to render and tokenize. The share
    is now every N-th line in the order asked (decoding_prompt: the longest lines first)."""
    rows = [{"key": f"u{i}", "source": "a.wav", "duration": 1.0} for i in range(40)]
    for i in range(1, 40, 2):
        rows[i]["hotwords"] = [f"phrase {i} number {k}" for k in range(8)]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    manifest = Manifest.open(path, need_target=False)
    counted = lines_counted_by_thread(monkeypatch)
    prompt = builders[0]

    def rank(r, gather):
        lines = LinePrompts(prompt, None, world=thread_world(r, 2, gather))
        return decoding_prompt(prompt, None, manifest, counted=lines, every=True)

    assert run_ranks(2, rank) == [decoding_prompt(prompt, None, manifest)] * 2
    listed = [sum(1 for i in counted[name] if rows[i].get("hotwords")) for name in ("rank0", "rank1")]
    assert listed == [10, 10]
