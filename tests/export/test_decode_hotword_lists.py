"""Decoding with biasing lists: per-line lists and --hotwords, batched == one-by-one, results rows, the token cap
saved with the export, the training prompt equal to the decoding prompt, list-file errors."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from llmasr.commands.decode import main
from llmasr.config_io import from_dict
from llmasr.data.collate import Collator
from llmasr.data.dataset import SpeechDataset
from llmasr.data.hotwords import HotwordSampler, HotwordsConfig
from llmasr.data.loader import open_manifests
from llmasr.export.decode import DecodeOptions, decode_loader, decode_manifest
from llmasr.models.decoding import AUTO_HOTWORD_BOOST, DecodeConfig
from llmasr.models.exported import MODEL_FILE, load_exported
from llmasr.testing.run_dirs import write_corpus

TEXTS = ["zero one two", "three four", "five six seven eight", "nine", "hello world", "the quick brown fox"]
LISTS = {0: ["two", "seven eight"], 2: ["eight"], 3: [], 5: ["quick brown", "lazy dog", "fox"]}  # line -> list


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """TEXTS with per-line lists on lines 0, 2, 3 (an explicit []) and 5; lines 1 and 4 have none."""
    path = write_corpus(tmp_path_factory.mktemp("hot_corpus"), TEXTS)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for i, words in LISTS.items():
        recs[i]["hotwords"] = words
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture(scope="module")
def phrase_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("phrases") / "hot.txt"
    path.write_text("world\nnine\n", encoding="utf-8")
    return path


def _rows(path):
    return [json.loads(line) for line in open(path)]


def expected_lists(default):
    return [LISTS.get(i, default) for i in range(len(TEXTS))]


def test_batched_equals_one_by_one_with_lists(model, corpus, tmp_path):
    opts = DecodeOptions(num_workers=0, hotwords=["world", "nine"], hotwords_file="hot.txt")
    batched = DecodeConfig(batch_seconds=100.0, max_new_tokens=6)
    single = DecodeConfig(batch_seconds=0.01, max_new_tokens=6)
    assert len(decode_loader(model, corpus, batched, opts)) == 1
    assert len(decode_loader(model, corpus, single, opts)) == len(TEXTS)
    b = decode_manifest(model, corpus, tmp_path / "b", batched, opts)
    decode_manifest(model, corpus, tmp_path / "s", single, opts)
    rows_b, rows_s = _rows(tmp_path / "b" / "results.jsonl"), _rows(tmp_path / "s" / "results.jsonl")
    assert [r["hyp"] for r in rows_b] == [r["hyp"] for r in rows_s]
    # A line's own list wins, an explicit [] included; the file's list goes to the lines without one.
    assert [r["hotwords"] for r in rows_b] == expected_lists(["world", "nine"])
    assert [r["hotwords"] for r in rows_s] == expected_lists(["world", "nine"])
    assert b["hotword_lists"] == 5 and b["hotword_phrases"] == 10 and b["hotwords_dropped"] == 0
    assert "hotwords: 5 of 6 utterances decoded with a list (--hotwords hot.txt" in b["text"]
    # the rendered lists are what the hotword scores read: B-/U- rates over exactly these rows
    assert "B-WER" in b["text"] and b["hotwords"]["utterances_with_list"] == 5
    assert [("hotword_scores" in r) for r in rows_b] == [bool(h) for h in expected_lists(["world", "nine"])]


def test_lists_change_the_prompt_and_none_keeps_it(model, corpus, tmp_path):
    plain = decode_loader(model, corpus, DecodeConfig(batch_seconds=0.01), DecodeOptions(num_workers=0))
    listed = decode_loader(
        model, corpus, DecodeConfig(batch_seconds=0.01), DecodeOptions(num_workers=0, hotwords=["nine"])
    )
    by_key = {b.keys[0]: b for b in plain}
    for batch in listed:
        other = by_key[batch.keys[0]]
        same = batch.hotwords == other.hotwords  # differ only on the lines without their own list
        assert same == (batch.keys[0] not in ("test001", "test004"))
        assert torch_equal(batch.text_ids, other.text_ids) == same
        assert (int(batch.audio_pos[0]) == int(other.audio_pos[0])) == same


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_training_prompt_is_the_decoding_prompt(model, corpus):
    """The training dataset (lists as the manifest gives them) and decoding render the same prompt tokens."""
    manifest, _ = open_manifests([str(corpus)], mix=False)
    cfg = from_dict(HotwordsConfig, {"enable": True, "source": "manifest_or_sample"}, "data.hotwords")
    train = SpeechDataset(
        manifest, model.frontend, train=True, prompt_builder=model.prompt,
        hotword_sampler=HotwordSampler.build(cfg, manifest, seed=0),
    )  # fmt: skip
    decode = SpeechDataset(manifest, model.frontend, train=False, prompt_builder=model.prompt)
    collate = Collator(model.prompt.pad_id)
    for i in LISTS:
        t, d = collate([train[i]]), collate([decode[i]])
        start = int(t.target_start[0])
        assert t.hotwords == d.hotwords == [LISTS[i]]
        assert t.text_ids[0, :start].tolist() == d.text_ids[0, : int(d.target_start[0])].tolist()
        assert int(t.audio_pos[0]) == int(d.audio_pos[0])
        target = model.prompt.tokenizer.decode(t.text_ids[0, start : int(t.text_lens[0]) - 1].tolist())
        assert target == TEXTS[i]  # the labels are the transcript alone, never the list


def test_token_cap_saved_with_the_export_drops_longest_first(exported_dir, corpus, tmp_path, capsys):
    capped = tmp_path / "capped"
    shutil.copytree(exported_dir, capped)
    desc = yaml.safe_load((capped / MODEL_FILE).read_text())
    assert desc["prompt"]["hotwords_template"] == "Hotwords: {hotwords}. "
    tok = load_exported(exported_dir).prompt.tokenizer
    phrases = LISTS[5]
    sizes = [len(tok.encode(p, add_special_tokens=False)) for p in phrases]
    kept = [p for j, p in enumerate(phrases) if j != sizes.index(max(sizes))]  # the longest in tokens goes
    desc["prompt"]["hotwords_max_tokens"] = len(tok.encode(", ".join(kept), add_special_tokens=False))
    (capped / MODEL_FILE).write_text(yaml.safe_dump(desc))
    args = ["--model", str(capped), "--data", str(corpus), "--output", str(tmp_path / "o"), "--num-workers", "0"]
    assert main([*args, "--max-new-tokens", "2"]) == 0
    rows = {r["key"]: r for r in _rows(tmp_path / "o" / "results.jsonl")}
    last = rows["test005"]
    assert last["hotwords"] == kept and last["hotwords_dropped"] == 1
    wer = (tmp_path / "o" / "wer.txt").read_text()
    assert "dropped by the token cap" in wer and json.loads((tmp_path / "o" / "wer.json").read_text())[
        "hotwords_dropped"
    ] == sum(r["hotwords_dropped"] for r in rows.values())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "hotword file not found"),
        (b"world\n\nnine\n", ":2: empty line"),
        (b"world\nnin\xe9\n", ":2: not UTF-8"),
    ],
)
def test_hotwords_file_errors(exported_dir, corpus, tmp_path, capsys, content, message):
    path = tmp_path / "hot.txt"
    if content is not None:
        path.write_bytes(content)
    args = ["--model", str(exported_dir), "--data", str(corpus), "--output", str(tmp_path / "o")]
    assert main([*args, "--hotwords", str(path)]) == 2
    err = capsys.readouterr().err
    assert "--hotwords: " in err and str(path) in err and message in err
    assert not (tmp_path / "o").exists()


def test_cli_hotwords_file(exported_dir, corpus, phrase_file, tmp_path, capsys):
    args = ["--model", str(exported_dir), "--data", str(corpus), "--output", str(tmp_path / "o"), "--num-workers", "0"]
    assert main([*args, "--max-new-tokens", "2", "--hotwords", str(phrase_file)]) == 0
    assert [r["hotwords"] for r in _rows(tmp_path / "o" / "results.jsonl")] == expected_lists(["world", "nine"])
    out = capsys.readouterr().out
    assert f"--hotwords {phrase_file} where a line has no list of its own" in out
    assert f"boosted in the search by {AUTO_HOTWORD_BOOST:g} per phrase token" in out  # CTC-guided: the default
    assert main([*args, "--max-new-tokens", "2", "--hotwords", str(phrase_file), "--hotword-boost", "0"]) == 0
    assert "not boosted in the search" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "wer.json").read_text())["hotword_boost"] == 0.0
    assert main([*args, "--max-new-tokens", "2", "--hotwords", str(phrase_file), "--hotwords-unprompted"]) == 0
    rows = _rows(tmp_path / "o" / "results.jsonl")
    assert [r["hotwords"] for r in rows] == [[]] * len(TEXTS)
    assert [r["hotwords_scored"] for r in rows] == expected_lists(["world", "nine"])


def test_a_boost_given_with_unprompted_lists_is_named(exported_dir, corpus, phrase_file, tmp_path, caplog):
    """--hotwords-unprompted uses no list in the search either: a --hotword-boost beside it had been taken and done
    nothing, unsaid (the same text as without it)."""
    args = ["--model", str(exported_dir), "--data", str(corpus), "--num-workers", "0", "--max-new-tokens", "2",
            "--hotwords", str(phrase_file), "--hotwords-unprompted"]  # fmt: skip
    with caplog.at_level("WARNING", logger="llmasr"):
        assert main([*args, "--output", str(tmp_path / "b"), "--hotword-boost", "3"]) == 0
    assert "--hotword-boost 3 with --hotwords-unprompted: an unprompted run uses no list, neither in the prompt nor " \
        "in the search, so the boost does nothing" in caplog.text  # fmt: skip
    caplog.clear()
    with caplog.at_level("WARNING", logger="llmasr"):
        assert main([*args, "--output", str(tmp_path / "z"), "--hotword-boost", "0"]) == 0
    assert "with --hotwords-unprompted" not in caplog.text  # 0 asks for no boost: nothing to say


def test_a_boost_in_a_search_no_ctc_head_guides_is_named(exported_dir, corpus, phrase_file, tmp_path, caplog):
    """Without CTC guidance the LLM alone, boosted, writes listed names the audio does not hold (the boost's default
    is 0 there), and a --hotword-boost given with --ctc-weight 0 had been taken without a word."""
    from llmasr.export.transcribe import Transcriber

    args = ["--model", str(exported_dir), "--data", str(corpus), "--num-workers", "0", "--max-new-tokens", "2",
            "--hotwords", str(phrase_file), "--hotword-boost", "2"]  # fmt: skip
    said = "hotword boost 2 in a search no CTC head guides (ctc_weight is 0): the LLM alone, boosted, writes listed"
    with caplog.at_level("WARNING", logger="llmasr"):
        assert main([*args, "--output", str(tmp_path / "a"), "--ctc-weight", "0"]) == 0
    assert caplog.text.count(said) == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="llmasr"):
        assert main([*args, "--output", str(tmp_path / "b"), "--ctc-weight", "0.5"]) == 0  # guided: as meant
        assert main([*args, "--output", str(tmp_path / "c"), "--ctc-weight", "0", "--hotwords-unprompted"]) == 0
        Transcriber.load(exported_dir, hotword_boost=2.0)
    assert "no CTC head guides" not in caplog.text  # the unprompted run has its own warning: the boost does nothing
    with caplog.at_level("WARNING", logger="llmasr"):
        Transcriber.load(exported_dir, hotword_boost=2.0, ctc_weight=0.0)
    assert said in caplog.text


def test_unprompted_lists_are_scored_not_rendered(model, corpus, tmp_path):
    """--hotwords-unprompted: the text equals decoding with no lists at all, the rows keep the lists chosen as usual
    (a line's own, else the file's) and the B-/U- scores read them: the unbiased baseline of the same lists."""
    plain = corpus.parent / "plain.jsonl"  # beside it: the audio paths are relative to the manifest
    recs = [json.loads(line) for line in corpus.read_text().splitlines()]
    plain.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "hotwords"}) + "\n" for r in recs))
    cfg = DecodeConfig(batch_seconds=100.0, max_new_tokens=6)
    base = DecodeOptions(num_workers=0, hotwords=["world", "nine"], hotwords_file="hot.txt")
    unprompted = DecodeOptions(**{**base.__dict__, "hotwords_unprompted": True})
    got = decode_manifest(model, corpus, tmp_path / "u", cfg, unprompted)
    decode_manifest(model, plain, tmp_path / "p", cfg, DecodeOptions(num_workers=0))
    decode_manifest(model, corpus, tmp_path / "b", cfg, base)
    rows_u, rows_p = _rows(tmp_path / "u" / "results.jsonl"), _rows(tmp_path / "p" / "results.jsonl")
    rows_b = _rows(tmp_path / "b" / "results.jsonl")
    assert [r["hyp"] for r in rows_u] == [r["hyp"] for r in rows_p]
    assert [r["hotwords"] for r in rows_u] == [[]] * len(TEXTS)
    assert [r["hotwords_scored"] for r in rows_u] == expected_lists(["world", "nine"])
    assert [r["hotwords_scored"] for r in rows_u] == [r["hotwords"] for r in rows_b]
    assert got["hotwords"]["utterances_with_list"] == 5 and got["hotword_lists"] == 0
    assert "scored but not used, neither in the prompt nor in the search" in got["text"] and "B-WER" in got["text"]
    # the baseline's B-/U- split is that of its own hypotheses under the lists
    for r in rows_u:
        if r["hotwords_scored"]:
            assert r["hotword_scores"]["b_errors"] + r["hotword_scores"]["u_errors"] == r["errors"]
    # under a prompt token cap the baseline scores the lists the prompted run kept, not the lists before the cap
    cap, model.prompt.hotwords_max_tokens = model.prompt.hotwords_max_tokens, 1
    try:
        decode_manifest(model, corpus, tmp_path / "cu", cfg, unprompted)
        decode_manifest(model, corpus, tmp_path / "cb", cfg, base)
    finally:
        model.prompt.hotwords_max_tokens = cap
    capped = [r["hotwords"] for r in _rows(tmp_path / "cb" / "results.jsonl")]
    assert [r["hotwords_scored"] for r in _rows(tmp_path / "cu" / "results.jsonl")] == capped
    assert capped != expected_lists(["world", "nine"])


def test_hotwords_given_as_funasr_text_say_to_write_a_file(exported_dir, corpus, tmp_path, capsys, monkeypatch):
    """`--hotwords "魔搭 达摩院"`, as FunASR's generate(hotword=...) takes the phrases themselves: the error had said
    only "hotword file not found: 魔搭 达摩院"."""
    monkeypatch.chdir(tmp_path)
    args = ["--model", str(exported_dir), "--data", str(corpus), "--output", str(tmp_path / "o")]
    assert main([*args, "--hotwords", "魔搭 达摩院"]) == 2
    err = capsys.readouterr().err
    assert (
        "--hotwords: hotword file not found: 魔搭 达摩院; FunASR's hotword text form (phrases split at spaces) is "
        "not read here: write the phrases ['魔搭', '达摩院'] one a line into a UTF-8 file and give its path" in err
    )
    for path in ("my hot.txt", "lists/a b"):  # a file's name, mistyped: no word of FunASR's text form
        assert main([*args, "--hotwords", path]) == 2
        assert "FunASR" not in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_hotwords_lines_are_counted_under_one_reason(exported_dir, corpus, tmp_path, capsys):
    """A line whose `hotwords` held an empty phrase was counted as "field 'hotwords'[] is an empty phrase" (its
    index cut out of the reason), one that was not a list as "wrong field type or value"."""
    recs = [json.loads(line) for line in corpus.read_text().splitlines()]
    recs[1]["hotwords"], recs[4]["hotwords"] = ["ok", ""], "one"
    path = corpus.parent / "bad_lists.jsonl"  # beside the audio its lines name
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    args = ["--model", str(exported_dir), "--data", str(path), "--output", str(tmp_path / "o"), "--num-workers", "0"]
    assert main([*args, "--max-new-tokens", "2", "--max-bad-fraction", "1"]) == 0
    summary = json.loads((tmp_path / "o" / "wer.json").read_text())
    assert summary["skipped_by_reason"] == {"bad hotwords list": 2}
    assert "skipped (bad data): 2 (bad hotwords list: 2)" in capsys.readouterr().out


def test_a_funasr_runtime_hotword_file_is_decoded_as_written_with_a_warning(exported_dir, corpus, tmp_path, caplog):
    """`--hotwords` given FunASR-runtime's `PHRASE WEIGHT` lines: each line had been a phrase, its weight included,
    without a word. The file is still read as written (the numbers may be part of the phrases), with a warning."""
    path = tmp_path / "hot.txt"
    path.write_text("world 20\nnine 15\n", encoding="utf-8")
    args = ["--model", str(exported_dir), "--data", str(corpus), "--output", str(tmp_path / "o"), "--num-workers", "0"]
    assert main([*args, "--max-new-tokens", "2", "--hotwords", str(path)]) == 0
    assert (
        f"{path}: every phrase ends in a number after a space ({path}:1 'world 20', {path}:2 'nine 15')" in caplog.text
    )
    assert [r["hotwords"] for r in _rows(tmp_path / "o" / "results.jsonl")] == expected_lists(["world 20", "nine 15"])


def test_hotword_flags_without_any_list_are_named(exported_dir, corpus, phrase_file, tmp_path, capsys, caplog):
    """--hotwords-unprompted and --hotword-boost act on the lines' lists alone: with no --hotwords and no line with
    a list they had changed nothing and said nothing. Lists are known once the manifest is read: the log, wer.txt
    and wer.json say it then, naming the flags; a decode with lists, or without the flags, says nothing of it."""
    recs = [json.loads(line) for line in corpus.read_text().splitlines()]
    plain = corpus.parent / "no_lists.jsonl"  # beside the audio its lines name
    plain.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "hotwords"}) + "\n" for r in recs))
    args = [
        "--model",
        str(exported_dir),
        "--output",
        str(tmp_path / "o"),
        "--num-workers",
        "0",
        "--max-new-tokens",
        "2",
    ]
    flags = ["--hotwords-unprompted", "--hotword-boost", "2"]
    with caplog.at_level("WARNING", logger="llmasr"):
        assert main([*args, "--data", str(plain), *flags]) == 0
    said = (
        f"hotwords: --hotwords-unprompted and --hotword-boost 2 given, but no decoded line of {plain} has a biasing "
        "list (none gives a `hotwords` field with a phrase, and no --hotwords FILE was given): they had nothing to "
        "act on; give --hotwords FILE, or decode a manifest whose lines have lists"
    )
    assert said in caplog.text
    assert said in (tmp_path / "o" / "wer.txt").read_text().splitlines()
    summary = json.loads((tmp_path / "o" / "wer.json").read_text())
    assert summary["hotword_flags_unused"] == ["--hotwords-unprompted", "--hotword-boost 2"]
    # every line's own [] wins over --hotwords FILE: no list either
    empty = corpus.parent / "empty_lists.jsonl"
    empty.write_text("".join(json.dumps({**r, "hotwords": []}) + "\n" for r in recs))
    caplog.clear()
    with caplog.at_level("WARNING", logger="llmasr"):
        assert main([*args, "--data", str(empty), "--hotword-boost", "0", "--hotwords", str(phrase_file)]) == 0
    assert (
        f"hotwords: --hotword-boost 0 given, but no decoded line of {empty} has a biasing list (each gives "
        in (caplog.text)
        and f"`hotwords: []`, which wins over --hotwords {phrase_file}): it had nothing to act on" in caplog.text
    )
    capsys.readouterr()
    caplog.clear()
    for given in ([str(corpus), *flags], [str(plain)]):  # lists, or no flag: nothing said
        with caplog.at_level("WARNING", logger="llmasr"):
            assert main([*args, "--data", *given]) == 0
        assert "had nothing to act on" not in caplog.text + capsys.readouterr().out
        assert json.loads((tmp_path / "o" / "wer.json").read_text())["hotword_flags_unused"] == []
