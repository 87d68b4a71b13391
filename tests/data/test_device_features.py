"""Features on the device (data.features_on: device): the batched torch fbank equals kaldi-native-fbank, and the
whole device path (fbank, LFR, CMVN, SpecAugment) equals the worker path item by item, dither included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from speech_fakes import FakeCTCTokenizer, FakePromptBuilder, write_manifest, write_wav

from llmasr.config_io import ConfigError
from llmasr.data.augment import AugmentConfig, SpecAugmentConfig
from llmasr.data.collate import Collator
from llmasr.data.dataset import SpeechDataset
from llmasr.data.device_features import DeviceFeatures, resolve_features_on
from llmasr.data.features import FeatureExtractor
from llmasr.data.frontend import WINDOWS, FrontendConfig, write_kaldi_cmvn
from llmasr.data.manifest import Manifest
from llmasr.data.torch_fbank import TorchFbank

TOL = 1e-3


def edge_lengths(fx: FeatureExtractor, tf: TorchFbank, sr: int) -> list[int]:
    """Below and at the shortest clip with a frame, around one window and one window + one shift, and longer."""
    w, s, least = tf.window, tf.shift, fx.min_samples
    around = [w - 1, w, w + 1, w + s - 1, w + s, w + s + 1]
    return [1, least - 1, least, least + 1, w // 2 + 3, *around, 3 * w + 7, sr + 13]


def speechy(n: int, rng: np.random.Generator) -> np.ndarray:
    """A tone with noise on the 16-bit PCM grid, with stretches of digital silence and of a constant DC level
    (frames at the log floor once DC is removed) in longer clips."""
    t = np.arange(n) / 16000.0
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(n)
    if n > 4000:
        x[1000:2000] = 0.0
        x[2500:3600] = 0.01
    return (np.round(x * 32768) / 32768).astype(np.float32)


def knf_frames(fx: FeatureExtractor, wave: np.ndarray) -> np.ndarray:
    return fx.fbank(wave)


def batch_of(waves: list[np.ndarray], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    lens = [len(w) for w in waves]
    pad = np.zeros((len(waves), max(lens)), dtype=np.float32)
    for i, w in enumerate(waves):
        pad[i, : len(w)] = w * np.float32(scale)
    return torch.from_numpy(pad), torch.tensor(lens)


@pytest.mark.parametrize("sr,n_mels", [(16000, 80), (8000, 40)])
@pytest.mark.parametrize("snip", [True, False])
@pytest.mark.parametrize("window", ["povey", "hamming"])
def test_fbank_equals_kaldi_native_fbank_at_every_length(sr, n_mels, snip, window):
    fe = FrontendConfig(sample_rate=sr, n_mels=n_mels, snip_edges=snip, window=window)
    fx, tf = FeatureExtractor(fe), TorchFbank(fe)
    rng = np.random.default_rng(sr + snip)
    lens = edge_lengths(fx, tf, sr)
    waves = [speechy(n, rng) for n in lens]
    feats, frames = tf(*batch_of(waves, fe.waveform_scale))
    assert feats.dtype == torch.float32
    for i, w in enumerate(waves):
        ref = knf_frames(fx, w)
        assert int(frames[i]) == ref.shape[0] == fx.num_fbank_frames(len(w)) == tf.num_frames(len(w)), len(w)
        np.testing.assert_allclose(feats[i, : ref.shape[0]].numpy(), ref, atol=TOL, rtol=0, err_msg=f"{len(w)}")
        assert not feats[i, ref.shape[0] :].any()  # zero past the row's frames
        alone, n_alone = tf(*batch_of([w], fe.waveform_scale))  # batched == one by one
        assert int(n_alone[0]) == ref.shape[0]
        np.testing.assert_allclose(alone[0, : ref.shape[0]].numpy(), feats[i, : ref.shape[0]].numpy(), atol=1e-5)
    assert frames.tolist()[:2] == [0, 0] and frames.tolist()[2] > 0  # the short-clip rule holds here too


@pytest.mark.parametrize("window", sorted(set(WINDOWS) - {"povey", "hamming"}))
def test_every_kaldi_window(window):
    fe = FrontendConfig(window=window, snip_edges=False)
    fx, tf = FeatureExtractor(fe), TorchFbank(fe)
    waves = [speechy(n, np.random.default_rng(n)) for n in (300, 400, 5000)]
    feats, frames = tf(*batch_of(waves, fe.waveform_scale))
    for i, w in enumerate(waves):
        ref = knf_frames(fx, w)
        assert int(frames[i]) == ref.shape[0]
        np.testing.assert_allclose(feats[i, : ref.shape[0]].numpy(), ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("m,n", [(7, 6), (1, 1), (5, 3), (4, 1)])
def test_lfr_and_cmvn_equal_the_worker_path(tmp_path, m, n):
    dim = 80 * m
    rng = np.random.default_rng(m * 10 + n)
    cmvn = tmp_path / "am.mvn"
    write_kaldi_cmvn(cmvn, rng.normal(-8, 2, dim).astype(np.float32), rng.uniform(0.1, 0.6, dim).astype(np.float32))
    fe = FrontendConfig(lfr_m=m, lfr_n=n, cmvn_file=str(cmvn), dither=0.0)  # the undithered waves batch_of gives
    fx, dev = FeatureExtractor(fe), DeviceFeatures(fe)
    waves = [speechy(k, rng) for k in (257, 400, 560, 1500, 16000, 9999)]
    feats, lens = dev(*batch_of(waves, fe.waveform_scale))
    for i, w in enumerate(waves):
        ref = fx(w, train=False)
        assert int(lens[i]) == ref.shape[0] == fx.num_frames(len(w)) == dev.num_frames(len(w))
        np.testing.assert_allclose(feats[i, : ref.shape[0]].numpy(), ref, atol=TOL, rtol=0)
        assert not feats[i, ref.shape[0] :].any()


@pytest.fixture
def clips(tmp_path):
    recs = []
    for i, sec in enumerate([0.9, 0.37, 1.6, 0.02, 0.0161]):  # the last: one 80-bin frame's worth and a bit
        write_wav(tmp_path / f"c{i}.wav", sec, seed=i)
        recs.append({"key": f"c{i}", "source": f"c{i}.wav", "target": "hello"})
    return Manifest.open(write_manifest(tmp_path / "m.jsonl", recs))


def _dataset(manifest, fe, features_on, *, replicate=False, train=True):
    # max_time_fraction 1: time masks on these short clips (replicated, one row a span already covers 7 of ~26)
    spec = SpecAugmentConfig(enable=True, num_time_masks=2, max_time_width=4, num_freq_masks=2, max_freq_width=20,
                             lfr_time_replicate=replicate, max_time_fraction=1.0)  # fmt: skip
    return SpeechDataset(
        manifest, fe, train=train, augment=AugmentConfig(spec_augment=spec), prompt_builder=FakePromptBuilder(),
        ctc_tokenizer=FakeCTCTokenizer(), seed=3, features_on=features_on,
    )  # fmt: skip


@pytest.mark.parametrize("replicate", [False, True])
def test_device_path_gives_the_worker_features_with_dither_and_specaugment(tmp_path, clips, replicate):
    cmvn = tmp_path / "am.mvn"
    rng = np.random.default_rng(0)
    write_kaldi_cmvn(cmvn, rng.normal(-8, 2, 560).astype(np.float32), rng.uniform(0.1, 0.6, 560).astype(np.float32))
    fe = FrontendConfig(lfr_m=7, lfr_n=6, cmvn_file=str(cmvn), dither=1.0)
    worker = _dataset(clips, fe, "worker", replicate=replicate)
    device = _dataset(clips, fe, "device", replicate=replicate)
    collate = Collator(0, with_ctc=True)
    want = collate([worker[i] for i in range(len(clips))])
    got = collate([device[i] for i in range(len(clips))])
    assert got.has_waves and not want.has_waves and got.feats.shape == (len(clips), 0, 560)
    assert torch.equal(got.feat_lens, want.feat_lens)
    assert got.spec_masks.shape[1] > 0 and (got.spec_masks[..., 2] > 0).any()  # masks were drawn and travel
    feats, lens = DeviceFeatures(fe)(got.wave, got.wave_lens, got.spec_masks)
    assert torch.equal(lens, want.feat_lens)
    torch.testing.assert_close(feats, want.feats, atol=TOL, rtol=0)
    valid = torch.arange(feats.shape[1])[None, :] < lens[:, None]
    assert ((feats == 0).all(dim=2) & valid).any()  # a time mask zeroed whole frames, as in the worker's features
    # the dither is drawn per item: another epoch draws other noise, the same epoch the same noise
    device.set_epoch(1)
    other = collate([device[i] for i in range(len(clips))])
    assert not torch.equal(other.wave, got.wave)
    device.set_epoch(0)
    assert torch.equal(collate([device[i] for i in range(len(clips))]).wave, got.wave)
    # decoding and validation dither too, from the audio itself: both paths add the same noise
    worker, device = _dataset(clips, fe, "worker", train=False), _dataset(clips, fe, "device", train=False)
    want = collate([worker[i] for i in range(len(clips))])
    got = collate([device[i] for i in range(len(clips))])
    feats, lens = DeviceFeatures(fe)(got.wave, got.wave_lens, got.spec_masks)
    torch.testing.assert_close(feats, want.feats, atol=TOL, rtol=0)


def test_batch_select_and_to_keep_waveforms_float32(clips):
    fe = FrontendConfig(lfr_m=7, lfr_n=6)
    batch = Collator(0, with_ctc=True)([_dataset(clips, fe, "device")[i] for i in range(3)])
    moved = batch.to("cpu", torch.float64)
    assert moved.wave.dtype == torch.float32 and moved.feats.dtype == torch.float64
    one = batch.select([1])
    assert one.wave.shape == (1, int(batch.wave_lens[1])) and one.spec_masks.shape[0] == 1


def test_features_on_setting():
    fbank, whisper = FrontendConfig(), FrontendConfig(kind="whisper", n_mels=80)
    assert resolve_features_on("auto", fbank, "cpu") == "worker"
    assert resolve_features_on("auto", fbank, "cuda:0") == "device"
    assert resolve_features_on("auto", whisper, "cuda:0") == "worker"
    assert resolve_features_on("device", fbank, "cpu") == "device"
    with pytest.raises(ConfigError, match="data.features_on.*'whisper'"):
        resolve_features_on("device", whisper, "cuda")
    with pytest.raises(ConfigError, match="data.features_on.*'gpu'"):
        resolve_features_on("gpu", fbank, "cuda")


def test_float32_under_autocast_and_reduced_matmul_precision():
    """Inside a bf16 autocast region with TF32/bf16 matmuls allowed (as a training step may run), the features
    are still computed in float32 to the same tolerance, and the caller's settings are left as they were."""
    fe = FrontendConfig(lfr_m=7, lfr_n=6, dither=0.0)
    fx, dev = FeatureExtractor(fe), DeviceFeatures(fe)
    waves = [speechy(n, np.random.default_rng(n)) for n in (16000, 7000)]
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats, lens = dev(*batch_of(waves, fe.waveform_scale))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    assert feats.dtype == torch.float32
    for i, w in enumerate(waves):
        np.testing.assert_allclose(feats[i, : int(lens[i])].numpy(), fx(w, train=False), atol=TOL, rtol=0)


@pytest.mark.parametrize("backend", ["cuda.matmul", "all"])
def test_tf32_set_with_the_new_precision_api(backend):
    """A process that allowed TF32 through torch's new API (transformers' enable_tf32 on a recent torch) gets the
    same features, and no error for mixing it with the legacy get/set_float32_matmul_precision."""
    fe = FrontendConfig(lfr_m=7, lfr_n=6, dither=0.0)
    fx, dev = FeatureExtractor(fe), DeviceFeatures(fe)
    waves = [speechy(n, np.random.default_rng(n)) for n in (16000, 7000, 300)]
    owner = torch.backends.cuda.matmul if backend == "cuda.matmul" else torch.backends
    before = owner.fp32_precision
    try:
        owner.fp32_precision = "tf32"
        feats, lens = dev(*batch_of(waves, fe.waveform_scale))
        assert owner.fp32_precision == "tf32"
    finally:
        owner.fp32_precision = before
    for i, w in enumerate(waves):
        np.testing.assert_allclose(feats[i, : int(lens[i])].numpy(), fx(w, train=False), atol=TOL, rtol=0)


@pytest.mark.parametrize("sr,n_mels", [(16000, 80), (8000, 40)])
@pytest.mark.parametrize("snip", [True, False])
def test_every_length_up_to_two_windows_in_one_batch(sr, n_mels, snip):
    """Each clip length from 1 sample to two windows + one shift, all in one padded batch (short clips each have
    their own shrunk window): frame counts and values as kaldi-native-fbank gives them clip by clip."""
    fe = FrontendConfig(sample_rate=sr, n_mels=n_mels, snip_edges=snip, window="povey")
    fx, tf = FeatureExtractor(fe), TorchFbank(fe)
    rng = np.random.default_rng(7)
    waves = [speechy(n, rng) for n in range(1, 2 * tf.window + tf.shift + 2)]
    feats, frames = tf(*batch_of(waves, fe.waveform_scale))
    for i, w in enumerate(waves):
        ref = fx.fbank(w)
        assert int(frames[i]) == ref.shape[0], len(w)
        np.testing.assert_allclose(feats[i, : ref.shape[0]].numpy(), ref, atol=TOL, rtol=0, err_msg=f"{len(w)}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_kaldi_native_fbank(tmp_path):
    rng = np.random.default_rng(3)
    cmvn = tmp_path / "am.mvn"
    write_kaldi_cmvn(cmvn, rng.normal(-8, 2, 560).astype(np.float32), rng.uniform(0.1, 0.6, 560).astype(np.float32))
    fe = FrontendConfig(lfr_m=7, lfr_n=6, cmvn_file=str(cmvn), dither=0.0)
    fx, dev = FeatureExtractor(fe), DeviceFeatures(fe)
    waves = [speechy(n, rng) for n in (1, 257, 300, 400, 401, 16000, 160_013)]
    wave, lens = batch_of(waves, fe.waveform_scale)
    feats, got = dev(wave.cuda(), lens.cuda())
    assert feats.is_cuda
    for i, w in enumerate(waves):
        ref = fx(w, train=False)
        assert int(got[i]) == ref.shape[0]
        np.testing.assert_allclose(feats[i, : ref.shape[0]].cpu().numpy(), ref, atol=TOL, rtol=0)
