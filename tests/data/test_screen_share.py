"""The start-up screen shared by the ranks of a node (ranks are threads here, their gather a barrier): each screens
its part of the lines, and every rank ends with what one rank screening everything finds; a rank that fails before
or during the exchange stops the others in it, none left waiting."""

from __future__ import annotations

import json
import threading
from collections import Counter

import numpy as np
import pytest
from speech_fakes import write_wav

import llmasr.data.audio as audio
import llmasr.data.screen as screen_mod
from llmasr.config_io import ConfigError
from llmasr.data.config import DataConfig
from llmasr.data.manifest import Manifest
from llmasr.data.mixed_manifest import MixedManifest
from llmasr.data.screen import screen
from llmasr.data.screen_share import ScreenShare
from llmasr.rank_verdict import RankFailure, node_name
from llmasr.testing.thread_ranks import run_ranks as ranks


def corpus(tmp_path) -> str:
    for i in range(4):
        write_wav(tmp_path / f"a{i}.wav", 0.5 + 0.25 * i)
    recs = []
    for i in range(23):
        rec = {"key": f"u{i}", "source": f"a{i % 4}.wav", "target": "w" * (i + 1)}
        if i % 3:
            rec["duration"] = 0.5 + 0.25 * (i % 4)  # the others are probed
        if i % 5 == 0:
            rec["target_len"] = 40 + i
        recs.append(json.dumps(rec))
    recs[7] = json.dumps({"key": "gone", "source": "gone.wav", "target": "x"})  # missing, duration unknown
    recs[11] = json.dumps({"key": "gone2", "source": "gone.wav", "target": "x", "duration": 1.0})
    recs[16] = "{not json"
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(recs) + "\n")
    return str(path)


def text_count(utt) -> int:
    """A stand-in for a line's LLM text positions (line_positions.LineRows.text)."""
    return 3 * len(utt.target) + 1


def mix(path):
    return MixedManifest([Manifest.open(path), Manifest.open(path)], weights=[1.0, 0.5])


def found(bad):
    return [(b.index, b.manifest, b.line, b.key, b.reason) for b in bad]


def test_the_ranks_of_a_node_screen_a_part_each_and_all_end_with_the_whole_screen(tmp_path, monkeypatch):
    path = corpus(tmp_path)
    whole = mix(path)
    tl, texts = np.zeros(len(whole), dtype=np.int64), np.zeros(len(whole), dtype=np.int64)
    expected, _ = screen(whole, None, tl, text_lens=(texts, text_count))
    assert texts[0] == text_count(whole[0]) and texts[len(whole.manifests[0])] == text_count(whole[0])
    assert len(expected) == 6 and np.isnan(whole.durations()).sum() == 4  # 3 bad lines of 23, twice; unparsed/gone
    probes, stats = Counter(), Counter()
    probe_span, missing = audio.probe_span, screen_mod.missing_audio

    def counted_probe(*a, **k):
        probes[threading.current_thread().name] += 1
        return probe_span(*a, **k)

    def counted_stat(*a, **k):
        stats[threading.current_thread().name] += 1
        return missing(*a, **k)

    monkeypatch.setattr(audio, "probe_span", counted_probe)
    monkeypatch.setattr(screen_mod, "missing_audio", counted_stat)

    def rank(r, gather):
        m, lens, mine = mix(path), np.zeros(len(whole), dtype=np.int64), np.zeros(len(whole), dtype=np.int64)
        bad, _ = screen(m, None, lens, ScreenShare(r, 3, gather, "node"), (mine, text_count))
        return found(bad), m.durations(), lens, mine

    for bad, durations, lens, mine in ranks(3, rank):
        assert bad == found(expected)
        np.testing.assert_array_equal(durations, whole.durations())
        np.testing.assert_array_equal(lens, tl)
        np.testing.assert_array_equal(mine, texts)  # each line's LLM text count (max_llm_tokens), from its screener
    # each rank stats and probes its third of the lines only: those that parse, and of them the ones of unknown duration
    unparsed = {b.index for b in expected if "JSON" in b.reason}
    unknown = np.isnan(mix(path).durations())
    for r in range(3):
        mine = [i for i in range(r, len(whole), 3) if i not in unparsed]
        assert stats[f"rank{r}"] == len(mine) and probes[f"rank{r}"] == int(unknown[mine].sum()), r
    assert len(unparsed) == 2 and sum(probes.values()) == int(unknown.sum()) - 2


def test_ranks_that_do_not_make_up_a_node_each_screen_everything(tmp_path):
    """Two ranks that both say they are part 0 of 2 (two hosts of one name, a launcher numbering otherwise): no
    share adds up, so each screens every line itself and the result is still the whole screen."""
    path = corpus(tmp_path)
    expected, _ = screen(mix(path))

    def rank(r, gather):
        bad, _ = screen(mix(path), None, None, ScreenShare(0, 2, gather, "node"))
        return found(bad)

    assert ranks(2, rank) == [found(expected)] * 2


def test_a_rank_failing_in_its_part_stops_every_rank_in_the_same_gather(tmp_path):
    def rank(r, gather):
        def work():
            if r == 1:
                raise OSError("its disk is gone")
            return {}

        return ScreenShare(r, 2, gather, "node").exchange(work)

    zero, one = ranks(2, rank)
    assert isinstance(zero, RankFailure) and zero.ranks_told
    want = f"rank 1 (node {node_name()}) could not build its training data; every rank stops with it:\n  OSError: its"
    assert want in str(zero) and "its disk is gone" in str(zero)
    assert isinstance(one, OSError) and one.ranks_told


def test_a_rank_that_failed_before_the_screen_stops_the_others_in_it(tiny_llm_dir, tmp_path, monkeypatch):
    """plan_run on two ranks of a node, rank 1's recipe naming a noise list its node lacks: it fails before its
    screen and sends why in the data's closing gather, which meets the others' screen; all stop, none waits."""
    from llmasr.recipe import load_recipe
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.train import plan as plan_mod

    data = write_tiny_corpus(tmp_path / "corpus", n=8, with_duration=False)
    good = load_recipe(data=tiny_recipe_dict(tiny_llm_dir, train=[data], output_dir=tmp_path / "run"))
    noisy = tiny_recipe_dict(tiny_llm_dir, train=[data], output_dir=tmp_path / "run")
    noise = tmp_path / "noise.jsonl"
    noisy["data"]["augment"] = {"noise": {"enable": True, "manifest": str(noise)}}
    noise.write_text(
        json.dumps({"key": "n", "source": str(data.parent / "wav" / sorted((data.parent / "wav").iterdir())[0].name)})
        + "\n"
    )
    bad = load_recipe(data=noisy)
    noise.unlink()  # gone from rank 1's node after the recipe was read
    share_of = {}
    monkeypatch.setattr(plan_mod.ScreenShare, "of_node", staticmethod(lambda gather: share_of[gather]))

    def rank(r, gather):
        share_of[gather] = ScreenShare(r, 2, gather, "node")
        return plan_mod.plan_run(bad if r else good, {}, rank=r, world_size=2, all_gather=gather)

    zero, one = ranks(2, rank)
    assert isinstance(zero, RankFailure), zero
    assert f"rank 1 (node {node_name()}) could not build its training data" in str(zero) and "noise.jsonl" in str(zero)
    assert isinstance(one, ConfigError) and not isinstance(one, RankFailure)
    assert str(one).startswith("data.augment.noise.manifest: ") and "noise.jsonl" in str(one)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"LOCAL_RANK": "1", "LOCAL_SIZE": "4"}, (1, 4)),  # deepspeed's launcher
        ({"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "3", "LOCAL_SIZE": "8"}, (2, 3)),  # torchrun's, first
        ({"LOCAL_RANK": "0", "LOCAL_SIZE": "1"}, (0, 1)),  # alone on its node: still in every exchange
        ({"LOCAL_SIZE": "4"}, (0, 1)),
        ({"LOCAL_RANK": "4", "LOCAL_SIZE": "4"}, (0, 1)),
        ({"LOCAL_RANK": "x", "LOCAL_SIZE": "4"}, (0, 1)),
    ],
)
def test_a_share_is_the_launchers_local_rank_and_size(env, expected):
    share = ScreenShare.of_node(print, environ=env)
    assert (share.part, share.parts) == expected


def test_the_launchers_node_number_tells_apart_hosts_of_one_name():
    """deepspeed's CROSS_RANK, torchrun's GROUP_RANK: two nodes whose hosts share a name still share their screens."""
    names = {ScreenShare.of_node(print, environ={"LOCAL_RANK": "0", "LOCAL_SIZE": "2", key: n}).node
             for key in ("CROSS_RANK", "GROUP_RANK") for n in ("0", "1")}  # fmt: skip
    assert len(names) == 2


def test_nodes_of_different_sizes_plan_alike_a_rank_alone_on_its_node_in_every_exchange(
    tiny_llm_dir, tmp_path, monkeypatch
):
    """plan_run on 3 ranks, as a hostfile of uneven slots launches them: node 0 runs 2 (LOCAL_SIZE=2), node 1 runs 1
    (LOCAL_SIZE=1), with the hotword corpus pass and durations to probe. The lone rank joins each of node 0's
    exchanges; had it skipped them, node 0's screen gather would meet its data check instead ("rank 2 could not
    build its training data: {'steps': ...}" on node 0, a KeyError on node 1)."""
    from llmasr.recipe import load_recipe
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.train import plan as plan_mod

    data = write_tiny_corpus(tmp_path / "corpus", n=12, with_duration=False)
    recipe = tiny_recipe_dict(tiny_llm_dir, train=[data], valid=[data], output_dir=tmp_path / "run")
    recipe["data"]["hotwords"] = {"enable": True}
    recipe = load_recipe(data=recipe)
    env_of, of_node = {}, ScreenShare.of_node
    monkeypatch.setattr(plan_mod.ScreenShare, "of_node", staticmethod(lambda gather: of_node(gather, env_of[gather])))
    layout = [("0", "2", "0"), ("1", "2", "0"), ("0", "1", "1")]  # LOCAL_RANK, LOCAL_SIZE, CROSS_RANK of rank r

    def rank(r, gather):
        env_of[gather] = dict(zip(("LOCAL_RANK", "LOCAL_SIZE", "CROSS_RANK"), layout[r]))
        plan = plan_mod.plan_run(recipe, {}, rank=r, world_size=3, all_gather=gather)
        return plan.per_epoch, plan.loaders[1].durations

    alone = plan_mod.plan_run(recipe, {}, rank=0, world_size=3)  # no exchange: every line screened here
    for got in ranks(3, rank, timeout=60):
        assert not isinstance(got, Exception), got
        assert got[0] == alone.per_epoch
        np.testing.assert_array_equal(got[1], alone.loaders[1].durations)


def test_decodings_ranks_split_the_header_probes_and_all_end_with_every_duration(tmp_path, monkeypatch):
    from llmasr.data.screen_share import shared_fill

    path = corpus(tmp_path)
    whole = Manifest.open(path)
    unknown = np.flatnonzero(np.isnan(whole.durations()))
    expected = [(b.line, b.reason) for b in whole.fill_durations()]
    assert len(expected) == 2 and len(unknown) == 10  # the missing file's line and the malformed one stay unknown
    probes = Counter()
    probe_span = audio.probe_span

    def counted_probe(*a, **k):
        probes[threading.current_thread().name] += 1
        return probe_span(*a, **k)

    monkeypatch.setattr(audio, "probe_span", counted_probe)

    def rank(r, gather):
        m = Manifest.open(path)
        bad = shared_fill(m, ScreenShare(r, 2, gather))
        return [(b.line, b.reason) for b in bad], m.durations()

    for bad, durations in ranks(2, rank):
        assert bad == expected
        np.testing.assert_array_equal(durations, whole.durations())
    unparsed = {b.line - 1 for b in whole.fill_durations() if "JSON" in b.reason}
    for r in range(2):
        assert probes[f"rank{r}"] == len([i for i in unknown if i % 2 == r and i not in unparsed]), r


def test_a_decoding_rank_that_fails_its_probes_stops_the_others_naming_decoding(tmp_path, monkeypatch):
    """The peer's failure had said "could not build its training data" in `llmasr decode` as well."""
    from speech_fakes import FakePromptBuilder

    from llmasr.data.frontend import FrontendConfig
    from llmasr.data.loader import build_decode_loader

    path = corpus(tmp_path)
    fill = Manifest.fill_durations

    def failing_fill(self, *a, **k):
        if threading.current_thread().name == "rank1":
            raise OSError("its disk is gone")
        return fill(self, *a, **k)

    monkeypatch.setattr(Manifest, "fill_durations", failing_fill)

    def rank(r, gather):
        return build_decode_loader(
            path, FrontendConfig(), prompt_builder=FakePromptBuilder(), batch_seconds=10.0, num_workers=0,
            max_bad_fraction=1.0, name="decode", rank=r, world_size=2, gather=gather,
        )  # fmt: skip

    zero, one = ranks(2, rank)
    assert isinstance(zero, RankFailure), zero
    assert (
        f"rank 1 (node {node_name()}) could not build its data to decode; every rank stops with it:\n  OSError: its"
        in str(zero)
        and "its disk is gone" in str(zero)
    )
    assert isinstance(one, OSError) and one.ranks_told


def test_fields_no_parser_reads_are_counted_over_every_rank_s_part_and_said_once(tmp_path, caplog):
    """A misspelt "hotword" trained every line without its biasing list, without a word. The screen counts the
    fields no parser reads over all the lines, each rank its part, and start_tracker says them once in train.log
    with the count, the first line and the field each may have meant."""
    caplog.set_level("INFO", logger="llmasr.data")
    path = tmp_path / "train.jsonl"
    corpus(tmp_path)
    recs = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines() if line != "{not json"]
    for i in (3, 8, 13, 19):
        recs[i]["hotword"] = ["alpha"]
    recs[5]["emo_target"] = "<|HAPPY|>"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    whole: dict = {}
    screen(Manifest.open(str(path)), unread=whole)
    assert whole == {"hotword": [4, 3], "emo_target": [1, 5]}

    def rank(r, gather):
        mine: dict = {}
        screen(Manifest.open(str(path)), None, None, ScreenShare(r, 3, gather, "node"), unread=mine)
        return mine

    assert ranks(3, rank) == [whole] * 3
    cfg = DataConfig(max_bad_fraction=0.5)
    screen_mod.start_tracker(Manifest.open(str(path)), cfg, name="train", indices=None, rank=0, world_size=1)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "fields llmasr does not read" in r.getMessage()]
    assert said == [  # a near miss is a warning; a corpus's own metadata, a note
        ("WARNING", f"train: fields llmasr does not read (they change nothing): hotword: 4 lines, first at {path}:4 "
                    "(did you mean 'hotwords'?)"),
        ("INFO", f"train: fields llmasr does not read (they change nothing): emo_target: 1 line, first at {path}:6"),
    ]  # fmt: skip
    caplog.clear()
    screen_mod.start_tracker(Manifest.open(str(path)), cfg, name="train", indices=None, rank=1, world_size=2)
    assert "fields llmasr does not read" not in caplog.text  # rank 0 says it


def test_special_token_tags_in_transcripts_are_counted_over_every_rank_s_part_and_said_once(tmp_path, caplog):
    """Transcripts pseudo-labelled with SenseVoiceSmall begin with its rich tags; a vocabulary that holds them spells
    them, so the lines are not bad and training taught the model to write the tags without a word. The screen counts
    them, each rank its part, and rank 0 names them with how to strip them."""
    caplog.set_level("INFO", logger="llmasr.data")
    path = tmp_path / "train.jsonl"
    corpus(tmp_path)
    recs = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines() if line != "{not json"]
    for i in (2, 7, 11):
        recs[i]["target"] = "<|en|><|NEUTRAL|><|Speech|><|woitn|>" + recs[i]["target"]
    recs[9]["target"] += " <|endoftext|>"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    whole: dict = {}
    screen(Manifest.open(str(path)), text=whole)
    assert whole == {"<|en|>": [3, 2], "<|NEUTRAL|>": [3, 2], "<|Speech|>": [3, 2], "<|woitn|>": [3, 2],
                     "<|endoftext|>": [1, 9]}  # fmt: skip

    def rank(r, gather):
        mine: dict = {}
        screen(Manifest.open(str(path)), None, None, ScreenShare(r, 3, gather, "node"), text=mine)
        return mine

    assert ranks(3, rank) == [whole] * 3
    cfg = DataConfig(max_bad_fraction=0.5)
    screen_mod.start_tracker(Manifest.open(str(path)), cfg, name="train", indices=None, rank=0, world_size=1)
    said = [r.getMessage() for r in caplog.records if "special-token tags" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("train: transcripts hold special-token tags")
    assert f"<|NEUTRAL|> in 3 lines (first: {path}:3)" in said[0] and "<|endoftext|> in 1 line" in said[0]
    assert "rich_transcription_postprocess" in said[0]
    caplog.clear()
    screen_mod.start_tracker(Manifest.open(str(path)), cfg, name="train", indices=None, rank=1, world_size=2)
    assert "special-token tags" not in caplog.text  # rank 0 says it


def test_each_line_s_ctc_label_count_comes_from_its_screener(tmp_path):
    """The frames each line's CTC labels need (llmasr.data.ctc_frames), counted by the rank that screens it, are
    every rank's after the exchange, as one rank counting everything finds them."""

    def rule(text):  # a character vocabulary without "z": a line holding one is refused
        return "no z" if "z" in text else np.asarray([ord(c) for c in text if not c.isspace()])

    path = corpus(tmp_path)
    whole = mix(path)
    need = np.zeros(len(whole), dtype=np.int64)
    expected, _ = screen(whole, rule, ctc_need=need)
    assert need.max() > 0 and (need == 0).sum() >= len(expected)

    def rank(r, gather):
        mine = np.zeros(len(whole), dtype=np.int64)
        screen(mix(path), rule, None, ScreenShare(r, 3, gather, "node"), ctc_need=mine)
        return mine

    for mine in ranks(3, rank):
        np.testing.assert_array_equal(mine, need)


def test_each_manifest_s_lines_per_language_are_counted_over_every_rank_s_part(tmp_path):
    """SenseVoice's per-line queries are said of the languages the screen gathers: each rank its part of a mix that
    lists one manifest twice, every rank ending with the whole count and the first line of each language."""
    path = tmp_path / "train.jsonl"
    corpus(tmp_path)
    recs = [json.loads(line) for line in path.read_text().splitlines() if line != "{not json"]
    for i, rec in enumerate(recs):
        rec.update({"lang": ("en", "<|zh|>", "de-DE")[i % 3]} if i % 4 else {})
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    whole: dict = {}
    screen(mix(str(path)), languages=whole)
    assert whole == {
        (str(path), None): [12, 0],
        (str(path), "en"): [12, 3],
        (str(path), "zh"): [10, 1],
        (str(path), "de"): [10, 2],
    }  # both copies counted; the first line's index in the mix

    def rank(r, gather):
        mine: dict = {}
        screen(mix(str(path)), None, None, ScreenShare(r, 3, gather, "node"), languages=mine)
        return mine

    assert ranks(3, rank) == [whole] * 3
