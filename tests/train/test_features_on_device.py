"""data.features_on: device through the real training loop and decoding: the loader ships waveforms, the model
computes fbank + LFR + CMVN + SpecAugment itself, and training, validation and decoding give what the worker path
gives (same pauses, dither and masks per item, features equal within the fbank parity tolerance)."""

from __future__ import annotations

import pytest

from llmasr.data.device_features import DeviceFeatures
from llmasr.export.decode import DecodeOptions, decode_manifest
from llmasr.models.decoding import DecodeConfig
from llmasr.testing.run_dirs import model_section, train_run

# SpecAugment drawn in the worker, applied where the features are made; pauses put around every clip before either
AUGMENT = {
    "spec_augment": {"enable": True, "num_time_masks": 2, "max_time_width": 3, "num_freq_masks": 1},
    "silence": {"enable": True, "prob": 1.0, "lead": [0.05, 0.2], "trail": [0.0, 0.1]},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from llmasr.testing.tiny_corpus import write_tiny_corpus
    from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    root = tmp_path_factory.mktemp("features_on")
    llm, enc = write_tiny_llm_dir(root / "llm"), write_funasr_dir(root / "enc", encoder_conf=tiny_sanm_conf())
    corpus = write_tiny_corpus(root / "corpus", n=8)
    runs, calls = {}, {}
    for where in ("worker", "device"):
        seen = []
        with pytest.MonkeyPatch.context() as mp:  # count the batches whose features the model computed
            mp.setattr(DeviceFeatures, "__call__", _counting(DeviceFeatures.__call__, seen))
            data = {"features_on": where, "augment": AUGMENT}
            runs[where] = train_run(root / where, model_section(llm, enc), corpus, updates=2, valid=corpus, data=data)
        calls[where] = len(seen)
    assert calls["worker"] == 0 and calls["device"] >= 3  # >= 2 training batches and a validation batch
    return runs, corpus


def _counting(fn, seen: list):
    def wrapped(self, *args, **kwargs):
        seen.append(args[0].shape)
        return fn(self, *args, **kwargs)

    return wrapped


def test_training_on_device_features_follows_the_worker_path(setup):
    runs, _ = setup
    worker, device = runs["worker"], runs["device"]
    for a, b in zip(worker.history, device.history):
        assert b["n_utts"] == a["n_utts"] and b["n_tokens"] == a["n_tokens"]
        assert b["audio_seconds"] == pytest.approx(a["audio_seconds"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert worker.trained.keys() == device.trained.keys()
    for name, value in worker.trained.items():
        diff = (device.trained[name] - value).abs()
        # Adam normalises each element's step: where a gradient is near 0, features 1e-4 apart can turn an
        # element's step around, by up to one learning rate (1e-4 on the CTC head) per update; elsewhere ~1e-7.
        assert float(diff.max()) <= 2e-4 and float(diff.mean()) < 1e-6, name


def test_decoding_with_device_features_gives_the_worker_transcripts(setup, tmp_path, monkeypatch):
    runs, corpus = setup
    seen = []
    monkeypatch.setattr(DeviceFeatures, "__call__", _counting(DeviceFeatures.__call__, seen))
    model = runs["device"].reference_model()
    cfg = DecodeConfig(max_new_tokens=4, batch_seconds=3.0)
    got = {}
    for where in ("worker", "device"):
        opts = DecodeOptions(num_workers=0, ctc=True, features_on=where)
        got[where] = decode_manifest(model, corpus, tmp_path / where, cfg, opts)
        assert got[where]["too_much_bad_data"] is None
        assert bool(seen) == (where == "device")
    hyps = {where: (tmp_path / where / "hyp.txt").read_text() for where in got}
    assert hyps["worker"] == hyps["device"] and hyps["worker"].strip()


def test_exported_model_decodes_with_device_features_from_the_command(setup, tmp_path, monkeypatch):
    from llmasr.commands.decode import main
    from llmasr.export.export import export_model

    runs, corpus = setup
    exported = export_model(runs["device"].run_dir, tmp_path / "model", dtype="fp32")
    seen = []
    monkeypatch.setattr(DeviceFeatures, "__call__", _counting(DeviceFeatures.__call__, seen))
    common = ["--model", str(exported), "--data", str(corpus), "--num-workers", "0", "--device", "cpu", "--ctc"]
    for where in ("worker", "device"):
        assert main([*common, "--output", str(tmp_path / where), "--features-on", where]) == 0
        assert bool(seen) == (where == "device")  # the exported model's frontend (its am.mvn) computed them
    for name in ("hyp.txt", "ctc/hyp.txt"):
        assert (tmp_path / "worker" / name).read_text() == (tmp_path / "device" / name).read_text(), name
