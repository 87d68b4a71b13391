"""Augmentation: config validation, determinism, speed/noise/gain, LFR-aware SpecAugment."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import soundfile as sf

from llmasr.config_io import ConfigError, from_dict
from llmasr.data.augment import AugmentConfig, Augmenter, speed_perturb
from llmasr.data.clip_lengths import draw_clip_lengths
from llmasr.data.frontend import FrontendConfig
from llmasr.data.noise_list import mix_at_snr

SR = 16000


def sine(freq, seconds=1.0, amp=0.3):
    t = np.arange(int(SR * seconds)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def drawn(cfg: AugmentConfig, seed: int) -> tuple[float, float, float]:
    """Item `seed`'s speed factor and pauses in epoch 0, as the dataset draws them."""
    return draw_clip_lengths(cfg, 0, 0, seed).item()


def noise_manifest(tmp_path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "n1.wav", (rng.standard_normal(SR // 2) * 0.1).astype(np.float32), SR)  # shorter: tiled
    sf.write(tmp_path / "n2.wav", (rng.standard_normal(SR * 3) * 0.1).astype(np.float32), 22050)
    path = tmp_path / "noise.jsonl"
    path.write_text(
        json.dumps({"key": "n1", "source": "n1.wav"})
        + "\n"
        + json.dumps({"key": "n2", "source": str(tmp_path / "n2.wav")})
        + "\n"
    )
    return str(path)


def test_config_from_dict_and_validation(tmp_path):
    cfg = from_dict(
        AugmentConfig,
        {
            "spec_augment": {"enable": True, "max_time_width": 0.05},
            "speed_perturb": {"enable": True, "factors": [0.9, 1.1]},
        },
        "augment",
    )
    assert cfg.spec_augment.max_time_width == 0.05 and cfg.speed_perturb.factors == [0.9, 1.1]
    assert not AugmentConfig().noise.enable and not Augmenter(AugmentConfig(), FrontendConfig()).enabled
    bad = [
        ({"noise": {"enable": True}}, "augment.noise.manifest: required"),
        ({"noise": {"enable": True, "manifest": str(tmp_path / "nope.jsonl")}}, "augment.noise.manifest: not found"),
        ({"noise": {"snr_db": [20, 10]}}, "augment.noise.snr_db"),
        ({"noise": {"prob": 1.5}}, "augment.noise.prob"),
        ({"gain": {"db": [-100, 0]}}, "augment.gain.db"),
        ({"noise": {"snr_db": [float("-inf"), 10]}}, "augment.noise.snr_db: values must be finite"),
        ({"speed_perturb": {"factors": []}}, "augment.speed_perturb.factors"),
        ({"speed_perturb": {"factors": [3.0]}}, "augment.speed_perturb.factors"),
        ({"silence": {"lead": [1.0, 0.5]}}, "augment.silence.lead"),
        ({"silence": {"trail": [-0.5, 0.5]}}, "augment.silence.trail"),
        ({"silence": {"level_db": [-100, 0]}}, "augment.silence.level_db"),
        ({"silence": {"prob": -0.1}}, "augment.silence.prob"),
        ({"spec_augment": {"max_time_width": 2.5}}, "augment.spec_augment.max_time_width"),
        ({"spec_augment": {"num_freq_masks": -1}}, "augment.spec_augment"),
        ({"spec_augment": {"bogus": 1}}, "unknown key"),
    ]
    for data, msg in bad:
        with pytest.raises(ConfigError, match=msg.replace(".", r"\.")):
            from_dict(AugmentConfig, data, "augment")


def test_wave_augment_deterministic_and_effective(tmp_path):
    cfg = from_dict(
        AugmentConfig,
        {
            "noise": {"enable": True, "manifest": noise_manifest(tmp_path), "snr_db": [5, 5], "prob": 1.0},
            "speed_perturb": {"enable": True, "factors": [0.9, 1.1]},
            "gain": {"enable": True, "db": [-6, -6], "prob": 1.0},
        },
        "augment",
    )
    aug = Augmenter(cfg, FrontendConfig())
    assert aug.enabled
    x = sine(500)
    a = aug.wave(x, SR, np.random.default_rng(1), drawn(cfg, 1))
    b = aug.wave(x, SR, np.random.default_rng(1), drawn(cfg, 1))
    np.testing.assert_array_equal(a, b)
    assert len(a) in (int(np.ceil(SR / 0.9)), int(np.ceil(SR / 1.1)))
    lengths = {len(aug.wave(x, SR, np.random.default_rng(s), drawn(cfg, s))) for s in range(20)}
    assert lengths == {17778, 14546}  # both speed factors drawn
    assert a.dtype == np.float32 and np.abs(a).max() <= 1.0


def speech_like(seconds=2.0, floor=0.01, seed=0):
    """A tone in bursts over a noise floor of RMS `floor` (the quiet stretches between the bursts)."""
    rng = np.random.default_rng(seed)
    x = sine(300, seconds) * (np.arange(int(SR * seconds)) // (SR // 4) % 2 == 0)
    return (x + floor * rng.standard_normal(x.size)).astype(np.float32)


def test_pauses_put_the_clip_between_noise_at_its_floor():
    cfg = from_dict(
        AugmentConfig,
        {"silence": {"enable": True, "prob": 1.0, "lead": [0.3, 1.0], "trail": [0.1, 0.4], "level_db": [0, 0]}},
        "augment",
    )
    aug = Augmenter(cfg, FrontendConfig())
    assert aug.wave_enabled and cfg.silence.max_seconds == pytest.approx(1.4)
    x = speech_like()
    leads = set()
    for seed in range(10):
        y = aug.wave(x, SR, np.random.default_rng(seed), drawn(cfg, seed))
        np.testing.assert_array_equal(y, aug.wave(x, SR, np.random.default_rng(seed), drawn(cfg, seed)))
        found = [i for i in range(y.size - x.size + 1) if y[i] == x[0] and np.array_equal(y[i : i + x.size], x)]
        assert len(found) == 1, "the clip itself is untouched, once, inside the pauses"
        lead, trail = found[0], y.size - x.size - found[0]
        assert 0.3 * SR <= lead <= 1.0 * SR and 0.1 * SR <= trail <= 0.4 * SR
        leads.add(lead)
        rms = float(np.sqrt(np.mean(np.concatenate([y[:lead], y[y.size - trail :]]) ** 2)))
        assert rms == pytest.approx(0.01, rel=0.25)  # the floor of the quiet stretches, not the tone's level
    assert len(leads) == 10
    cfg.silence.level_db = [-20.0, -20.0]
    y = aug.wave(x, SR, np.random.default_rng(0), drawn(cfg, 0))
    assert float(np.sqrt(np.mean(y[: int(0.3 * SR)] ** 2))) == pytest.approx(0.001, rel=0.25)
    cfg.silence.prob = 0.0
    np.testing.assert_array_equal(aug.wave(x, SR, np.random.default_rng(0), drawn(cfg, 0)), x)


def test_the_pauses_of_a_loud_clip_stay_within_full_scale():
    """A clip whose quietest frames lie near full scale (speech over music, compressed audio) had pauses of Gaussian
    noise at that floor peaking near twice full scale under the default level_db, out of any audio's range."""
    cfg = from_dict(AugmentConfig, {"silence": {"enable": True, "prob": 1.0, "level_db": [0, 0]}}, "augment")
    loud = np.clip(0.5 * np.random.default_rng(0).standard_normal(SR), -1.0, 1.0).astype(np.float32)
    y = Augmenter(cfg, FrontendConfig()).wave(loud, SR, np.random.default_rng(0), (1.0, 0.5, 0.5))
    assert y.size == 2 * SR and float(np.abs(y).max()) <= 1.0
    pause = np.concatenate([y[: SR // 2], y[-SR // 2 :]])
    assert float(np.sqrt(np.mean(pause**2))) > 0.3  # still at the clip's floor, clipped only at its peaks


def test_pauses_fit_a_whisper_window():
    cfg = from_dict(AugmentConfig, {"silence": {"enable": True, "prob": 1.0, "lead": [2, 2], "trail": [2, 2]}}, "a")
    whisper = FrontendConfig(kind="whisper", n_mels=80, chunk_seconds=3.0)
    x = speech_like(2.0)
    y = Augmenter(cfg, whisper).wave(x, SR, np.random.default_rng(0), drawn(cfg, 0))
    assert y.size == 3 * SR  # 1 s of room in the 3 s window: half a second each side
    np.testing.assert_array_equal(y[SR // 2 : SR // 2 + x.size], x)
    assert Augmenter(cfg, whisper).wave(speech_like(3.5), SR, np.random.default_rng(0), drawn(cfg, 0)).size == int(
        3.5 * SR
    )
    assert Augmenter(cfg, FrontendConfig()).wave(x, SR, np.random.default_rng(0), drawn(cfg, 0)).size == 6 * SR
    # what the batch budget reserves: the pauses, except in a Whisper window that every clip fills anyway
    cfg.speed_perturb.enable = True
    assert cfg.cost(FrontendConfig()) == (pytest.approx(1 / 0.9), 4.0) and cfg.cost(whisper)[1] == 0.0


def test_speed_perturbation_slows_a_clip_only_as_far_as_a_whisper_window_holds_it():
    """The Whisper encoder cuts its features at the window: a clip slowed past it would lose its last words while
    its transcript stays whole."""
    cfg = from_dict(AugmentConfig, {"speed_perturb": {"enable": True, "factors": [0.5]}}, "a")
    whisper = FrontendConfig(kind="whisper", n_mels=80, chunk_seconds=3.0)
    slow = Augmenter(cfg, whisper)
    held = slow.wave(sine(300, 2.0), SR, np.random.default_rng(0), drawn(cfg, 0)).size
    assert 3 * SR - 2 <= held <= 3 * SR  # slowed to the window, not to 4 s
    assert slow.wave(sine(300, 1.0), SR, np.random.default_rng(0), drawn(cfg, 0)).size == 2 * SR  # fits: 0.5
    assert (
        Augmenter(cfg, FrontendConfig()).wave(sine(300, 2.0), SR, np.random.default_rng(0), (0.5, 0, 0)).size == 4 * SR
    )
    assert cfg.cost(whisper) == (1.0, 0.0) and cfg.cost(FrontendConfig()) == (2.0, 0.0)  # one window a clip
    # a clip longer than the window (truncate_to_max keeps it) is not slowed at all, nor sped up past its factor
    # (it had been played at 4/3 speed to squeeze it into the window)
    assert slow.wave(sine(300, 4.0), SR, np.random.default_rng(0), (0.5, 0, 0)).size == 4 * SR
    fast = Augmenter(from_dict(AugmentConfig, {"speed_perturb": {"enable": True, "factors": [1.25]}}, "a"), whisper)
    assert fast.wave(sine(300, 4.0), SR, np.random.default_rng(0), (1.25, 0, 0)).size == int(4 * SR / 1.25)


def test_speed_perturb_shifts_frequency_and_length():
    x = sine(1000)
    y = speed_perturb(x, SR, 1.1)
    assert len(y) == int(np.ceil(SR / 1.1))
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.argmax(spec) * SR / len(y) == pytest.approx(1100, abs=2)
    assert speed_perturb(x, SR, 1.0) is x


def test_mix_at_snr():
    rng = np.random.default_rng(0)
    x = sine(300)
    n = (rng.standard_normal(4000) * 0.5).astype(np.float32)
    for snr in (0.0, 10.0, 20.0):
        y = mix_at_snr(x, n, snr)
        added = y - x
        measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2))
        assert measured == pytest.approx(snr, abs=0.05)
    np.testing.assert_array_equal(mix_at_snr(np.zeros(100, np.float32), n, 10), np.zeros(100))


def test_noise_meets_the_clip_at_its_snr_also_between_pauses(tmp_path):
    """With pauses around the clip, the SNR is the clip's own: the pauses do not count as signal (over the whole
    array the signal's power was diluted by their share, and the noise scaled down with it: 2.4 dB too clean
    here)."""
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "n.wav", (rng.standard_normal(SR * 6) * 0.1).astype(np.float32), SR)
    (tmp_path / "noise.jsonl").write_text(json.dumps({"key": "n", "source": "n.wav"}) + "\n")
    cfg = from_dict(
        AugmentConfig,
        {"silence": {"enable": True, "prob": 1.0, "lead": [1.0, 1.0], "trail": [0.5, 0.5], "level_db": [-60, -60]},
         "noise": {"enable": True, "manifest": str(tmp_path / "noise.jsonl"), "snr_db": [10, 10], "prob": 1.0}},
        "augment",
    )  # fmt: skip
    x = np.tile(sine(500), 2)  # 2 s of tone
    quiet = dataclasses.replace(cfg, noise=dataclasses.replace(cfg.noise, enable=False))
    lengths = drawn(cfg, 0)
    paused = Augmenter(quiet, FrontendConfig()).wave(x, SR, np.random.default_rng(3), lengths)
    mixed = Augmenter(cfg, FrontendConfig()).wave(x, SR, np.random.default_rng(3), lengths)
    start = SR  # the lead
    clip, noise = paused[start : start + x.size], (mixed - paused)[start : start + x.size]
    measured = 10 * np.log10(np.mean(clip.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert measured == pytest.approx(10.0, abs=0.3)


def test_bad_noise_file_is_skipped_not_fatal(tmp_path, caplog):
    path = tmp_path / "noise.jsonl"
    path.write_text(json.dumps({"key": "gone", "source": "gone.wav"}) + "\n")
    cfg = from_dict(AugmentConfig, {"noise": {"enable": True, "manifest": str(path), "prob": 1.0}}, "augment")
    x = sine(300)
    y = Augmenter(cfg, FrontendConfig()).wave(x, SR, np.random.default_rng(0), drawn(cfg, 0))
    np.testing.assert_array_equal(y, x)
    assert "left out of the noise list (0 files left: noise augmentation is off)" in caplog.text
    assert "file not found" in caplog.text


def test_a_noise_file_that_fails_to_read_is_left_out_and_named_once(tmp_path, caplog):
    """A noise file that exists but does not decode had been drawn again and again, each clip that drew it going
    without noise, and after five failures with no word; it is named once and drawn past: every clip gets noise from
    the files that read, the one that met it too."""
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "good.wav", (rng.standard_normal(SR * 2) * 0.1).astype(np.float32), SR)
    (tmp_path / "bad.wav").write_bytes(b"RIFF not a wave")
    lines = [{"key": "good", "source": "good.wav"}, {"key": "bad", "source": "bad.wav"}]
    (tmp_path / "noise.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    cfg = from_dict(AugmentConfig, {"noise": {"enable": True, "manifest": str(tmp_path / "noise.jsonl"), "prob": 1.0}},
                    "augment")  # fmt: skip
    augmenter, x = Augmenter(cfg, FrontendConfig()), sine(300)
    mixed = []
    with caplog.at_level("WARNING"):
        for seed in range(12):
            mixed.append(not np.array_equal(augmenter.wave(x, SR, np.random.default_rng(seed), drawn(cfg, 0)), x))
    assert caplog.text.count("left out of the noise list") == 1 and "(1 files left)" in caplog.text
    assert str(tmp_path / "bad.wav") in caplog.text
    assert all(mixed)


def test_a_clip_s_noise_does_not_depend_on_what_its_worker_met_before(tmp_path, caplog):
    """Each worker learns for itself that a noise file fails. Leaving it out of the worker's list had shifted the
    draws of every later clip there: the same clip got other noise in a worker that had met the file than in one that
    had not, so another worker count (or a resume) did not repeat the augmentation."""
    for i in range(3):
        sf.write(
            tmp_path / f"g{i}.wav", (np.random.default_rng(i).standard_normal(SR * 2) * 0.1).astype(np.float32), SR
        )
    (tmp_path / "bad.wav").write_bytes(b"RIFF not a wave")
    lines = [{"key": n, "source": f"{n}.wav"} for n in ("g0", "bad", "g1", "g2")]
    (tmp_path / "noise.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    cfg = from_dict(AugmentConfig, {"noise": {"enable": True, "manifest": str(tmp_path / "noise.jsonl"), "prob": 1.0}},
                    "augment")  # fmt: skip
    x = sine(300)

    def clip(aug, seed):
        return aug.wave(x, SR, np.random.default_rng(seed), drawn(cfg, 0))

    met = Augmenter(cfg, FrontendConfig())
    with caplog.at_level("WARNING"):
        for seed in range(30):  # this worker meets the bad file among these clips
            clip(met, seed)
    assert "left out of the noise list (3 files left)" in caplog.text and str(tmp_path / "bad.wav") in caplog.text
    for seed in range(30):
        np.testing.assert_array_equal(clip(met, seed), clip(Augmenter(cfg, FrontendConfig()), seed))


def test_a_clip_s_gain_does_not_depend_on_whether_its_worker_knew_every_noise_file_fails(tmp_path, caplog):
    """Noise drew a file, its SNR and offset again after each file that failed to read, from the clip's Generator:
    once a worker knew every file fails it drew none, while a worker meeting them now drew until it had met them all.
    The gain drawn after noise then differed with what the worker had read before: another worker count or a resume
    gave the clip another gain. Noise draws from a stream of its own, one number of the clip's taken for it."""
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.wav").write_bytes(b"RIFF not a wave")
    (tmp_path / "noise.jsonl").write_text("".join(json.dumps({"key": n, "source": f"{n}.wav"}) + "\n" for n in "abc"))
    cfg = from_dict(
        AugmentConfig,
        {"noise": {"enable": True, "manifest": str(tmp_path / "noise.jsonl"), "prob": 1.0},
         "gain": {"enable": True, "db": [-6.0, 6.0], "prob": 1.0}},
        "augment",
    )  # fmt: skip
    x = sine(300)

    def clip(aug, seed):
        return aug.wave(x, SR, np.random.default_rng(seed), drawn(cfg, 0))

    met = Augmenter(cfg, FrontendConfig())
    with caplog.at_level("WARNING"):
        for seed in range(10):
            clip(met, 100 + seed)
    assert "0 files left: noise augmentation is off" in caplog.text
    peaks = set()
    for seed in range(10):
        np.testing.assert_array_equal(clip(met, seed), clip(Augmenter(cfg, FrontendConfig()), seed))
        peaks.add(round(float(np.abs(clip(met, seed)).max()), 4))
    assert len(peaks) > 5  # the gain is drawn, per clip


def test_a_noise_list_not_in_utf8_is_refused_naming_its_line(tmp_path):
    """A list saved in another encoding had stopped training with a bare UnicodeDecodeError naming no file."""
    from llmasr.data.noise_list import read_noise_list

    sf.write(tmp_path / "a.wav", sine(300), SR)
    path = tmp_path / "noise.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"key": "a", "source": "a.wav"}\n{"key": "\xc4\xe3", "source": "a.wav"}\n')
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2: not UTF-8 text")):
        read_noise_list(path, must_exist=True)
    path.write_bytes(b'\xef\xbb\xbf{"key": "a", "source": "a.wav"}\n')  # a BOM is no part of the first record
    assert read_noise_list(path, must_exist=True) == [str(tmp_path / "a.wav")]


def test_spec_augment_lfr_freq_masks_repeat_in_every_subframe():
    fe = FrontendConfig(lfr_m=7, lfr_n=6)
    cfg = from_dict(
        AugmentConfig,
        {"spec_augment": {"enable": True, "num_time_masks": 0, "num_freq_masks": 2, "max_freq_width": 20}},
        "augment",
    )
    aug = Augmenter(cfg, fe)
    feats = np.random.default_rng(0).standard_normal((50, 560)).astype(np.float32) + 3.0
    for seed in range(10):
        out = aug.spec(feats, np.random.default_rng(seed))
        masked = (out == 0).all(axis=0).reshape(7, 80)
        assert (masked == masked[0]).all()  # the same mel bins in all 7 sub-frames
        assert masked[0].sum() <= 40 and (out[:, ~(out == 0).all(axis=0)] == feats[:, ~(out == 0).all(axis=0)]).all()
    np.testing.assert_array_equal(aug.spec(feats, np.random.default_rng(3)), aug.spec(feats, np.random.default_rng(3)))
    assert (feats != 0).all()  # the input is not modified in place


def test_spec_augment_time_masks():
    fe = FrontendConfig(lfr_m=7, lfr_n=6)
    feats = np.ones((70, 560), np.float32)
    cfg = from_dict(
        AugmentConfig,
        {"spec_augment": {"enable": True, "num_time_masks": 2, "max_time_width": 5, "num_freq_masks": 0}},
        "augment",
    )
    widths = []
    for seed in range(30):
        out = Augmenter(cfg, fe).spec(feats, np.random.default_rng(seed))
        rows = (out == 0).all(axis=1)
        assert ((out == 0) == rows[:, None]).all()  # whole rows
        widths.append(rows.sum())
    assert max(widths) <= 10 and max(widths) > 0
    # ratio widths: at most 10% of 70 frames per mask
    cfg.spec_augment.max_time_width = 0.1
    for seed in range(30):
        assert (Augmenter(cfg, fe).spec(feats, np.random.default_rng(seed)) == 0).all(axis=1).sum() <= 14
    # lfr_time_replicate: each mask repeated lfr_m times, T // lfr_m rows apart
    cfg.spec_augment = from_dict(
        type(cfg.spec_augment),
        {"enable": True, "num_time_masks": 1, "max_time_width": 5, "num_freq_masks": 0, "lfr_time_replicate": True},
        "sa",
    )
    for seed in range(20):
        rows = np.flatnonzero((Augmenter(cfg, fe).spec(feats, np.random.default_rng(seed)) == 0).all(axis=1))
        if len(rows):
            starts = rows[np.r_[True, np.diff(rows) > 1]]
            assert len(starts) == 7 and (np.diff(starts) == 10).all()


def test_time_masks_never_cover_a_short_clip_whole():
    """One mask of up to 12 rows (the default) had covered every row of a clip of 3 to 12 rows in 8-25% of its
    draws: a transcript learnt over nothing. The masks together now cover at most max_time_fraction of the rows, and
    where that bound does not bind (a long clip) the draws are the ones they were."""
    fe = FrontendConfig(lfr_m=7, lfr_n=6)

    def masked_rows(t: int, seed: int, **sa) -> np.ndarray:
        cfg = from_dict(AugmentConfig, {"spec_augment": {"enable": True, "num_freq_masks": 0, **sa}}, "augment")
        return (Augmenter(cfg, fe).spec(np.ones((t, 560), np.float32), np.random.default_rng(seed)) == 0).all(axis=1)

    for t in (2, 3, 5, 8, 12):
        covered = [int(masked_rows(t, seed).sum()) for seed in range(300)]
        assert max(covered) == t // 2, t
        assert any(masked_rows(t, seed, max_time_fraction=1.0).all() for seed in range(300)), t  # the old reach
    two = [int(masked_rows(9, seed, num_time_masks=2, max_time_fraction=0.3).sum()) for seed in range(300)]
    assert max(two) == 2  # each of the two masks at most its share: 0.3 x 9 / 2 rows
    for seed in range(50):
        np.testing.assert_array_equal(masked_rows(100, seed), masked_rows(100, seed, max_time_fraction=1.0))
    with pytest.raises(ConfigError, match=r"max_time_fraction: must be in \(0, 1\], got 0"):
        from_dict(AugmentConfig, {"spec_augment": {"max_time_fraction": 0}}, "augment").validate("augment")


def test_lfr_time_replicate_without_stacked_frames_is_named():
    """lfr_time_replicate on features that stack no frames (Whisper's, fbank without LFR) changes nothing."""
    cfg = from_dict(AugmentConfig, {"spec_augment": {"enable": True, "lfr_time_replicate": True}}, "augment")
    said = "data.augment.spec_augment.lfr_time_replicate: the frontend stacks no frames"
    assert any(said in s for s in cfg.idle_settings(FrontendConfig(lfr_m=1, lfr_n=1)))
    assert any(said in s for s in cfg.idle_settings(FrontendConfig(kind="whisper")))
    assert cfg.idle_settings(FrontendConfig(lfr_m=7, lfr_n=6)) == []
    assert AugmentConfig().idle_settings(FrontendConfig()) == []


def test_spec_augment_disabled_is_identity():
    aug = Augmenter(AugmentConfig(), FrontendConfig())
    feats = np.ones((5, 80), np.float32)
    assert aug.spec(feats, np.random.default_rng(0)) is feats
    x = sine(100)
    np.testing.assert_array_equal(aug.wave(x, SR, np.random.default_rng(0), drawn(aug.cfg, 0)), x)


def test_a_noise_file_of_digital_silence_is_left_out_and_named_once(tmp_path, caplog):
    """A noise file whose every sample is 0 mixed nothing into each clip that drew it, with no word (start-up reads
    headers only); it is named once and drawn past like a file that does not decode. A file that is silent only in
    a stretch stays: a clip that draws the stretch gets its silence, as it would from any quiet noise."""
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "good.wav", (rng.standard_normal(SR * 2) * 0.1).astype(np.float32), SR)
    sf.write(tmp_path / "zeros.wav", np.zeros(SR * 2, dtype=np.float32), SR)
    gapped = np.concatenate([np.zeros(SR * 3), rng.standard_normal(SR // 10) * 0.1]).astype(np.float32)
    sf.write(tmp_path / "gapped.wav", gapped, SR)  # three seconds of digital silence, then sound
    lines = [{"key": k, "source": f"{k}.wav"} for k in ("good", "zeros", "gapped")]
    (tmp_path / "noise.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    cfg = from_dict(AugmentConfig, {"noise": {"enable": True, "manifest": str(tmp_path / "noise.jsonl"), "prob": 1.0}},
                    "augment")  # fmt: skip
    augmenter, x = Augmenter(cfg, FrontendConfig()), sine(300, seconds=0.5)
    kept = 0
    with caplog.at_level("WARNING"):
        for seed in range(40):
            kept += np.array_equal(augmenter.wave(x, SR, np.random.default_rng(seed), drawn(cfg, 0)), x)
    assert caplog.text.count("left out of the noise list") == 1 and "(2 files left)" in caplog.text
    assert str(tmp_path / "zeros.wav") in caplog.text and "digital silence" in caplog.text
    assert augmenter.noise.bad == {str(tmp_path / "zeros.wav")}  # the gapped file's silent stretch is noise
    assert 0 < kept < 40  # only draws of the gapped file's silent stretch leave a clip as it was


@pytest.mark.parametrize(
    ("section", "why"),
    [
        (
            {"speed_perturb": {"enable": True, "factors": [1.0]}},
            "speed_perturb: enable is true, but every factor is 1.0",
        ),
        ({"silence": {"enable": True, "prob": 0}}, "silence: enable is true, but prob is 0"),
        ({"silence": {"enable": True, "lead": [0, 0], "trail": [0, 0]}}, "lead and trail are both [0, 0]"),
        ({"noise": {"enable": True, "prob": 0, "manifest": __file__}}, "noise: enable is true, but prob is 0"),
        ({"gain": {"enable": True, "db": [0, 0]}}, "gain: enable is true, but db is [0, 0]"),
        ({"spec_augment": {"enable": True, "num_time_masks": 0, "max_freq_width": 0}}, "no mask can be drawn"),
    ],
)
def test_a_section_enabled_with_settings_that_change_no_clip_is_named(section, why):
    """`enable: true` with factors [1.0], prob 0, pauses of [0, 0] or no mask trained without the augmentation the
    recipe reads as on, and start-up said nothing."""
    cfg = from_dict(AugmentConfig, section, "augment")
    assert [line for line in cfg.idle_settings(FrontendConfig()) if why in line and "it changes no clip" in line]
    name = next(iter(section))
    working = {"speed_perturb": {"factors": [0.9, 1.0]}, "silence": {"prob": 0.5, "lead": [0, 0.5]},
               "noise": {"prob": 0.5}, "gain": {"db": [-3, 3]},
               "spec_augment": {"num_time_masks": 1}}[name]  # fmt: skip
    cfg = from_dict(AugmentConfig, {name: section[name] | working}, "augment")
    assert cfg.idle_settings(FrontendConfig()) == []


@pytest.mark.parametrize(("masks", "width", "named"), [(1, 30, False), (2, 39, False), (2, 40, True), (1, 100, True)])
def test_frequency_masks_that_can_cover_every_mel_bin_are_named(masks, width, named):
    """Two masks of up to 80 bins on 80 mels blanked some clips whole, with no word at start-up: the
    time masks are capped by max_time_fraction, the frequency masks are not."""
    section = {"spec_augment": {"enable": True, "num_freq_masks": masks, "max_freq_width": width}}
    cfg = from_dict(AugmentConfig, section, "augment")
    said = cfg.whole_masks(FrontendConfig(n_mels=80))
    assert bool(said) == named
    assert not named or f"{masks} x {width} reaches all 80 mel bins" in said[0]
    if named:  # and the masks drawn do blank a clip in some draws
        aug = Augmenter(cfg, FrontendConfig(n_mels=80, lfr_m=1, lfr_n=1))
        feats = np.ones((50, 80), np.float32)
        whole = [np.all(aug.spec(feats, np.random.default_rng(seed))[:, :] == 0, axis=1).any() for seed in range(400)]
        assert any(whole)
