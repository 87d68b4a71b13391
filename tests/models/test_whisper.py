"""Whisper encoder wrapper: loading from a real HF directory, equality with transformers, lengths, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.models.state_dict import CheckpointMismatchError
from llmasr.models.whisper import build_whisper_encoder, load_whisper_encoder
from llmasr.testing.tiny_whisper import write_tiny_whisper_dir


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return write_tiny_whisper_dir(tmp_path_factory.mktemp("tiny_whisper"))


def hf_encoder(path):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(str(path)).model.encoder.eval()


def silence_padded(xs: torch.Tensor, lens: torch.Tensor, n_frames: int) -> torch.Tensor:
    """What Whisper's feature extractor gives for zero-padded audio: the log-mel floor (max - 2) after `len`."""
    out = torch.zeros(xs.size(0), n_frames, xs.size(2))
    for b, n in enumerate(lens.tolist()):
        out[b, :n] = xs[b, :n]
        out[b, n:] = xs[b, :n].max() - 2.0
    return out.transpose(1, 2)


def test_frontend_config(whisper_dir):
    enc, frontend = load_whisper_encoder(whisper_dir)
    assert frontend.kind == "whisper"
    assert frontend.n_mels == 80 and frontend.sample_rate == 16000 and frontend.n_fft == 400
    assert frontend.frame_shift_ms == 10.0
    assert frontend.chunk_seconds == 2.0  # 2 * max_source_positions (100) frames of 10 ms
    assert enc.output_size() == 32 and enc.n_frames == 200


def test_128_mel_directory(tmp_path):
    path = write_tiny_whisper_dir(tmp_path / "w128", n_mels=128, max_source_positions=50)
    enc, frontend = load_whisper_encoder(path)
    assert frontend.n_mels == 128 and frontend.chunk_seconds == 1.0
    with torch.no_grad():
        ys, ys_lens = enc(torch.randn(1, 100, 128), torch.tensor([100]))
    assert ys.shape == (1, 50, 32) and ys_lens.tolist() == [50]


def test_full_length_equals_transformers(whisper_dir):
    enc, _ = load_whisper_encoder(whisper_dir)
    enc.eval()
    xs = torch.randn(2, 200, 80)
    with torch.no_grad():
        ys, ys_lens = enc(xs, torch.tensor([200, 200]))
        ref = hf_encoder(whisper_dir)(xs.transpose(1, 2)).last_hidden_state
    assert ys_lens.tolist() == [100, 100]
    torch.testing.assert_close(ys, ref, atol=1e-5, rtol=1e-5)


def test_padded_batch_equals_transformers_on_padded_input(whisper_dir):
    enc, _ = load_whisper_encoder(whisper_dir)
    enc.eval()
    lens = torch.tensor([150, 91, 37])
    xs = torch.randn(3, 150, 80)
    with torch.no_grad():
        ys, ys_lens = enc(xs, lens)
        ref = hf_encoder(whisper_dir)(silence_padded(xs, lens, 200)).last_hidden_state
    assert ys_lens.tolist() == [75, 46, 19]
    assert ys.shape == (3, 75, 32)
    for b, n in enumerate(ys_lens.tolist()):
        torch.testing.assert_close(ys[b, :n], ref[b, :n], atol=1e-5, rtol=1e-5)
        assert torch.all(ys[b, n:] == 0)


def test_batch_padding_does_not_change_outputs(whisper_dir):
    enc, _ = load_whisper_encoder(whisper_dir)
    enc.eval()
    x = torch.randn(1, 60, 80)
    batch = torch.randn(2, 120, 80) * 50
    batch[0, :60] = x[0]
    with torch.no_grad():
        alone, alone_lens = enc(x, torch.tensor([60]))
        ys, ys_lens = enc(batch, torch.tensor([60, 120]))
    assert alone_lens.tolist() == [30] and ys_lens.tolist() == [30, 60]
    torch.testing.assert_close(ys[0, :30], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("amplitude", [0.1, 1e-3, 1e-4, 0.0])
def test_a_quiet_clip_is_padded_as_whispers_feature_extractor_pads_it(whisper_dir, amplitude):
    """The frames past a clip hold what transformers' WhisperFeatureExtractor gives for its zero padding: the
    maximum minus 2, but never below the 1e-10 power clamp's -1.5 (a quiet clip had been padded lower, and
    Whisper has no padding mask, so its valid frames changed too)."""
    import numpy as np
    from transformers import WhisperFeatureExtractor

    from llmasr.data.features import FeatureExtractor
    from llmasr.data.frontend import FrontendConfig

    enc, _ = load_whisper_encoder(whisper_dir)
    wave = (np.random.default_rng(0).standard_normal(16000) * amplitude).astype(np.float32)
    ref = WhisperFeatureExtractor(feature_size=80, chunk_length=2)(wave, sampling_rate=16000, return_tensors="pt")
    ref = ref["input_features"][0]  # [80, 200]
    ours = torch.as_tensor(FeatureExtractor(FrontendConfig(kind="whisper", dither=0.0))(wave, train=False))
    feats, lens = enc.prepare_features(ours[None], torch.tensor([len(ours)]))
    assert lens.tolist() == [102]  # the frames whose window reaches the clip's 16000 samples
    torch.testing.assert_close(feats[0], ref, atol=1e-5, rtol=0)
    with torch.no_grad():
        ys, _ = enc.eval()(ours[None], torch.tensor([len(ours)]))
        expected = hf_encoder(whisper_dir)(torch.cat([ours.T, ref[:, -1:].expand(80, 98)], dim=1)[None])
    torch.testing.assert_close(ys[0], expected.last_hidden_state[0, :51], atol=1e-5, rtol=1e-5)


def audio_through_both(path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(llmasr's encoder output over its valid frames, transformers' over the same frames) for n samples of audio
    ending loud: llmasr's frontend then WhisperAudioEncoder, against WhisperFeatureExtractor (the directory's
    preprocessor_config.json) then WhisperEncoder, on the same weights."""
    import numpy as np
    from transformers import WhisperFeatureExtractor

    from llmasr.data.features import FeatureExtractor

    t = np.arange(n) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + np.random.default_rng(n).standard_normal(n) * 0.02).astype(np.float32)
    wave[-400:] *= 3  # speech that ends at the clip's end: the frames after ceil(n / 160) hear it
    enc, frontend = load_whisper_encoder(path)
    feats = torch.from_numpy(FeatureExtractor(frontend)(wave, train=False))
    ref_feats = WhisperFeatureExtractor.from_pretrained(str(path))(wave, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ys, ys_lens = enc.eval()(feats[None], torch.tensor([len(feats)]))
        ref = hf_encoder(path)(ref_feats["input_features"]).last_hidden_state
    k = int(ys_lens[0])
    assert ys.shape[1] == k
    return ys[0], ref[0, :k]


@pytest.mark.parametrize("n", [1600, 1601, 1640, 1641, 1761, 12345, 31_600, 31_700, 31_847, 31_999, 32_000])
def test_encoder_output_from_audio_equals_transformers(whisper_dir, n):
    """Whisper has no padding mask, so every frame counts: the one or two frames after ceil(n / 160), which
    transformers computes over the clip's last samples, had been the silence floor here, and the encoder output
    differed from transformers' (most at the last output frame)."""
    ours, ref = audio_through_both(whisper_dir, n)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [479_600, 479_847, 480_000])
def test_encoder_output_from_audio_equals_transformers_near_30_s(tmp_path_factory, n):
    path = write_tiny_whisper_dir(tmp_path_factory.mktemp("whisper_30s"), max_source_positions=1500)
    ours, ref = audio_through_both(path, n)
    assert len(ours) == 1500
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_longer_input_is_refused_naming_both_frame_counts(whisper_dir):
    """Frames past the window had been cut off without a word, the whole transcript kept; batch padding past it
    (every length within the window) is still dropped."""
    enc, _ = load_whisper_encoder(whisper_dir)
    with torch.no_grad(), pytest.raises(ValueError, match="an input of 260 frames is longer than its window of 200"):
        enc.eval()(torch.randn(2, 260, 80), torch.tensor([260, 199]))
    with torch.no_grad():
        ys, ys_lens = enc.eval()(torch.randn(2, 260, 80), torch.tensor([200, 199]))
    assert ys.shape == (2, 100, 32) and ys_lens.tolist() == [100, 100]


def test_wrong_feature_size_is_an_error(whisper_dir):
    enc, _ = load_whisper_encoder(whisper_dir)
    with pytest.raises(ValueError, match="80"):
        enc(torch.randn(1, 100, 128), torch.tensor([100]))


def test_gradient_checkpointing_same_outputs_and_grads(whisper_dir):
    enc, _ = load_whisper_encoder(whisper_dir)
    enc.train()
    xs, lens = torch.randn(2, 180, 80), torch.tensor([180, 111])
    results = []
    for flag in (False, True):
        enc.gradient_checkpointing = flag
        assert enc.gradient_checkpointing is flag
        assert all(layer.gradient_checkpointing is flag for layer in enc.encoder.layers)
        enc.zero_grad()
        torch.manual_seed(0)
        ys, _ = enc(xs, lens)
        (ys**2).sum().backward()
        results.append((ys.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}))
    (y0, g0), (y1, g1) = results
    torch.testing.assert_close(y0, y1)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], msg=name)
    enc.gradient_checkpointing = False
    assert not enc.gradient_checkpointing


def test_whisper_model_layout_and_no_decoder_weights(whisper_dir, tmp_path):
    from transformers import WhisperForConditionalGeneration

    out = tmp_path / "whisper_model"
    WhisperForConditionalGeneration.from_pretrained(str(whisper_dir)).model.save_pretrained(str(out))
    shutil.copy(whisper_dir / "preprocessor_config.json", out)
    enc, _ = load_whisper_encoder(out)
    assert not any("decoder" in k for k in enc.state_dict())
    ref, _ = load_whisper_encoder(whisper_dir)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(enc.state_dict()[key], value)


@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json", "model.safetensors"])
def test_missing_file_is_named(whisper_dir, tmp_path, name):
    broken = tmp_path / "broken"
    shutil.copytree(whisper_dir, broken)
    (broken / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        load_whisper_encoder(broken)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_whisper_encoder(tmp_path / "nope")


def test_shape_mismatch_reports_both_shapes_and_reinit_keys(whisper_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "mismatch"
    shutil.copytree(whisper_dir, broken)
    state = load_file(str(broken / "model.safetensors"))
    state["model.encoder.layers.1.fc1.weight"] = torch.zeros(48, 32)
    del state["model.encoder.layers.1.fc1.bias"]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError) as err:
        load_whisper_encoder(broken)
    text = str(err.value)
    assert "layers.1.fc1.weight: checkpoint [48, 32] vs model [64, 32]" in text
    assert "missing from checkpoint: layers.1.fc1.bias" in text
    enc, _ = load_whisper_encoder(broken, reinit_keys=["layers.1.fc1.*"])
    assert enc.output_size() == 32


def test_mel_mismatch_between_config_and_preprocessor(whisper_dir, tmp_path):
    broken = tmp_path / "mels"
    shutil.copytree(whisper_dir, broken)
    pre = json.loads((broken / "preprocessor_config.json").read_text())
    pre["feature_size"] = 128
    (broken / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(ConfigError, match="feature_size 128"):
        load_whisper_encoder(broken)


def test_build_from_conf():
    enc, frontend = build_whisper_encoder(
        {
            "d_model": 16,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "num_mel_bins": 80,
            "max_source_positions": 50,
        }
    )
    assert enc.output_size() == 16 and frontend.chunk_seconds == 1.0
    with pytest.raises(ConfigError, match="encoder.conf.d_modle"):
        build_whisper_encoder({"d_modle": 16})


def test_conf_over_a_directory_sets_what_leaves_the_shapes_alone(whisper_dir):
    """model.encoder.conf over a Whisper directory: dropout and layerdrop apply (they had been dropped without a
    word, and unknown keys passed), typed as WhisperConfig's (YAML reads 1e-1 as a string); a key that would
    change the pretrained shapes is refused with both values."""
    from llmasr.models.builder import build_encoder
    from llmasr.models.config import EncoderConfig
    from llmasr.models.encoder_spec import encoder_spec

    cfg = EncoderConfig(type="whisper", path=str(whisper_dir), conf={"dropout": "1e-1", "encoder_layerdrop": 0.2})
    encoder, _ = build_encoder(cfg)
    assert encoder.config.dropout == 0.1 and encoder.encoder.config.encoder_layerdrop == 0.2
    assert encoder_spec(cfg).conf["dropout"] == 0.1
    plain, _ = load_whisper_encoder(whisper_dir)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in encoder.state_dict().items())
    d_model = json.loads((whisper_dir / "config.json").read_text())["d_model"]
    with pytest.raises(ConfigError, match=rf"model.encoder.conf.d_model: {d_model * 2} differs from .*config.json's "
                                          rf"{d_model}; the pretrained weights fix it"):  # fmt: skip
        build_encoder(EncoderConfig(type="whisper", path=str(whisper_dir), conf={"d_model": d_model * 2}))
    with pytest.raises(
        ConfigError, match="model.encoder.conf.dropuot: not a WhisperConfig option; did you mean 'dropout'"
    ):
        encoder_spec(EncoderConfig(type="whisper", path=str(whisper_dir), conf={"dropuot": 0.1}))
    with pytest.raises(ConfigError, match="model.encoder.conf.dropout"):
        build_whisper_encoder({"dropout": "lots"})


def test_an_activation_other_than_the_pretrained_ones_is_refused(whisper_dir):
    """activation_function changes no tensor's shape, so the load passed and the pretrained weights ran through
    another nonlinearity; the directory's own value is fine."""
    from llmasr.models.config import EncoderConfig
    from llmasr.models.encoder_spec import encoder_spec

    stated = json.loads((whisper_dir / "config.json").read_text())["activation_function"]
    assert load_whisper_encoder(whisper_dir, conf={"activation_function": stated})[0] is not None
    with pytest.raises(ConfigError, match=rf"model.encoder.conf.activation_function: relu differs from .*{stated}"):
        encoder_spec(EncoderConfig(type="whisper", path=str(whisper_dir), conf={"activation_function": "relu"}))


@pytest.mark.parametrize(
    "key, value, hint",
    [("apply_spec_augment", True, "data.augment.spec_augment"), ("mask_time_prob", 0.5, "data.augment.spec_augment"),
     ("decoder_layers", 7, "never reads"), ("use_weighted_layer_sum", True, "never reads")],
)  # fmt: skip
def test_whisper_options_the_encoder_never_reads_are_refused(whisper_dir, key, value, hint):
    """WhisperConfig keys that WhisperEncoder never reads (SpecAugment's, applied only by WhisperModel; the
    decoder's; a classification head's) had been accepted and silently unused."""
    from llmasr.models.config import EncoderConfig
    from llmasr.models.encoder_spec import encoder_spec

    with pytest.raises(ConfigError, match=rf"model.encoder.conf.{key}: .*{hint}"):
        encoder_spec(EncoderConfig(type="whisper", path=str(whisper_dir), conf={key: value}))
    with pytest.raises(ConfigError, match=rf"model.encoder.conf.{key}: "):
        build_whisper_encoder({key: value})


def _as_bin_dir(whisper_dir, out, *, shards: int = 1):
    """`whisper_dir` with its weights as pytorch_model.bin (or `shards` files and their index), as a fine-tune saved
    before transformers wrote safetensors holds them."""
    from safetensors.torch import load_file

    shutil.copytree(whisper_dir, out)
    state = load_file(str(out / "model.safetensors"))
    (out / "model.safetensors").unlink()
    if shards == 1:
        torch.save(state, out / "pytorch_model.bin")
        return out
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i::shards]}
        torch.save(part, out / name)
        weight_map.update(dict.fromkeys(part, name))
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


@pytest.mark.parametrize("shards", [1, 3])
def test_a_pytorch_model_bin_directory_loads_as_its_safetensors_twin(whisper_dir, tmp_path, shards):
    """A Whisper fine-tune saved as pytorch_model.bin (transformers loads it; so does llmasr's LLM loader) had been
    refused for its missing model.safetensors."""
    binned = _as_bin_dir(whisper_dir, tmp_path / "binned", shards=shards)
    enc, frontend = load_whisper_encoder(binned)
    ref, ref_frontend = load_whisper_encoder(whisper_dir)
    assert frontend == ref_frontend
    assert enc.state_dict().keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(enc.state_dict()[key], value, rtol=0, atol=0)
    with torch.device("meta"):
        load_whisper_encoder(binned, shapes_only=True)  # names and shapes checked, no data read


def test_a_git_lfs_pointer_or_a_broken_weight_file_is_named(whisper_dir, tmp_path):
    """A repository cloned without git-lfs had given safetensors' bare 'header too large', naming no file."""
    broken = tmp_path / "lfs"
    shutil.copytree(whisper_dir, broken)
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:0123abcd\nsize 1234567\n"
    (broken / "model.safetensors").write_text(pointer)
    for shapes_only in (False, True):
        with pytest.raises(CheckpointMismatchError, match=r"model\.safetensors: a Git LFS pointer.*git lfs pull"):
            load_whisper_encoder(broken, shapes_only=shapes_only)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointMismatchError, match=r"model\.safetensors: not a readable safetensors file"):
        load_whisper_encoder(broken)
    binned = _as_bin_dir(whisper_dir, tmp_path / "binned_lfs", shards=3)
    (binned / "pytorch_model-00002-of-00003.bin").write_text(pointer)
    with pytest.raises(CheckpointMismatchError, match=r"pytorch_model-00002-of-00003\.bin: a Git LFS pointer"):
        load_whisper_encoder(binned)


@pytest.mark.parametrize("text", ['{"feature_size": 80,', "[80]"])
def test_a_broken_preprocessor_config_is_named(whisper_dir, tmp_path, text):
    """json's bare 'Expecting property name ...' had named no file."""
    from llmasr.models.whisper import whisper_dir_frontend

    broken = tmp_path / "pre"
    shutil.copytree(whisper_dir, broken)
    (broken / "preprocessor_config.json").write_text(text)
    for load in (load_whisper_encoder, whisper_dir_frontend):
        with pytest.raises(ConfigError, match=r"preprocessor_config\.json: (not valid JSON|must hold a JSON object)"):
            load(broken)
