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
from llmasr.testing.tiny_funasr import as_deepspeed_checkpoint, as_funasr_0x
from llmasr.testing.tiny_funasr import copy_model_dir as _copy
from llmasr.testing.tiny_funasr import edit_config_yaml as _edit_config
from llmasr.testing.tiny_funasr import rewrite_model_pt as _rewrite_state


def test_missing_am_mvn(tmp_path, tiny_dir):
    """Without configuration.json (a directory laid out by hand) FunASR reads am.mvn beside config.yaml."""
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "configuration.json").unlink()
    (d / "am.mvn").unlink()
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(d.resolve() / 'am.mvn'))}: missing\..*AddShift"):
        load_funasr_encoder(d)


def test_missing_am_mvn_the_zoo_configuration_json_maps(tmp_path, tiny_dir):
    """As the zoo ships it, configuration.json maps frontend_conf.cmvn_file to am.mvn: the error names that mapping."""
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "am.mvn").unlink()
    named = re.escape(f"{d}/configuration.json: file_path_metas.frontend_conf.cmvn_file names am.mvn, which is not in")
    with pytest.raises(ConfigError, match=rf"^{named} .*config.yaml frontend_conf.cmvn_file names none\..*AddShift"):
        load_funasr_encoder(d)


def test_cmvn_file_from_config_when_am_mvn_absent(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "configuration.json").unlink()  # config.yaml's cmvn_file is read when configuration.json maps none
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


def test_cmvn_of_another_feature_size_is_refused_naming_both_sizes(tmp_path, tiny_dir):
    """An am.mvn over the 80 fbank bins (before LFR) beside an encoder of 80 x 7 features: it loaded, and the first
    batch failed in the loader ("CMVN has 80 dims, features have 560", no config named, exit 1 from llmasr check)."""
    import numpy as np

    from llmasr.data.frontend import write_kaldi_cmvn
    from llmasr.models.funasr_dir import funasr_frontend

    d = _copy(tiny_dir, tmp_path / "d")
    write_kaldi_cmvn(d / "am.mvn", np.zeros(80, np.float32), np.ones(80, np.float32))
    said = (
        rf"{re.escape(str(d.resolve() / 'config.yaml'))} frontend_conf: the features are n_mels x lfr_m = 80 x 7 = "
        rf"560 values a frame, but the CMVN file {re.escape(str(d.resolve() / 'am.mvn'))} holds 80 \(a CMVN of the "
        r"fbank frames before LFR stacking\)"
    )
    with pytest.raises(ConfigError, match=said):
        load_funasr_encoder(d)
    with pytest.raises(ConfigError, match=said):
        funasr_frontend(d)
    write_kaldi_cmvn(d / "am.mvn", np.zeros(400, np.float32), np.ones(400, np.float32))
    with pytest.raises(ConfigError, match=r"holds 400 \(a CMVN of other features \(another model's\)\)"):
        load_funasr_encoder(d)
    # a recipe's own CMVN file over the directory's is held to the same size, named by its recipe key
    from llmasr.models.config import EncoderConfig
    from llmasr.models.encoder_spec import encoder_spec

    good = _copy(tiny_dir, tmp_path / "good")
    section = EncoderConfig(type="paraformer", path=str(good), frontend={"cmvn_file": str(d / "am.mvn")})
    with pytest.raises(ConfigError, match=r"^model.encoder.frontend.cmvn_file: the features are .* = 560 .* holds 400"):
        encoder_spec(section)


def test_a_modelscope_cache_folder_given_at_its_top_names_the_nested_model(tmp_path, tiny_dir):
    """ModelScope's cache nests a FunASR model as hub/[models/]iic/NAME; `model.encoder.path` at hub had been told
    only that config.yaml is missing."""
    hub = tmp_path / "hub"
    nested = hub / "models" / "iic" / "speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch"
    nested.parent.mkdir(parents=True)
    _copy(tiny_dir, nested)
    for top in (hub, hub / "models", hub / "models" / "iic"):
        with pytest.raises(ConfigError, match=rf"^{top}/config.yaml: missing\. .*Folders under it hold one: {nested}: "
                                              r"set model.encoder.path to the model's own folder"):  # fmt: skip
            load_funasr_encoder(top)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"config.yaml: missing\. .*`frontend_conf`$"):  # no folder to name
        load_funasr_encoder(empty)


def test_am_mvn_missing_where_configuration_json_names_it_says_what_to_put_there(tmp_path, tiny_dir):
    """A zoo directory (configuration.json mapping cmvn_file to am.mvn, config.yaml naming none) without its am.mvn:
    the error had ended "config.yaml frontend_conf.cmvn_file (None) names no file here either"."""
    d = _copy(tiny_dir, tmp_path / "d")
    (d / "configuration.json").write_text(json.dumps({"file_path_metas": {"frontend_conf": {"cmvn_file": "am.mvn"}}}))
    (d / "am.mvn").unlink()
    said = (
        r"configuration.json: file_path_metas.frontend_conf.cmvn_file names am.mvn, which is not in .*, and "
        rf".*config.yaml frontend_conf.cmvn_file names none\. Put the Kaldi nnet CMVN .* trained with at {d}/am.mvn$"
    )
    with pytest.raises(ConfigError, match=said):
        load_funasr_encoder(d)


def test_a_funasr_0x_config_yaml_names_the_class_of_each_0x_name(tmp_path, tiny_dir):
    """FunASR 0.x's config.yaml names classes by registry key (encoder: sanm, frontend: wav_frontend); the loader had
    said only "encoder 'sanm' is not supported", one key at a time."""
    from llmasr.models.encoders import funasr_entry
    from llmasr.models.fsmn_vad import FsmnVad
    from llmasr.testing.tiny_vad import write_fsmn_vad_dir

    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c.update(model="paraformer", encoder="sanm", frontend="wav_frontend"))
    with pytest.raises(ConfigError, match=rf"^{d}/config.yaml: a FunASR 0.x config.yaml: model 'paraformer' is "
                       r"FunASR 0.x's name of Paraformer, encoder 'sanm' of SANMEncoder, frontend 'wav_frontend' of "
                       r"WavFrontend\. .*write `model: Paraformer`, `encoder: SANMEncoder`, `frontend: WavFrontend` "
                       "there"):  # fmt: skip
        load_funasr_encoder(d)
    _edit_config(d, lambda c: c.update(model="Paraformer", encoder="SANMEncoder"))  # the frontend alone
    with pytest.raises(ConfigError, match=r"frontend 'wav_frontend' is FunASR 0.x's name of WavFrontend\. .*"
                                          r"write `frontend: WavFrontend` there"):  # fmt: skip
        load_funasr_encoder(d)
    _edit_config(d, lambda c: c.update(frontend="WavFrontend"))
    load_funasr_encoder(d)
    with pytest.raises(ConfigError, match=r"^here: a FunASR 0.x .*encoder 'sanm_chunk_opt' is FunASR 0.x's name of "
                                          r"SANMEncoderChunkOpt\. .*`encoder: SANMEncoderChunkOpt`"):  # fmt: skip
        funasr_entry("sanm_chunk_opt", "here")
    with pytest.raises(ConfigError, match=r"encoder 'transformer' is not supported; supported: SANMEncoder"):
        funasr_entry("transformer", "here")  # a 0.x name of a class llmasr does not load: as before
    vad = write_fsmn_vad_dir(tmp_path / "vad")
    _edit_config(vad, lambda c: c.update(model="e2evad", encoder="fsmn", frontend="wav_frontend"))
    with pytest.raises(ConfigError, match=r"model 'e2evad' is FunASR 0.x's name of FsmnVADStreaming, encoder 'fsmn' "
                                          r"of FSMN, frontend 'wav_frontend' of WavFrontend"):  # fmt: skip
        FsmnVad.from_dir(vad)


def test_a_funasr_0x_directory_names_its_model_pb_and_loads_once_renamed(tmp_path, tiny_dir, caplog):
    """A FunASR 0.x revision keeps its weights in model.pb (torch.save of the whole model's state dict, the tensor
    names of model.pt). Past the config.yaml refusal the error had said only "model.pt: missing"; and once renamed,
    its configuration.json (0.x's, mapping files under `model`, no file_path_metas) had been taken as mapping no CMVN:
    am.mvn, which FunASR 0.x reads (model_config.mvn_file), was left out with a warning."""
    d = as_funasr_0x(_copy(tiny_dir, tmp_path / "d"))
    with pytest.raises(ConfigError, match=r"a FunASR 0.x config.yaml: model 'paraformer' .*encoder 'sanm'"):
        load_funasr_encoder(d)
    _edit_config(d, lambda c: c.update(model="Paraformer", encoder="SANMEncoder", frontend="WavFrontend"))
    pt, pb = re.escape(str(d / "model.pt")), re.escape(str(d / "model.pb"))
    said = (
        rf"^{pt}: missing\. A FunASR model directory needs its weights there .*'encoder\.'; {pb} is there: FunASR "
        r"0\.x's weights file, the whole model's state dict under model\.pt's tensor names, which llmasr reads as it "
        r"is: rename it to model\.pt$"
    )
    with pytest.raises(ConfigError, match=said):
        load_funasr_encoder(d)
    (d / "model.pb").rename(d / "model.pt")
    with caplog.at_level("WARNING"):
        enc, fe = load_funasr_encoder(d)
    assert fe.cmvn_file == str(d / "am.mvn") and "not normalised" not in caplog.text
    ref, _ = load_funasr_encoder(tiny_dir)
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), ref.state_dict().values(), strict=True))


def test_a_shape_mismatch_names_the_config_yaml_key_that_sizes_it_and_the_full_reinit_key(tmp_path, tiny_dir):
    """The error had ended "list keys ... under `reinit_keys`" (no section) and named no setting: config.yaml's
    key whose value is the model's size is named with the checkpoint's size; a module without a reinit option (the
    adaptor, the CTC head) is told only to fix its config."""
    from torch import nn

    from llmasr.models.state_dict import load_into

    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, lambda c: c["encoder_conf"].update(linear_units=48, kernel_size=9))
    with pytest.raises(CheckpointMismatchError) as err:
        load_funasr_encoder(d)
    lines = str(err.value).splitlines()
    assert f"  {d}/config.yaml encoder_conf.linear_units is 48, the checkpoint's tensors 64: set it to 64" in lines
    assert f"  {d}/config.yaml encoder_conf.kernel_size is 9, the checkpoint's tensors 11: set it to 11" in lines
    assert lines[-1] == (
        f"Fix {d}/config.yaml encoder_conf to match the checkpoint, or list keys that should start fresh under "
        "`model.encoder.reinit_keys`."
    )
    with pytest.raises(CheckpointMismatchError, match=r"vs model \[4, 3\]\nFix the config to match the checkpoint\.$"):
        load_into(nn.Linear(3, 4), {"weight": torch.zeros(5, 3), "bias": torch.zeros(4)}, source="adaptor.pt")


def test_a_directory_without_tokens_json_says_once_that_its_vocabulary_is_not_checked(tmp_path, tiny_dir, caplog):
    """Without tokens.json the comparison of the token list with model.pt's output layers had been skipped without a
    word; it is said once a directory, however often it is loaded."""
    import logging

    d = _copy(tiny_dir, tmp_path / "d")
    (d / "tokens.json").unlink()
    with caplog.at_level(logging.INFO, logger="llmasr.models.funasr_checks"):
        load_funasr_encoder(d)
        load_funasr_encoder(d)
    said = [r.getMessage() for r in caplog.records if "no tokens.json" in r.getMessage()]
    assert said == [
        f"{d}: no tokens.json, so the vocabulary-sized tensors of {d / 'model.pt'} (decoder.output_layer.weight, "
        "decoder.embed.0.weight) are not compared with a token list"
    ]


def test_a_bad_value_the_recipe_sets_over_the_directory_is_named_as_the_recipes(tmp_path, tiny_dir):
    """model.encoder.conf's dropout_rate "x" had been named as config.yaml's encoder_conf.dropout_rate, a file the
    user never wrote it in; a bad value config.yaml itself holds is still named there."""
    with pytest.raises(ConfigError, match=r"^model.encoder.conf.dropout_rate: expected a number, got 'x'$"):
        load_funasr_encoder(tiny_dir, conf_overrides={"dropout_rate": "x"})
    bad = _copy(tiny_dir, tmp_path / "m")
    _edit_config(bad, lambda c: c["encoder_conf"].update(dropout_rate="x"))
    with pytest.raises(ConfigError, match=r"m/config.yaml encoder_conf.dropout_rate: expected a number, got 'x'$"):
        load_funasr_encoder(bad, conf_overrides={"attention_dropout_rate": 0.0})
