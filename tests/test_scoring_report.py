"""`llmasr score` (llmasr.scoring_report, llmasr.commands.score): a decode's own figures are reproduced from its
folder, its hyp.txt and the manifest it decoded, and two systems are compared on the same utterances: the change in
rate with its paired interval, the utterances each made better and worse, language by language."""

from __future__ import annotations

import json

import pytest

from llmasr.commands.score import main as score
from llmasr.export.decode_results import llm_summary
from llmasr.models.decoding import DecodeConfig

FOUND = dict(manifest="data/test.jsonl", lines=6, skipped=0, skipped_by_reason={})
TIMING = dict(audio_seconds=6.0, decode_seconds=1.0, device="cpu", mode="greedy")
LINES = [  # key, reference, language label, system A's hypothesis, system B's
    ("en 1", "turn the light on", "en-US", "turn the light on", "turn the lights on"),
    ("en2", "open the window", "en", "open a window", "open the window"),
    ("en3", "call my mother now", "English", "call my brother", "call my mother now"),
    ("zh1", "今天天气很好", "<|zh|>", "今天天汽很好", "今天天气很好"),
    ("zh2", "我们走吧", "zh-CN", "我们走吧", "我们走吧"),
    ("none", "one more line", None, "one more line", "one more"),
]


def decode_folder(tmp_path, column: int, name: str, hotwords=None):
    """A decode's folder as llmasr decode writes it (its summary writer), of system A's (3) or B's (4) hypotheses."""
    from llmasr.data.languages import language_key

    rows = [dict(key=k, ref=ref, hyp=line[column], duration=2.0, truncated=None, hotwords=hotwords,
                 lang=None if lab is None else language_key(lab), lang_label=lab, line=i + 1)
            for i, line in enumerate(LINES) for k, ref, lab in [line[:3]]]  # fmt: skip
    llm_summary(tmp_path / name, rows, dict(FOUND), DecodeConfig(), dict(TIMING))
    return tmp_path / name


@pytest.fixture
def corpus(tmp_path):
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({"key": k, "source": f"{i}.wav", "target": ref, **({"lang": lab} if lab else
                        {})}, ensure_ascii=False) + "\n" for i, (k, ref, lab, _, _) in enumerate(LINES)),
                        encoding="utf-8")  # fmt: skip
    return manifest, decode_folder(tmp_path, 3, "a"), decode_folder(tmp_path, 4, "b")


def test_a_decode_is_scored_as_decode_scored_it_from_its_folder_or_its_hyp_txt(corpus, capsys):
    manifest, a, _ = corpus
    wer_txt = (a / "wer.txt").read_text(encoding="utf-8").splitlines()
    rate = wer_txt[0].split(": ", 1)[1]
    languages = wer_txt[wer_txt.index("by language (the lines' `lang`):") :][:4]
    for ref, hyp in ((manifest, a), (manifest, a / "hyp.txt"), (a / "ref.txt", a / "results.jsonl"), (a, a)):
        assert score([str(ref), str(hyp)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[2] == f"A: {rate}", (ref, hyp)
        if ref == manifest:  # Kaldi's text names no language; results.jsonl the key alone ("en", not "en-US")
            assert out[3 : 3 + len(languages)] == languages
        elif ref == a:
            assert out[4].startswith("  en: WER 27.27%")
    assert json.loads((a / "wer.json").read_text())["rate"] > 0


def test_two_systems_compared_on_the_same_utterances(corpus, capsys, tmp_path):
    manifest, a, b = corpus
    out_json = tmp_path / "score.json"
    assert score([str(manifest), str(a), str(b / "hyp.txt"), "--names", "base,tuned", "--show", "1",
                  "--json", str(out_json)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    # tuned fixes en2, en3 and zh1, and breaks "en 1" and "none"
    assert "tuned against base: MER " in out
    assert "  utterances: 3 with fewer errors, 2 with more, 1 the same" in out
    assert "  worse in tuned, the largest changes first (1 of 2; errors base -> tuned):" in out
    assert "    en3 (2 -> 0) ref: call my mother now" in out
    assert "    zh1 (1 -> 0)" not in out  # --show 1: the largest change only
    summary = json.loads(out_json.read_text(encoding="utf-8"))
    (comp,) = summary["comparisons"]
    assert (comp["better"], comp["worse"], comp["same"]) == (3, 2, 1)
    assert [e["key"] for e in comp["better_examples"]] == ["en3"]
    assert comp["by_language"]["en"]["utterances"] == 3 and comp["by_language"]["zh"]["rate"][1] == 0.0
    base, tuned = summary["systems"]
    assert (base["name"], base["path"], tuned["path"]) == ("base", str(a), str(b / "hyp.txt"))
    assert comp["rate_change"] == pytest.approx(tuned["rate"] - base["rate"])
    low, high = comp["change_ci95"]
    assert low <= comp["rate_change"] <= high and 0.0 < comp["p_better"] < 1.0


def test_keys_without_a_hypothesis_are_refused_unless_asked(corpus, capsys, tmp_path):
    manifest, a, _ = corpus
    short = tmp_path / "short.txt"
    short.write_text("".join(line for line in (a / "hyp.txt").read_text(encoding="utf-8").splitlines(True)[:-1]))
    assert score([str(manifest), str(a), str(short)]) == 2
    assert "short.txt: 1 of the 6 reference keys have no hypothesis (none): --missing empty" in capsys.readouterr().err
    assert score([str(manifest), str(a), str(short), "--missing", "skip"]) == 0
    out = capsys.readouterr().out
    assert "warning: 1 of 6 reference keys lack a hypothesis in some system, left out of every system's score" in out
    assert "over 5 utterances" in out and "over 6 utterances" not in out
    with pytest.raises(SystemExit):  # a usage error, as argparse gives it
        score([str(manifest), str(a), str(short), "--names", "x"])
    assert "--names x: one name for each of the 2 systems" in capsys.readouterr().err


def test_biased_rates_under_the_lists_decode_scored_with(corpus, capsys, tmp_path):
    """B-/U- rates and recall: from the lists a decode's rows carry, or `--hotwords` for references without their
    own (as `llmasr decode --hotwords` gives them), the same lines as the decode's wer.txt."""
    manifest, _, _ = corpus
    phrases = ["mother", "window", "天气"]
    a = decode_folder(tmp_path, 3, "hot_a", phrases)
    b = decode_folder(tmp_path, 4, "hot_b", phrases)
    said = [line for line in (a / "wer.txt").read_text(encoding="utf-8").splitlines() if "B-MER" in line]
    assert len(said) == 1 and "U-MER" in said[0]
    (tmp_path / "phrases.txt").write_text("\n".join(phrases) + "\n", encoding="utf-8")
    for refs in ([str(a)], [str(manifest), "--hotwords", str(tmp_path / "phrases.txt")]):
        assert score([refs[0], str(a), str(b), *refs[1:]]) == 0
        out = capsys.readouterr().out
        assert f"  {said[0]}" in out
        assert "  B-MER 50.00% -> 0.00%, fewer biased errors in " in out and "hotword recall 33.33% -> 100.00%" in out
    assert score([str(manifest), str(a), str(b)]) == 0  # the manifest's lines have no lists, and none was given
    assert "B-MER" not in capsys.readouterr().out


def test_the_most_frequent_errors_are_counted_on_the_scored_units():
    from llmasr.scoring import score_corpus
    from llmasr.scoring_report import frequent_errors

    _, scores = score_corpus([("Open the window", "open a window"), ("open the door", "open a door now"),
                              ("今天天气很好", "今天天汽好")])  # fmt: skip
    text, found = frequent_errors(scores, 2)
    assert found == {"substitutions": [("the -> a", 2), ("气 -> 汽", 1)], "deletions": [("很", 1)],
                     "insertions": [("now", 1)]}  # fmt: skip
    assert text[0] == "  substitutions: the -> a x2, 气 -> 汽 x1"
    assert frequent_errors(scores, 0)[1] == {"substitutions": [], "deletions": [], "insertions": []}


def test_a_blank_reference_is_scored_as_decode_scored_it(tmp_path, capsys):
    """A manifest line whose target is blank (a silent clip) is a reference of no units, as decode scores it: the
    hypothesis' insertions are errors, and the manifest gives the decode folder's own rate."""
    lines = [("k1", "turn the light on", "turn the light"), ("k2", "", "noise words"), ("k3", "   ", "more")]
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({"key": k, "source": f"{k}.wav", "target": ref}) + "\n"
                                for k, ref, _ in lines), encoding="utf-8")  # fmt: skip
    rows = [dict(key=k, ref=ref, hyp=hyp, duration=1.0, truncated=None, line=i + 1)
            for i, (k, ref, hyp) in enumerate(lines)]  # fmt: skip
    llm_summary(tmp_path / "dec", rows, dict(FOUND), DecodeConfig(), dict(TIMING))
    rate = (tmp_path / "dec" / "wer.txt").read_text(encoding="utf-8").splitlines()[0].split(": ", 1)[1]
    assert "[ 4 / 4 words, 0 sub, 1 del, 3 ins ] over 3 utterances" in rate
    for ref in (manifest, tmp_path / "dec"):
        assert score([str(ref), str(tmp_path / "dec"), "--errors", "0"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].endswith(": 3 with a transcript") and out[2] == f"A: {rate}", ref


def test_a_decode_given_a_file_is_scored_under_its_rows_lists(tmp_path, capsys, caplog):
    """A row of a decode run with `--hotwords FILE` whose list is [] (its line's own `hotwords: []`, which wins over
    the file) had been given the file's list by `llmasr score DIR DIR --hotwords FILE`, so the B-/U- rates and recall
    were not the decode's wer.txt: "open the window" counted "window" as biased where decode had no list."""
    from llmasr.data.languages import language_key

    phrases = ["mother", "window", "天气"]
    rows = [dict(key=k, ref=ref, hyp=line[3], duration=2.0, truncated=None, hotwords=[] if i == 1 else phrases,
                 lang=None if lab is None else language_key(lab), lang_label=lab, line=i + 1)
            for i, line in enumerate(LINES) for k, ref, lab in [line[:3]]]  # fmt: skip
    folder = tmp_path / "decoded"
    llm_summary(folder, rows, {**FOUND, "hotwords_file": "phrases.txt"}, DecodeConfig(), dict(TIMING))
    said = [line for line in (folder / "wer.txt").read_text(encoding="utf-8").splitlines() if "B-MER" in line
            or "recall" in line]  # fmt: skip
    assert len(said) == 2
    (tmp_path / "phrases.txt").write_text("\n".join(phrases) + "\n", encoding="utf-8")
    assert score([str(folder), str(folder), "--hotwords", str(tmp_path / "phrases.txt")]) == 0
    out = capsys.readouterr().out
    assert all(f"  {line}" in out for line in said), (said, out)
    assert (
        f"1 of its rows carry no list (their lines gave their own [], or the token cap left none; first {folder}"
        in (caplog.text)
    )
