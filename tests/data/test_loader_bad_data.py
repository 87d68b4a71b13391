"""The training loader's bad data: lines screened at start, items that fail as they load, the limit that stops a
run, and the counts each rank keeps, resumes and shares over weighted visits."""

import json
import logging

import pytest
import torch
from speech_fakes import FRONTEND, build, cfg, good_corpus, with_lines, write_manifest, write_wav

from llmasr.config_io import from_dict
from llmasr.data.bad_data import TooMuchBadData, ranks_summary, refuse_summed
from llmasr.data.loader import build_dataloader
from llmasr.models.ctc_token_list import TokenListCTCTokenizer


@pytest.fixture
def mixed(tmp_path):
    """40 good utterances (no durations: filled from headers), plus 3 bad lines (2 screened at start)."""
    path = good_corpus(tmp_path, 40, with_duration=False)
    lines = path.read_text().splitlines()
    write_wav(tmp_path / "short.wav", 0.5)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    extra = [
        {"key": "digits", "source": "short.wav", "target": "room 101", "duration": 0.5},  # outside CTC vocab: screened
        {"key": "corrupt", "source": "corrupt.wav", "target": "hello", "duration": 0.8},  # fails only on decode
        {"key": "gone", "source": "gone.wav", "target": "hello", "duration": 0.7},  # missing file: screened too
    ]
    return write_manifest(tmp_path / "mixed.jsonl", lines + extra)


def test_workers_batches_and_bad_accounting(mixed):
    loader, sampler = build(cfg(num_workers=2), [str(mixed)])
    assert loader.num_workers == 2
    batches = list(loader)
    assert len(batches) == len(sampler) == len(loader)
    keys = [k for b in batches if not b.empty for k in b.keys]
    assert len(keys) == len(set(keys)) == 40
    assert sum(b.n_bad for b in batches) == 1  # corrupt shows as it loads; digits and gone were screened at start
    assert loader.bad_data.bad == 3 and loader.bad_data.good == 40
    assert set(loader.bad_data.by_reason) == {
        "target outside the CTC vocabulary",
        "unreadable or corrupt audio",
        "audio file not found",
    }
    for b in batches:
        assert b.feats.dtype == torch.float32 and b.feats.shape[2] == 560
        assert b.ctc_ids.shape[0] == b.feats.shape[0]
        assert float(b.durations.max()) * len(b.keys) <= 6.0 + 1e-6 or b.empty


def test_too_much_bad_data_stops_the_epoch(mixed):
    loader, _ = build(cfg(max_bad_fraction=0.05), [str(mixed)])  # the two lines screened at start are 4.7%
    with pytest.raises(TooMuchBadData, match="3 of 43"):
        list(loader)


def test_header_probe_failures_are_reported_up_front(tmp_path):
    path = good_corpus(tmp_path, 10, with_duration=False)
    lines = path.read_text().splitlines() + ['{"key": "gone", "source": "gone.wav", "target": "hello"}']
    m = write_manifest(tmp_path / "m.jsonl", lines)
    with pytest.raises(TooMuchBadData, match="gone.wav"):
        build(cfg(max_bad_fraction=0.05), [str(m)])
    loader, sampler = build(cfg(max_bad_fraction=0.5), [str(m)])
    assert sampler.filtered == {"bad_line": 1}
    list(loader)
    assert loader.bad_data.bad == 1 and loader.bad_data.good == 10


def test_each_epoch_lists_its_own_bad_examples_and_a_resume_at_its_start_the_same(mixed):
    """The examples TooMuchBadData lists are the epoch's, as its counts are: a line that fails every epoch is listed
    once, and a loader resumed at the epoch's start (a checkpoint of the epoch's end holds no position) lists what
    the uninterrupted one lists. They had piled up over the epochs, each failing line again every epoch."""

    def keys(loader):
        return [e["key"] for e in loader.bad_data.examples]

    whole, _ = build(cfg(max_bad_fraction=0.5), [str(mixed)])
    for epoch in (0, 1):
        whole.set_epoch(epoch)
        list(whole)
        assert sorted(keys(whole)) == ["corrupt", "digits", "gone"] and whole.bad_data.bad == 3
    resumed, _ = build(cfg(max_bad_fraction=0.5), [str(mixed)])
    resumed.set_epoch(1)
    list(resumed)
    assert keys(resumed) == keys(whole)


def test_all_bad_batch_keeps_ranks_in_step(tmp_path):
    write_wav(tmp_path / "ok.wav", 1.0)
    recs = [{"key": "ok", "source": "ok.wav", "target": "hello", "duration": 1.0}]
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)  # bad only when loaded
    recs += [{"key": f"bad{i}", "source": "corrupt.wav", "target": "hello", "duration": 1.0} for i in range(5)]
    m = write_manifest(tmp_path / "m.jsonl", recs)
    loader, sampler = build(cfg(max_bad_fraction=1.0, batching={"max_seconds": 1.0}), [str(m)])
    batches = list(loader)
    assert len(batches) == 6
    assert sum(b.empty for b in batches) == 5
    assert all(b.keys == ["ok"] for b in batches)


MANIFEST_ONLY = [  # unusable whatever the audio holds; durations given, so no header probe finds them
    {"key": "blank", "source": "wav_train/u0.wav", "target": "   ", "duration": 1.0},
    {"key": "typed", "source": "wav_train/u1.wav", "target": 7, "duration": 1.0},
    '{"key": "cut", "source": ',
]


def test_manifest_only_faults_refuse_the_run_at_start(tmp_path):
    m = with_lines(tmp_path, 40, MANIFEST_ONLY)
    with pytest.raises(TooMuchBadData) as err:
        build(cfg(max_bad_fraction=0.05), [m])  # 3 of 43 = 7% > 5%: decided before any batch
    msg = str(err.value)
    assert "3 of 43 items (6.98%) are unusable before training starts, above data.max_bad_fraction = 0.05" in msg
    for line, reason in ((41, "field 'target' is empty"), (42, "field 'target' is not text"), (43, "malformed JSON")):
        assert f"{m}:{line} " in msg and reason in msg


def test_manifest_only_faults_below_the_limit_are_skipped_and_counted_every_epoch(tmp_path, caplog):
    m = with_lines(tmp_path, 40, MANIFEST_ONLY)
    loader, sampler = build(cfg(max_bad_fraction=0.1), [m])
    assert "3 of 43 manifest lines are unusable before loading" in caplog.text and f"{m}:41" in caplog.text
    assert sampler.filtered == {"bad_line": 3}  # never batched: counted once, not again when loaded
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        keys = [k for b in loader for k in b.keys]
        assert len(keys) == 40 and loader.bad_data.bad == 3 and loader.bad_data.good == 40
    shares = [build(cfg(max_bad_fraction=0.1), [m], rank=r, world_size=2)[0].bad_data.bad for r in (0, 1)]
    assert sum(shares) == 3 and min(shares) >= 1  # each rank counts its share of the lines known bad


def test_a_resized_remainder_resumed_again_counts_the_known_bad_lines_as_it_would_uninterrupted(tmp_path):
    """Trained on 2 ranks, the epoch's remainder dealt to 1 (its counts start at 0), then saved and resumed again at
    1 rank: the known-bad lines stay uncounted in that remainder (they had been counted again, in full)."""
    m = with_lines(tmp_path, 40, MANIFEST_ONLY)
    two = [build(cfg(max_bad_fraction=0.5), [m], rank=r, world_size=2)[0] for r in (0, 1)]
    its = [iter(loader) for loader in two]
    for it in its:
        for _ in range(2):
            next(it)
    state = {**two[0].state_dict(), "bad_data": [loader.bad_data.state_dict() for loader in two]}
    whole = build(cfg(max_bad_fraction=0.5), [m])[0]
    whole.load_state_dict(state)
    list(whole)
    cut = build(cfg(max_bad_fraction=0.5), [m])[0]
    cut.load_state_dict(state)
    it = iter(cut)
    next(it)
    again = build(cfg(max_bad_fraction=0.5), [m])[0]
    again.load_state_dict({**cut.state_dict(), "bad_data": [cut.bad_data.state_dict()]})
    list(again)
    assert (again.bad_data.bad, again.bad_data.good) == (whole.bad_data.bad, whole.bad_data.good)


def test_lines_known_bad_count_once_per_visit_of_a_weighted_mix(tmp_path):
    """Good items count per visit, so lines known bad do too: a manifest of weight 3 holding them counts each three
    times (at start-up and in every epoch); one of weight 0.5 counts those of its lines an epoch draws."""
    a = good_corpus(tmp_path, 40, name="a")
    b = good_corpus(tmp_path, 10, name="b", seed=1)
    b = write_manifest(tmp_path / "b_bad.jsonl", b.read_text().splitlines() + [
        {**rec, "source": "wav_b/u0.wav"} if isinstance(rec, dict) else rec for rec in MANIFEST_ONLY])  # fmt: skip

    def mix(weight, fraction):
        return cfg(train=[{"path": str(a)}, {"path": str(b), "weight": weight}], max_bad_fraction=fraction)

    with pytest.raises(TooMuchBadData, match=r"9 of 79 items \(11\.39%\) are unusable before training starts"):
        build(mix(3.0, 0.1), mix(3.0, 0.1).train)  # 3 of 53 lines (5.7%), but 9 of 79 visits
    loader, _ = build(mix(3.0, 0.2), mix(3.0, 0.2).train)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        assert len([k for batch in loader for k in batch.keys]) == 70
        assert (loader.bad_data.bad, loader.bad_data.good) == (9, 70)
        assert sum(loader.bad_data.by_reason.values()) == 9
    loader, sampler = build(mix(0.5, 0.2), mix(0.5, 0.2).train)  # half of b each epoch: its bad lines as drawn
    for epoch in range(4):
        loader.set_epoch(epoch)
        keys = [k for batch in loader for k in batch.keys]
        assert loader.bad_data.seen == sampler._epoch_items(epoch).size and loader.bad_data.good == len(keys)


def test_transcripts_the_ctc_vocabulary_cannot_spell_are_found_at_start(tmp_path, caplog):
    """The fake CTC vocabulary spells a-z and space: a transcript with another character is a bad line before any
    audio loads (the dataset's own rule), not a surprise hours into the run; its letters alone are fine."""
    accented = [{"key": f"cafe{i}", "source": f"wav_train/u{i}.wav", "target": "café au lait", "duration": 1.0}
                for i in range(3)]  # fmt: skip
    m = with_lines(tmp_path, 40, [*accented, {"key": "fine", "source": "wav_train/u5.wav", "target": "cafe"}])
    loader, sampler = build(cfg(max_bad_fraction=0.1), [m])
    assert "3 of 44 manifest lines are unusable before loading" in caplog.text
    assert "target has CTC ids outside the vocabulary" in caplog.text and f"{m}:41" in caplog.text
    assert sampler.filtered == {"bad_line": 3} and sampler.skipped_indices("bad_line").tolist() == [40, 41, 42]
    assert len([k for b in loader for k in b.keys]) == 41 and loader.bad_data.bad == 3
    with pytest.raises(TooMuchBadData, match="3 of 44 items .* are unusable before training starts"):
        build(cfg(max_bad_fraction=0.05), [m])
    _, plain = build(cfg(max_bad_fraction=0.05), [m], ctc_tokenizer=None)  # no CTC head: nothing to spell
    assert plain.filtered == {}


def test_what_the_ctc_vocabulary_spells_unk_is_named_at_start(tmp_path, caplog):
    """A token list with <unk> spells a character it lacks <unk>: no line is bad, but the CTC head learns <unk>
    there and its text leaves the character out (Paraformer's tokens.json and a transcript's "，"), and nothing had
    said so. Each such character is named with its lines and the first of them; the lines still train."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(["<blank>", "<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"]), encoding="utf-8")
    extra = [{"key": f"cafe{i}", "source": f"wav_train/u{i}.wav", "target": "café au lait"}
             for i in range(3)] + [{"key": "naive", "source": "wav_train/u4.wav", "target": "naïve café"}]  # fmt: skip
    m = with_lines(tmp_path, 40, extra)
    with caplog.at_level(logging.WARNING, logger="llmasr.data"):
        loader, sampler = build(cfg(max_bad_fraction=0.1), [m], ctc_tokenizer=TokenListCTCTokenizer(str(tokens)))
    said = [r.getMessage() for r in caplog.records if "spells them <unk>" in r.getMessage()]
    assert said == [
        "train: the CTC vocabulary has no token for 2 characters or words of the transcripts and spells them <unk> "
        "(the CTC head learns <unk> there and its text leaves them out; the LLM learns them as written): "
        f"'é' in 4 lines (first: {m}:41); 'ï' in 1 line (first: {m}:44)"
    ]
    assert sampler.filtered == {} and len([k for b in loader for k in b.keys]) == 44


def test_a_vocabulary_of_another_case_is_said_to_be_at_start(tmp_path, caplog):
    """train.log names the case: the vocabulary holds "É" for a transcript's "é"."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(["<blank>", "<unk>", " ", *"abcdefghijklmnopqrstuvwxyz", "É"]), encoding="utf-8")
    extra = [{"key": "cafe", "source": "wav_train/u0.wav", "target": "café"}]
    m = with_lines(tmp_path, 10, extra)
    with caplog.at_level(logging.WARNING, logger="llmasr.data"):
        build(cfg(max_bad_fraction=0.1), [m], ctc_tokenizer=TokenListCTCTokenizer(str(tokens)))
    said = [r.getMessage() for r in caplog.records if "spells them <unk>" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith(
        f"'é' in 1 line (first: {m}:11; the vocabulary has 'É'). 1 of them the vocabulary has in another case: "
        "write the transcripts in its case (or use a vocabulary cased as they are)"
    )


def test_epoch_end_check_runs_when_the_loop_stops_at_the_last_batch(tmp_path):
    """The training loop stops iterating after an epoch's last batch (when its windows divide the epoch), so the
    epoch-end check must not wait for the iterator to be resumed past it."""
    write_wav(tmp_path / "vad.wav", 0.01)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    extra = [
        {"key": "corrupt", "source": "corrupt.wav", "target": "hello", "duration": 1.0},  # bad only when loaded
        {"key": "vad", "source": "vad.wav", "target": "hello", "duration": 1.0},  # its audio 0.01 s: bad when loaded
    ]
    loader, sampler = build(cfg(max_bad_fraction=0.01), [with_lines(tmp_path, 20, extra)])  # 2 of 22, < 1,000 seen
    with pytest.raises(TooMuchBadData, match="2 of 22 items .* at epoch end") as err:
        for _ in loader:
            if loader.consumed >= len(sampler):
                break
    assert "unreadable or corrupt audio: 1, manifest duration wrong: 1" in str(err.value)


def test_a_ranks_refusal_says_its_counts_are_its_share_and_which_pass_ended(tmp_path):
    """On 2 ranks the refusal had said "2 of 12 items", one rank's share read as the whole data's 24, and "at epoch
    end" where a validation pass had ended. A validation pass refuses on the ranks' sum instead (no rank alone, at
    its last batch, while the others run that batch's collectives)."""
    write_wav(tmp_path / "vad.wav", 0.01)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    extra = [
        {"key": f"corrupt{i}", "source": "corrupt.wav", "target": "hello", "duration": 1.0} for i in range(4)
    ]  # bad only when loaded: each rank meets its own share
    manifest = with_lines(tmp_path, 20, extra)
    loader, _ = build(cfg(max_bad_fraction=0.01), [manifest], train=True, rank=1, world_size=2)
    with pytest.raises(TooMuchBadData) as err:
        list(loader)
    first = str(err.value).splitlines()[0]
    bad, seen = loader.bad_data.bad, loader.bad_data.seen
    assert 0 < bad and seen < 24  # its share of the 24
    assert first == (
        f"train: too much bad data: {bad} of rank 1's {seen} items ({100 * bad / seen:.2f}%; each of the 2 ranks "
        "counts its own share of the data) are unusable, above data.max_bad_fraction = 0.01 (1.00%) at epoch end"
    )
    shares = []
    for rank in (0, 1):
        valid, _ = build(cfg(max_bad_fraction=0.01), [manifest], train=False, rank=rank, world_size=2)
        list(valid)  # the pass ends on every rank: no rank refuses its share
        assert valid.bad_data.seen < 24  # its share of the 24
        shares.append(valid.bad_data.share(20))
    assert sum(s["bad"] for s in shares) == 4
    with pytest.raises(TooMuchBadData) as err:
        refuse_summed(shares, valid.bad_data)
    assert str(err.value).splitlines()[0] == (
        "valid: too much bad data: 4 of 24 items (16.67%) are unusable, above data.max_bad_fraction = 0.01 (1.00%) "
        "at the end of the validation pass"
    )
    assert all(f"key=corrupt{i}:" in str(err.value) for i in range(4))  # both ranks' lines named
    assert getattr(err.value, "every_rank", False)  # every rank raises it: rank 0 alone reports it


@pytest.mark.parametrize("world", [2, 3])
def test_validation_scores_and_counts_the_same_items_at_any_world_size(tmp_path, world):
    """The validation set's items, dealt to 1, 2 or 3 ranks (padding repeats among them): every good item is scored
    once and every bad one counted once, on the ranks together, and the summed line says the same totals."""
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    extra = [{"key": f"corrupt{i}", "source": "corrupt.wav", "target": "hello", "duration": 0.4 + 0.3 * i}
             for i in range(5)]  # fmt: skip
    extra += [{"key": "gone", "source": "gone.wav", "target": "hello", "duration": 0.7},
              {"key": "blank", "source": "wav_train/u0.wav", "target": " ", "duration": 0.7}]  # fmt: skip
    manifest = with_lines(tmp_path, 23, extra)

    def dealt(world_size):
        keys, shares, repeats = [], [], 0
        for rank in range(world_size):
            loader, _ = build(cfg(max_bad_fraction=0.5), [manifest], train=False, rank=rank, world_size=world_size)
            for batch in loader:
                repeats += batch.duplicate
                if not (batch.empty or batch.duplicate):  # what validate() scores
                    keys += batch.keys
            shares.append(loader.bad_data.share(20))
        return keys, shares, repeats

    keys1, shares1, _ = dealt(1)
    keys, shares, repeats = dealt(world)
    assert repeats > 0  # the case at stake: some rank ran a padding repeat
    assert len(keys1) == 23 and sorted(keys) == sorted(keys1)  # each good item scored once
    assert sum(s["bad"] for s in shares) == shares1[0]["bad"] == 7
    assert sum(s["good"] for s in shares) == 23
    line = ranks_summary(shares, "valid", "validation at update 1", 0.5, summed=True, full_list="CMD")
    assert line.startswith(f"valid: validation at update 1: 7 bad of 30 items on the {world} ranks together")
    assert "data.max_bad_fraction = 0.5 holds their sum" in line and line.endswith(". All 7: `CMD` lists them")
    assert "unreadable or corrupt audio: 5, audio file not found: 1, empty target: 1" in line
    assert line.count("key=") == 5 and "key=" not in ranks_summary(shares, "valid", "pass 2", 0.5, 0, summed=True)


def test_lines_known_bad_count_in_step_with_the_epoch(tmp_path):
    """20 blank transcripts in 4,020 lines (0.5%, under a 1% limit). Counted all at the epoch's start beside the few
    good items seen by then, they had read as 1.9% once the in-epoch check began (1,000 items) and stopped a run
    whose data is within the limit; counted in step with the epoch's batches, they reach their total at its end."""
    write_wav(tmp_path / "a.wav", 0.3)
    good = [{"key": f"u{i}", "source": "a.wav", "target": "hello", "duration": 0.3} for i in range(4000)]
    blank = [{"key": f"b{i}", "source": "a.wav", "target": "  ", "duration": 0.3} for i in range(20)]
    m = write_manifest(tmp_path / "m.jsonl", good[:1000] + blank + good[1000:])
    loader, sampler = build(cfg(max_bad_fraction=0.01, batching={"max_seconds": 12.0, "num_buckets": 1}), [str(m)])
    tracker, seen = loader.bad_data, 0
    for i, batch in enumerate(loader, start=1):
        seen += batch.size
        assert tracker.bad == int(20 * i / len(sampler)) or i == len(sampler)  # the share of the epoch so far
    assert seen == 4000 and (tracker.bad, tracker.good) == (20, 4000)
    assert tracker.by_reason == {"empty target": 20}


def test_each_rank_resumes_its_own_bad_data_counts(tmp_path):
    """Each rank counts its share of the lines known bad (index % world size) and its own bad items; a resume takes
    up that rank's entry of the gathered state. Rank 1 had taken rank 0's (DeepSpeed keeps one client state), and
    with it rank 0's share of the known-bad lines for the rest of the run."""
    path = good_corpus(tmp_path, 30)
    lines = path.read_text().splitlines()
    lines += [json.dumps({"key": f"b{i}", "source": "wav_train/u0.wav", "target": " "}) for i in range(5)]
    lines += [json.dumps({"key": "gone", "source": "gone.wav", "target": "hello", "duration": 0.5})]
    m = write_manifest(tmp_path / "m.jsonl", lines)
    data_cfg = cfg(max_bad_fraction=0.9, batching={"max_seconds": 3.0})
    ranks = [build(data_cfg, [str(m)], rank=r, world_size=2, epoch=0)[0] for r in (0, 1)]
    full = []
    for loader in ranks:
        list(loader)
        full.append((loader.bad_data.bad, loader.bad_data.good, dict(loader.bad_data.by_reason)))
    assert full[0] != full[1]  # the shares differ: 30 + 6 lines over 2 ranks, the missing file on one of them
    states = []
    for loader in ranks:
        it = iter(loader)
        next(it), next(it)
        states.append(loader.state_dict())
        del it
    gathered = {**states[0], "bad_data": [s["bad_data"] for s in states]}  # what the trainer saves
    for rank in (0, 1):
        again, _ = build(data_cfg, [str(m)], rank=rank, world_size=2, epoch=0)
        again.load_state_dict(gathered)
        list(again)
        assert (again.bad_data.bad, again.bad_data.good, dict(again.bad_data.by_reason)) == full[rank]
        assert {r["index"] % 2 for r in again.bad_data.static} == {rank}
    # saved at another world size, no rank's counts apply: the remainder counts afresh (its known-bad lines not again)
    one, _ = build(data_cfg, [str(m)], epoch=0)
    one.load_state_dict(gathered)
    batches = [b for b in one if not b.duplicate]  # the 2-rank plan's padding repeat, kept in order, counts once
    assert one.bad_data.bad == sum(b.n_bad for b in batches) and one.bad_data.good == sum(b.size for b in batches)


def test_a_loader_state_saved_before_the_counts_were_per_rank_still_resumes_them(tmp_path):
    """A checkpoint written before each rank's counts were gathered holds rank 0's tracker state, a dict, which had
    counted the epoch's known-bad lines all at its start: resumed at the same world size, the epoch ends with the
    counts of an uninterrupted one (it had lost them and never counted the lines still ahead)."""
    path = good_corpus(tmp_path, 30)
    lines = path.read_text().splitlines()
    lines += [json.dumps({"key": f"b{i}", "source": "wav_train/u0.wav", "target": " "}) for i in range(5)]
    m = write_manifest(tmp_path / "m.jsonl", lines)
    data_cfg = cfg(max_bad_fraction=0.9, batching={"max_seconds": 3.0})
    full, _ = build(data_cfg, [str(m)], epoch=0)
    list(full)
    assert (full.bad_data.bad, full.bad_data.good) == (5, 30)
    loader, _ = build(data_cfg, [str(m)], epoch=0)
    it = iter(loader)
    good = next(it).size + next(it).size
    old = {
        "sampler": loader.state_dict()["sampler"],
        "bad_data": {"good": good, "bad": 5, "by_reason": {"empty target": 5}, "examples": [], "static": []},
    }
    for rank, world in ((0, 1), (1, 2)):
        again, _ = build(data_cfg, [str(m)], epoch=0, rank=rank, world_size=world)
        if world == 1:
            again.load_state_dict(old)
            list(again)
            assert (again.bad_data.bad, again.bad_data.good) == (5, 30)
        else:  # rank 1 of 2 has no counts of its own in it: the known-bad lines of its share still count
            two, _ = build(data_cfg, [str(m)], epoch=0, rank=1, world_size=2)
            it = iter(two)
            next(it)
            state = {**two.state_dict(), "bad_data": old["bad_data"]}
            again.load_state_dict(state)
            list(again)
            assert again.bad_data.bad == len(again.bad_data.static) > 0


def test_a_transcript_past_the_llms_context_is_counted_not_batched(tmp_path, tiny_llm_dir):
    """A transcript longer than the LLM's context (a document pasted onto a clip) had been batched with the others,
    every row padded to its tokens: a batch of 21 x 27,025 text ids for a 2,048-token LLM, past its positions and,
    on a real LLM, out of memory mid-epoch. The training side's prompt builder (the LLM's config.json states its
    context) makes it a bad item, counted like any other, naming the count."""
    from llmasr.models.config import ModelConfig
    from llmasr.testing.tiny_recipe import tiny_model_section
    from llmasr.train.resolve import text_side

    path = good_corpus(tmp_path, 20)
    lines = path.read_text().splitlines()
    huge = {"key": "huge", "source": "wav_train/u0.wav", "target": " ".join(["hello world"] * 3000)}
    side = text_side(from_dict(ModelConfig, tiny_model_section(tiny_llm_dir), "model"))
    data_cfg = cfg(batching={"max_seconds": 60.0}, max_bad_fraction=0.1)
    manifest = write_manifest(tmp_path / "m.jsonl", [*lines, json.dumps(huge)])
    loader, _ = build_dataloader(data_cfg, [str(manifest)], FRONTEND, prompt_builder=side.prompt, train=True)
    batches = list(loader)
    assert max(b.text_ids.shape[1] for b in batches) < 100
    bad = [b for batch in batches for b in batch.bad]
    assert [b["key"] for b in bad] == ["huge"]
    assert "past the LLM's context of 2048" in bad[0]["reason"]
    assert loader.bad_data.by_reason == {"transcript past the LLM's context": 1}
    assert side.prompt.max_tokens == 2048  # the tiny LLM's max_position_embeddings


def test_the_ranks_counts_add_up_to_the_epochs_items_without_the_padding_repeats(tmp_path):
    """11 good lines and a corrupt one at 2 ranks: 5 batches, one trained again by the rank short of a batch to keep
    the ranks in step. Its items had been counted again (the two ranks together had seen 15 of the 12 items), so the
    ranks' counts summed in train.log had overstated the epoch."""
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    manifest = with_lines(tmp_path, 11, [{"key": "corrupt", "source": "corrupt.wav", "target": "hello", "duration": 1}])
    trackers, repeats = [], 0
    for rank in (0, 1):
        loader, _ = build(cfg(max_bad_fraction=0.5), [manifest], rank=rank, world_size=2)
        repeats += sum(b.duplicate for b in loader)
        trackers.append(loader.bad_data)
    assert repeats == 1
    assert sum(t.seen for t in trackers) == 12 and sum(t.bad for t in trackers) == 1


def test_a_bad_line_a_weighted_mix_visits_three_times_is_named_once_and_counted_three_times(tmp_path):
    """A corrupt clip in a manifest of weight 3: train.log's epoch line had named it three times over as the "first"
    bad lines ("b.jsonl:3 ...; b.jsonl:3 ...; b.jsonl:3 ..."), hiding any other, while counting it right."""
    a = good_corpus(tmp_path, 10, name="a")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    b = with_lines(tmp_path, 6, [{"key": "corrupt", "source": "corrupt.wav", "target": "hello", "duration": 0.8}])
    data_cfg = cfg(train=[{"path": str(a)}, {"path": b, "weight": 3.0}], max_bad_fraction=0.5)
    shares = []
    for rank in (0, 1):
        loader, _ = build(data_cfg, data_cfg.train, rank=rank, world_size=2)
        list(loader)
        shares.append(loader.bad_data.share())
        assert len({(e["manifest"], e["line"]) for e in loader.bad_data.examples}) == len(loader.bad_data.examples)
    assert sum(s["bad"] for s in shares) == 3
    line = ranks_summary(shares, "train", "epoch 0", 0.5)
    assert "3 bad of 31 items" in line and line.count(f"{b}:7 key=corrupt") == 1, line
