"""FunASR model directories that do not load as they are: CMVN files, missing files, checkpoint keys and shapes,
and config.yaml settings the encoder or frontend refuses, each named."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.models.funasr_dir import load_funasr_encoder
from llmasr.models.state_dict import CheckpointMismatchError
from llmasr.testing.tiny_funasr import as_deepspeed_checkpoint
from llmasr.testing.tiny_funasr import copy_model_dir as _copy
from llmasr.testing.tiny_funasr import edit_config_yaml as _edit_config
from llmasr.testing.tiny_funasr import rewrite_model_pt as _rewrite_state


def test_missing_am_mvn(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "am.mvn").unlink()
    with pytest.raises(ConfigError, match=r"am\.mvn.*missing.*AddShift"):
        load_funasr_encoder(d)


def test_cmvn_file_from_config_when_am_mvn_absent(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "am.mvn").rename(d / "cmvn.txt")
    _edit_config(d, lambda c: c["frontend_conf"].update(cmvn_file="cmvn.txt"))
    _, fe = load_funasr_encoder(d)
    assert fe.cmvn_file == str((d / "cmvn.txt").resolve())
    _edit_config(d, lambda c: c["frontend_conf"].update(cmvn_file=None))  # explicit null: trained without CMVN
    _, fe = load_funasr_encoder(d)
    assert fe.cmvn_file is None


def test_cmvn_file_named_by_the_training_machine_is_found_here_by_name(tmp_path, tiny_dir):
    """config.yaml as FunASR training writes it: cmvn_file an absolute path on that machine, configuration.json
    mapping no CMVN. The file of that name in the directory is it (its error had said am.mvn was missing)."""
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c["frontend_conf"].update(cmvn_file="/root/.cache/modelscope/para/am.mvn"))
    (d / "configuration.json").write_text(json.dumps({"file_path_metas": {"init_param": "model.pt"}}))
    _, fe = load_funasr_encoder(d)
    assert fe.cmvn_file == str((d / "am.mvn").resolve())
    _edit_config(d, lambda c: c["frontend_conf"].update(cmvn_file="/root/.cache/modelscope/para/cmvn.ark"))
    named = r"frontend_conf.cmvn_file names /root/.cache/modelscope/para/cmvn.ark, which is neither there nor in "
    with pytest.raises(ConfigError, match=named + r".*am.mvn is, but configuration.json maps"):
        load_funasr_encoder(d)


def test_features_normalized_by_the_model_are_refused(tmp_path, tiny_dir):
    """config.yaml's `normalize` (UtteranceMVN, GlobalMVN): FunASR applies it before the encoder; llmasr had
    ignored it without a word."""
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c.update(normalize=None))
    load_funasr_encoder(d)
    _edit_config(d, lambda c: c.update(normalize="UtteranceMVN", normalize_conf={}))
    with pytest.raises(ConfigError, match=r"config.yaml: normalize is 'UtteranceMVN'; FunASR normalizes the features"):
        load_funasr_encoder(d)


def test_missing_model_pt(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "model.pt").unlink()
    with pytest.raises(ConfigError, match=r"model\.pt: missing.*state dict"):
        load_funasr_encoder(d)


def test_weights_saved_as_a_zero3_deepspeed_folder_are_named_as_such(tmp_path, tiny_dir):
    """FunASR's DeepSpeed trainer leaves model.pt as a folder; under ZeRO-3 it holds no whole weights."""
    d = _copy(tiny_dir, tmp_path / "d")
    as_deepspeed_checkpoint(d, stage=3)
    with pytest.raises(
        ConfigError,
        match=r"model\.pt: a directory, not a weights file: FunASR's DeepSpeed trainer.*ZeRO-3 checkpoint.*"
        r"zero_to_fp32 \(tag model\.pt\).*encoder tensors under 'encoder\.'",
    ):
        load_funasr_encoder(d)


def test_an_llm_based_funasr_directory_is_named_as_such(tmp_path, tiny_dir):
    """A Fun-ASR-Nano directory names its encoder `audio_encoder`: the error suggested an `encoder: SANMEncoder`."""
    d = _copy(tiny_dir, tmp_path / "d")

    def as_nano(c):
        c.update(model="FunASRNano", audio_encoder="SenseVoiceEncoderSmall", audio_encoder_conf=c.pop("encoder_conf"))
        del c["encoder"]

    _edit_config(d, as_nano)
    with pytest.raises(
        ConfigError,
        match=r"config\.yaml: model 'FunASRNano' names its speech encoder `audio_encoder` "
        r"\('SenseVoiceEncoderSmall'\).*`llmasr convert funasr`",
    ):
        load_funasr_encoder(d)


def test_missing_config_and_directory(tmp_path, tiny_dir):
    with pytest.raises(ConfigError, match="not found"):
        load_funasr_encoder(tmp_path / "nowhere")
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"config\.yaml: missing.*encoder_conf"):
        load_funasr_encoder(d)


def test_missing_key_named(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _rewrite_state(d, lambda s: s.pop("encoder.encoders.0.feed_forward.w_1.bias"))
    with pytest.raises(CheckpointMismatchError, match=r"missing from checkpoint: encoders\.0\.feed_forward\.w_1\.bias"):
        load_funasr_encoder(d)


def test_unexpected_key_named(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _rewrite_state(d, lambda s: s.update({"encoder.encoders.1.norm1.weight": torch.ones(32)}))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected in checkpoint: encoders\.1\.norm1\.weight"):
        load_funasr_encoder(d)


def test_no_encoder_tensors(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _rewrite_state(d, lambda s: [s.pop(k) for k in list(s) if k.startswith("encoder.")])
    with pytest.raises(CheckpointMismatchError, match=r"no tensors under 'encoder\.'.*decoder\."):
        load_funasr_encoder(d)


def test_shape_mismatch_names_key_and_shapes(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c["encoder_conf"].update(linear_units=48))
    with pytest.raises(
        CheckpointMismatchError,
        match=r"encoders0\.0\.feed_forward\.w_1\.weight: checkpoint \[64, 32\] vs model \[48, 32\]",
    ):
        load_funasr_encoder(d)


@pytest.mark.parametrize(
    "edit, said",
    [({"cnn_module_kernel": 31}, r"shape mismatch: encoders\.0\.conv_module\.depthwise_conv\.weight: checkpoint "
                                 r"\[32, 1, 15\] vs model \[32, 1, 31\]"),
     ({"input_layer": "conv2d6"}, r"shape mismatch: embed\.out\.0\.weight: checkpoint \[32, 608\] vs model "
                                  r"\[32, 384\]"),
     ({"macaron_style": False}, r"unexpected in checkpoint: encoders\.0\.feed_forward_macaron\.w_1\.weight"),
     ({"normalize_before": False}, r"unexpected in checkpoint: after_norm\.weight")],
)  # fmt: skip
def test_conformer_config_yaml_that_does_not_fit_its_model_pt_is_named(tmp_path, edit, said):
    """A Conformer config.yaml whose kernel, subsampling, macaron or norm placement is not its model.pt's: the error
    names the key with both shapes, and config.yaml as what to fix (it said "the config", which a recipe user reads
    as the recipe) and the recipe key that starts keys fresh."""
    from llmasr.testing.tiny_funasr import write_funasr_dir
    from llmasr.testing.tiny_whisper import tiny_conformer_conf

    fe = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10, "lfr_m": 1, "lfr_n": 1}
    d = write_funasr_dir(tmp_path / "c", encoder_type="ConformerEncoder", encoder_conf=tiny_conformer_conf(80),
                         frontend_conf=fe)  # fmt: skip
    _edit_config(d, lambda c: c["encoder_conf"].update(edit))
    with pytest.raises(CheckpointMismatchError) as err:
        load_funasr_encoder(d)
    text, config = str(err.value), re.escape(str((d / "config.yaml").resolve()))
    assert re.search(said, text), text
    assert re.search(rf"built from {config} encoder_conf:\n", text), text
    assert re.search(rf"Fix {config} encoder_conf to match .* under `model\.encoder\.reinit_keys`", text), text


def test_reinit_keys_allow_listed_mismatch(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _rewrite_state(d, lambda s: s.update({"encoder.after_norm.weight": torch.ones(7)}))
    with pytest.raises(CheckpointMismatchError, match="after_norm.weight"):
        load_funasr_encoder(d)
    enc, _ = load_funasr_encoder(d, reinit_keys=["after_norm.*"])
    assert enc.after_norm.weight.shape == (32,)
    state = torch.load(tiny_dir / "model.pt", weights_only=True)
    assert torch.equal(enc.encoders[0].norm1.weight, state["encoder.encoders.0.norm1.weight"])


@pytest.mark.parametrize("where", ["top", "encoder_conf"])
def test_input_size_disagreeing_with_frontend(tmp_path, tiny_dir, where):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: (c if where == "top" else c["encoder_conf"]).update(input_size=400))
    with pytest.raises(ConfigError, match=r"input_size is 400.*80 \* 7 = 560"):
        load_funasr_encoder(d)


def test_input_size_agreeing_is_fine(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c.update(input_size=560))
    load_funasr_encoder(d)


def test_unknown_encoder_class(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c.update(encoder="BranchformerEncoder"))
    supported = "SANMEncoder, SANMEncoderChunkOpt, ConformerEncoder, SenseVoiceEncoderSmall"
    with pytest.raises(ConfigError, match=rf"BranchformerEncoder.*{supported}"):
        load_funasr_encoder(d)


def test_unknown_frontend(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c.update(frontend="WhisperFrontend"))
    with pytest.raises(ConfigError, match=r"WhisperFrontend.*WavFrontend, WavFrontendOnline"):
        load_funasr_encoder(d)


def test_unknown_encoder_conf_key(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c["encoder_conf"].update(num_block=2))
    with pytest.raises(ConfigError, match="'num_block'"):
        load_funasr_encoder(d)


def test_harmless_real_config_keys(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(
        d,
        lambda c: c["encoder_conf"].update(
            tf2torch_tensor_name_prefix_torch="encoder", tf2torch_tensor_name_prefix_tf="seq2seq/encoder"
        ),
    )
    load_funasr_encoder(d)


@pytest.mark.parametrize(
    "edit, said",
    [({"foo": 1}, r"SANMEncoder: unknown encoder_conf key 'foo'"),
     ({"num_blocks": "many"}, r"\.num_blocks: expected an integer, got 'many'")],
)  # fmt: skip
def test_encoder_conf_the_encoder_refuses_is_named_by_config_yaml(tiny_dir, tmp_path, edit, said):
    """The settings come from the directory's config.yaml: the refusal had named no file (or the recipe's
    model.encoder.conf, which does not hold the key), whether the weights are read or not."""
    from llmasr.models.builder import build_encoder
    from llmasr.models.config import EncoderConfig

    d = tmp_path / "d"
    shutil.copytree(tiny_dir, d)
    _edit_config(d, lambda c: c["encoder_conf"].update(edit))
    where = re.escape(f"{d / 'config.yaml'} encoder_conf")
    with pytest.raises(ConfigError, match=rf"^{where}(: )?{said}"):
        load_funasr_encoder(d)
    with pytest.raises(ConfigError, match=rf"^{where}(: )?{said}"):
        build_encoder(EncoderConfig(type="paraformer", path=str(d)), pretrained=False)


def test_config_yaml_that_is_not_utf8_is_named(tmp_path, tiny_dir):
    """A config.yaml resaved in a local code page (comments in GBK): the raw UnicodeDecodeError named no file."""
    d = _copy(tiny_dir, tmp_path / "d")
    text = (d / "config.yaml").read_text(encoding="utf-8")
    (d / "config.yaml").write_bytes(("# 模型配置\n" + text).encode("gbk"))
    with pytest.raises(ConfigError, match=re.escape(f"{d / 'config.yaml'}: not UTF-8 text")):
        load_funasr_encoder(d)


@pytest.mark.parametrize(
    "key, value, said",
    [("fs", "16kHz", "expected an integer, got '16kHz'"), ("lfr_m", "seven", "expected an integer, got 'seven'"),
     ("lfr_n", [6], r"expected an integer, got \[6\]"), ("n_mels", 80.5, "expected an integer, got 80.5"),
     ("dither", None, "expected a number, got None"), ("frame_shift", "ten", "expected a number, got 'ten'")],
)  # fmt: skip
def test_frontend_conf_value_that_is_not_a_number_is_named_by_file_and_key(tmp_path, tiny_dir, key, value, said):
    """A frontend_conf number that is none reached int()/float() raw (a ValueError or TypeError naming neither the
    file nor the key); fs "16k" and numbers written as text still read as FunASR reads them."""
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c["frontend_conf"].update({key: value}))
    where = re.escape(f"{d / 'config.yaml'} frontend_conf.{key}: ")
    with pytest.raises(ConfigError, match=rf"^{where}{said}"):
        load_funasr_encoder(d)


def test_frontend_conf_numbers_written_as_text_still_read(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c["frontend_conf"].update(fs="16k", lfr_m="7", n_mels=80.0, dither="0.5"))
    _, fe = load_funasr_encoder(d)
    assert (fe.sample_rate, fe.lfr_m, fe.n_mels, fe.dither) == (16000, 7, 80, 0.5)


def test_frontend_conf_out_of_range_is_named_by_file(tmp_path, tiny_dir):
    """The frontend's own checks named `frontend_conf` but not the config.yaml it is in."""
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c["frontend_conf"].update(n_mels=0))
    with pytest.raises(ConfigError, match=re.escape(f"{d / 'config.yaml'} frontend_conf.n_mels: must be positive")):
        load_funasr_encoder(d)
