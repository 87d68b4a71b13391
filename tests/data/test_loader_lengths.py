"""What each clip costs the loader's batch budget: the length augmentation gives it in each epoch (speed, pauses,
per-visit draws), the length filters and truncation that keep it within the budget, and the noise list it mixes."""

import json
import logging

import numpy as np
import pytest
import soundfile as sf
from speech_fakes import (
    FakeCTCTokenizer,
    FakePromptBuilder,
    build,
    cfg,
    good_corpus,
    with_lines,
    write_manifest,
    write_wav,
)

from llmasr.config_io import ConfigError, from_dict
from llmasr.data.clip_lengths import draw_clip_lengths
from llmasr.data.config import DataConfig
from llmasr.data.frontend import FrontendConfig
from llmasr.data.loader import build_dataloader


def test_augmentation_follows_epoch_and_is_worker_independent(tmp_path):
    path = good_corpus(tmp_path, 8)
    aug = {"spec_augment": {"enable": True}}

    def feats(workers, epoch):
        loader, _ = build(cfg(num_workers=workers, augment=aug), [str(path)], epoch=0)
        loader.set_epoch(epoch)
        out = {}
        for b in loader:
            for k, f, n in zip(b.keys, b.feats, b.feat_lens):
                out[k] = f[:n].numpy()
        return out

    a, b, c = feats(0, 1), feats(2, 1), feats(0, 2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_each_visit_of_a_weighted_line_has_draws_of_its_own(tmp_path):
    """Weight 2 visits each line of b twice an epoch: each visit its own speed, pauses, noise-free SpecAugment
    masks and dither (llmasr.data.visit_keys), costed by the sampler at its own length. The two visits had been one
    example trained twice, and, of one length, mostly in the same batch."""
    a = good_corpus(tmp_path, 10, name="a")
    b = good_corpus(tmp_path, 10, name="b", seed=1)
    augment = {
        "speed_perturb": {"enable": True, "factors": [0.9, 1.0, 1.1]},
        "silence": {"enable": True, "prob": 0.5, "lead": [0.0, 0.6], "trail": [0.0, 0.3]},
        "spec_augment": {"enable": True},
    }
    data_cfg = from_dict(
        DataConfig,
        {"train": [{"path": str(a)}, {"path": str(b), "weight": 2.0}], "batching": {"max_seconds": 6.0},
         "num_workers": 0, "augment": augment},
        "data",
    )  # fmt: skip
    loader, sampler = build(data_cfg, data_cfg.train)
    frames_per_s = 100 / 6  # LFR 7/6 of 10 ms frames
    visits, same_batch = {}, 0
    for batch, keys in zip(loader, sampler.batches()):
        assert [k % 20 for k in keys] == batch.indices  # a repeated visit's key reads its line
        costs = sampler.costs.drawn(0, np.asarray(batch.indices), np.asarray(keys))
        for i, f, n, cost in zip(batch.indices, batch.feats, batch.feat_lens.tolist(), costs):
            assert n / frames_per_s == pytest.approx(cost, abs=0.07)  # each visit at its own drawn length
            visits.setdefault(i, []).append(f[:n].numpy())
        same_batch += len(batch.indices) - len(set(batch.indices))
    assert sorted(visits) == list(range(20)) and all(len(visits[i]) == (2 if i >= 10 else 1) for i in visits)
    assert all(not (v[0].shape == v[1].shape and np.array_equal(v[0], v[1])) for v in visits.values() if len(v) == 2)
    assert same_batch <= 3  # of 10 lines visited twice


def test_a_line_visited_once_keeps_its_draws(tmp_path):
    """Visit keys of first visits are the dataset indices: a run without repeated visits draws what it drew."""
    path = good_corpus(tmp_path, 8)
    loader, sampler = build(cfg(augment={"spec_augment": {"enable": True}}), [str(path)])
    dataset = loader.dataset
    for keys in sampler.batches():
        for k in keys:
            assert k < 8
            np.testing.assert_array_equal(dataset[k]["feats"], dataset[k]["feats"])
    again = dataset[3 + 8]  # a second visit of line 3: the same line, other draws
    assert again["index"] == 3 and again["key"] == dataset[3]["key"]
    assert not np.array_equal(again["feats"], dataset[3]["feats"])


def test_truncate_to_max_cuts_whisper_audio_at_its_window(tmp_path, caplog):
    """With a Whisper frontend the sampler keeps clips up to the window whole and costs longer ones at it; the
    dataset cuts those at the window too (it had cut them at max_duration, past the window, 40 s against 30 s)."""
    whisper = FrontendConfig(kind="whisper", n_mels=80, chunk_seconds=3.0)
    write_wav(tmp_path / "long.wav", 4.0)
    write_wav(tmp_path / "short.wav", 2.0)
    m = write_manifest(tmp_path / "w.jsonl", [
        {"key": "long", "source": "long.wav", "target": "hello there", "duration": 4.0},
        {"key": "short", "source": "short.wav", "target": "hello", "duration": 2.0},
    ])  # fmt: skip
    data_cfg = cfg(batching={"truncate_to_max": True, "max_seconds": 12.0})
    loader, sampler = build_dataloader(
        data_cfg, [str(m)], whisper, prompt_builder=FakePromptBuilder(), train=True, ctc_tokenizer=FakeCTCTokenizer()
    )
    lens = {k: int(n) for b in loader for k, n in zip(b.keys, b.feat_lens)}
    # 2 s: the 202 frames whose window reaches the clip (features.py); the cut clip: the window's 300
    assert lens == {"long": 300, "short": 202} and int(sampler.truncated_mask.sum()) == 1
    loader, _ = build_dataloader(
        cfg(batching={"max_seconds": 12.0}), [str(m)], whisper, prompt_builder=FakePromptBuilder(), train=True,
        ctc_tokenizer=FakeCTCTokenizer(),
    )  # fmt: skip
    assert [k for b in loader for k in b.keys] == ["short"]
    assert "longer than data.batching.max_duration = 40 s (the Whisper window, 3 s, caps it)" in caplog.text


def test_duration_filters_are_reported_with_their_lines(tmp_path, caplog):
    write_wav(tmp_path / "long.wav", 3.0)
    write_wav(tmp_path / "blip.wav", 0.1)
    extra = [{"key": f"long{i}", "source": "long.wav", "target": "hello", "duration": 3.0} for i in range(7)]
    extra.append({"key": "blip", "source": "blip.wav", "target": "hello", "duration": 0.1})
    m = with_lines(tmp_path, 10, extra)  # the 10 good ones last 0.3-2.0 s
    _, sampler = build(cfg(batching={"max_duration": 2.5, "min_duration": 0.25}), [m])
    assert sampler.filtered == {"too_long": 7, "too_short": 1}
    line = next(r.getMessage() for r in caplog.records if "skipped every epoch" in r.getMessage())
    assert line.startswith("train: 8 of 18 lines are skipped every epoch: ")
    assert f"7 longer than data.batching.max_duration = 2.5 s (first: {m}:11, {m}:12, {m}:13, {m}:14, {m}:15)" in line
    assert f"1 shorter than data.batching.min_duration = 0.25 s (first: {m}:18)" in line


def test_pauses_lengthen_training_items_and_the_budget_reserves_room_for_them(tmp_path):
    path = good_corpus(tmp_path, 24)
    durations = {json.loads(line)["key"]: json.loads(line)["duration"] for line in path.read_text().splitlines()}
    pauses = {"silence": {"enable": True, "prob": 1.0, "lead": [0.6, 0.6], "trail": [0.3, 0.3]}}
    frames_per_s = 100 / 6  # LFR 7/6 of 10 ms frames
    for train in (True, False):
        loader, sampler = build(cfg(augment=pauses), [str(path)], train=train)
        assert sampler.budget == 6.0
        for batch in loader:
            lens = batch.feat_lens.tolist()
            for key, n in zip(batch.keys, lens):
                # 0.9 s more frames in training; validation and decoding hear the clip as it is
                assert n / frames_per_s == pytest.approx(durations[key] + (0.9 if train else 0.0), abs=0.1)
            assert len(lens) * max(lens) / frames_per_s <= 6.0 + 0.1  # the budget counted the pauses
            if train:
                assert sampler.sizes[sampler.base_indices].min() >= 0.9 + 0.3


def test_lines_that_fit_only_at_some_draws_are_batched_in_the_epochs_they_fit(tmp_path, caplog):
    """A clip whose longest pauses pass the budget but whose shortest fit is not skipped for good: each epoch skips
    it only when that epoch's draw puts it over, and the loader hears it in the others."""
    m = with_lines(tmp_path, 10, [])  # 0.3-2.0 s
    pauses = {"silence": {"enable": True, "lead": [0.0, 4.5], "trail": [0.0, 0.5]}}
    data = cfg(augment=pauses)
    loader, sampler = build(data, [m])
    durations = np.asarray([json.loads(line)["duration"] for line in open(m)])
    sometimes = np.flatnonzero(durations + 5.0 > 6.0)
    assert sometimes.size and sampler.fits_sometimes.tolist() == sometimes.tolist()
    assert sampler.skipped_indices("over_batch_budget").size == 0
    heard = set()
    for epoch in range(6):
        loader.set_epoch(epoch)
        drawn = draw_clip_lengths(data.augment, data.seed, epoch, np.arange(durations.size))
        over = durations + drawn.lead + drawn.trail > 6.0  # the length this epoch gives each clip
        assert sampler.filtered == ({"over_batch_budget": int(over.sum())} if over.any() else {})
        batched = {i for batch in loader for i in batch.indices}
        assert batched == set(np.flatnonzero(~over).tolist())
        heard |= batched
    assert heard == set(range(durations.size))  # every line trained in some epoch
    line = next(r.getMessage() for r in caplog.records if "only at some" in r.getMessage())
    assert (
        f"train: {sometimes.size} lines fit the batch budget only at some of augmentation's lengths (at most its "
        "duration x 1 + 5 s (data.augment: speed_perturb's slowest factor, silence's lead[1] + trail[1])): each "
        "epoch skips those its draws put over it (first: " in line
    )
    assert "skipped every epoch" not in caplog.text


def test_truncated_lines_are_counted_in_the_epochs_that_batch_them(tmp_path):
    """truncate_to_max's count is of the clips an epoch batches: one its draw puts over the budget is counted
    skipped (over_batch_budget), not truncated as well."""
    m = with_lines(tmp_path, 10, [])  # 0.3-2.0 s
    pauses = {"silence": {"enable": True, "lead": [0.0, 5.5], "trail": [0.0, 0.5]}}
    data = cfg(augment=pauses, batching={"max_duration": 1.0, "truncate_to_max": True})
    loader, sampler = build(data, [m])
    durations = np.asarray([json.loads(line)["duration"] for line in open(m)])
    for epoch in range(4):
        loader.set_epoch(epoch)
        drawn = draw_clip_lengths(data.augment, data.seed, epoch, np.arange(durations.size))
        over = np.minimum(durations, 1.0) + drawn.lead + drawn.trail > 6.0
        stats = sampler.stats()
        assert stats["filtered"].get("over_batch_budget", 0) == over.sum()
        assert stats["truncated"] == int(((durations > 1.0) & ~over).sum())
        assert stats["truncated"] + stats["filtered"].get("over_batch_budget", 0) <= durations.size


def test_the_lines_truncate_to_max_cuts_are_named_in_the_log(tmp_path, caplog):
    """truncate_to_max trains on the first max_duration seconds of a longer clip with its whole transcript: the log
    had said "skipped none" and nothing of the clips cut."""
    m = with_lines(tmp_path, 10, [])  # 0.3-2.0 s
    _, sampler = build(cfg(batching={"max_duration": 1.0, "truncate_to_max": True}), [m])
    cut = np.flatnonzero(np.asarray([json.loads(line)["duration"] for line in open(m)]) > 1.0)
    assert cut.size and int(sampler.truncated_mask.sum()) == cut.size
    first = ", ".join(f"{m}:{i + 1}" for i in cut[:5])
    line = next(r for r in caplog.records if "have their audio cut" in r.getMessage())
    assert line.levelno == logging.WARNING and line.getMessage() == (
        f"train: {cut.size} lines longer than 1 s have their audio cut there (data.batching.truncate_to_max; their "
        f"transcripts are kept whole) (first: {first})"
    )
    assert "skipped every epoch" not in caplog.text


def test_lines_over_the_budget_at_every_draw_are_reported_with_the_reason(tmp_path, caplog):
    m = with_lines(tmp_path, 10, [])  # 0.3-2.0 s
    pauses = {"silence": {"enable": True, "prob": 1.0, "lead": [4.2, 4.5], "trail": [0.0, 0.5]}}
    _, sampler = build(cfg(augment=pauses), [m])
    durations = np.asarray([json.loads(line)["duration"] for line in open(m)])
    never = np.flatnonzero(durations + 4.2 > 6.0)
    assert never.size and sampler.skipped_indices("over_batch_budget").tolist() == never.tolist()
    assert sampler.filtered["over_batch_budget"] >= never.size
    line = next(r.getMessage() for r in caplog.records if "skipped every epoch" in r.getMessage())
    assert (
        f"train: {never.size} of 10 lines are skipped every epoch: {never.size} too large for a batch of one under "
        f"the batch budget ({never.size} past data.batching.max_seconds = 6 s, even at augmentation's shortest length "
        "(its duration x 1 + 4.2 s)) (first: " in line
    )


def test_lines_over_a_budget_on_their_own_are_told_which_budget(tmp_path, caplog):
    """The skipped lines had been said to pass "max_seconds / max_frames / max_target_tokens" alike: a recipe with
    max_target_tokens was left to guess which its lines passed."""
    m = with_lines(tmp_path, 10, [])
    wordy = [json.loads(line) for line in open(m)]
    for i in (2, 5):
        wordy[i]["target"] = "a long transcript " * 3
    write_manifest(m, [json.dumps(r) for r in wordy])
    with caplog.at_level("WARNING", logger="llmasr.data"):
        _, sampler = build(cfg(batching={"max_target_tokens": 40}), [m])
    assert sampler.skipped_indices("over_batch_budget").tolist() == [2, 5]
    said = "2 too large for a batch of one under the batch budget (2 past data.batching.max_target_tokens = 40 (its "
    assert f"{said}target_len)) (first: {m}:3, {m}:6)" in caplog.text


def test_batches_are_cut_on_the_length_augmentation_gives_each_clip(tmp_path):
    """With speed perturbation and pauses, the sampler costs each clip at the length the dataset then gives it in
    that epoch (not at the slowest factor and the longest pauses), and no batch passes the budget."""
    path = good_corpus(tmp_path, 40)
    augment = {
        "speed_perturb": {"enable": True, "factors": [0.9, 1.0, 1.1]},
        "silence": {"enable": True, "prob": 0.5, "lead": [0.0, 0.6], "trail": [0.0, 0.3]},
    }
    frames_per_s = 100 / 6  # LFR 7/6 of 10 ms frames
    loader, sampler = build(cfg(augment=augment), [str(path)])
    seen = {}
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        costs = sampler.costs.drawn(epoch, sampler.base_indices)  # by dataset index: base_indices is 0..n-1
        assert (costs <= sampler.sizes).all() and (costs < sampler.sizes).any()
        for batch in loader:
            seconds = [n / frames_per_s for n in batch.feat_lens.tolist()]
            for i, s in zip(batch.indices, seconds):
                assert s == pytest.approx(costs[i], abs=0.07)  # LFR frames and resampling round
                seen.setdefault(i, set()).add(round(s, 2))
            assert len(seconds) * max(seconds) <= 6.0 + 0.07
    assert sum(len(v) > 1 for v in seen.values()) > 10  # each epoch draws its own lengths


def test_augmentation_settings_left_off_by_enable_are_named_when_the_training_loader_is_built(tmp_path, caplog):
    """A recipe that set speed factors, a noise list or SpecAugment's masks but not the section's `enable` had trained
    without that augmentation, saying nothing of it."""
    path = good_corpus(tmp_path, 8)
    write_wav(tmp_path / "n1.wav", 1.0, seed=3)
    noise = write_manifest(tmp_path / "noise.jsonl", [{"key": "a", "source": "n1.wav"}])
    augment = {
        "speed_perturb": {"factors": [0.95, 1.05]},
        "noise": {"manifest": str(noise), "prob": 0.3},
        "spec_augment": {"num_time_masks": 2},
        "gain": {"enable": True, "db": [-3.0, 3.0]},
    }
    with caplog.at_level("WARNING", logger="llmasr.data"):
        build(cfg(augment=augment), [str(path)])
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data.augment.")]
    with caplog.at_level("WARNING", logger="llmasr.data"):  # the biasing lists' settings alike
        build(cfg(hotwords={"list_size": [3, 5]}), [str(path)])
    assert "data.hotwords: list_size set, but enable is false: no list is drawn, so it does nothing" in caplog.text
    assert said == [
        "data.augment.spec_augment: num_time_masks set, but spec_augment.enable is false: it does nothing",
        "data.augment.noise: manifest, prob set, but noise.enable is false: it does nothing",
        "data.augment.speed_perturb: factors set, but speed_perturb.enable is false: it does nothing",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="llmasr.data"):
        build(cfg(augment=augment), [str(path)], train=False)  # validation augments nothing: no word
        build(cfg(augment=augment), [str(path)], rank=1, world_size=2)  # rank 0 says it
        build(cfg(augment={"speed_perturb": {"enable": True, "factors": [0.9, 1.1]}}), [str(path)])
    assert not [r for r in caplog.records if r.getMessage().startswith("data.augment.")]


@pytest.mark.parametrize("case", ["malformed", "empty", "missing", "not_audio"])
def test_a_noise_list_that_cannot_serve_is_refused_when_the_training_loader_is_built(tmp_path, case):
    """The workers read the noise list at their first noisy clip, in the training loop after the model loaded: a
    malformed or empty list had failed there, and a list of files not there had let every epoch run without noise.
    So had a list of files there that are no audio (an empty WAV, an HTML error page saved as .wav): each worker
    left them out one by one at its first clips and trained on without noise, saying so only in its log."""
    path = good_corpus(tmp_path, 20)
    write_wav(tmp_path / "n1.wav", 3.0, seed=3)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    (tmp_path / "page.wav").write_text("<html>404 not found</html>", encoding="utf-8")
    lines = {
        "malformed": ['{"key": "a", "source": "n1.wav"}', '{"key": "b", "source": '],
        "empty": [],
        "missing": [{"key": "a", "source": "n1.wav"}, {"key": "b", "source": "gone.wav"}],
        "not_audio": [{"key": "a", "source": "empty.wav"}, {"key": "b", "source": "page.wav"}],
    }[case]
    noise = write_manifest(tmp_path / "noise.jsonl", lines)
    data_cfg = cfg(augment={"noise": {"enable": True, "manifest": str(noise), "prob": 0.01}})
    head = "noise files not found or not usable audio:\n  "
    want = {"malformed": f"{noise}:2: malformed JSON", "empty": "no noise files listed",
            "missing": f"1 of 2 {head}{noise}:2: not found: {tmp_path / 'gone.wav'}",
            "not_audio": f"2 of 2 {head}{noise}:1: {tmp_path / 'empty.wav'}: empty audio (0 samples)\n  "
                         f"{noise}:2: {tmp_path / 'page.wav'}: unreadable"}[case]  # fmt: skip
    with pytest.raises(ConfigError) as err:
        build(data_cfg, [str(path)])
    assert str(err.value).startswith("data.augment.noise.manifest: ") and want in str(err.value)
    build(data_cfg, [str(path)], train=False)  # validation mixes no noise


def test_target_lengths_come_from_the_screens_pass_over_the_lines(tmp_path, monkeypatch):
    """With max_target_len set, each line's target length is read in the start-up screen's pass: every line was
    parsed a second time for it (a minute at start-up of every rank on a few million lines)."""
    import llmasr.data.manifest as manifest_module

    path = good_corpus(tmp_path, 20)
    lines = path.read_text().splitlines()
    long = json.loads(lines[0]) | {"key": "wordy", "target": "hello " * 20}  # 120 characters
    write_manifest(
        path, [*lines, json.dumps(long), json.dumps(json.loads(lines[1]) | {"key": "told", "target_len": 99})]
    )
    parsed = []
    parse = manifest_module.parse_line
    monkeypatch.setattr(manifest_module, "parse_line", lambda rec, **kw: parsed.append(kw["line"]) or parse(rec, **kw))
    _, sampler = build(cfg(batching={"max_target_len": 50}), [str(path)])
    assert sampler.skipped_indices("target_too_long").tolist() == [20, 21]  # characters, else target_len
    assert sampler.target_lens[21] == 99 and sampler.target_lens[0] == len(json.loads(lines[0])["target"])
    assert len(parsed) <= 22 + 1  # the screen's pass, and the line the collator falls back to
