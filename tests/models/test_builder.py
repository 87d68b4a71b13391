"""The one builder: the meta-device model `llmasr check` counts is the model training builds; the encoder registry
resolves every name a FunASR directory or an export may give; an encoder from `conf` takes `init_from` weights."""

import shutil

import pytest
import torch
from safetensors.torch import save_file

from llmasr.config_io import ConfigError, from_dict
from llmasr.models.builder import build_encoder, build_model
from llmasr.models.config import EncoderConfig
from llmasr.models.encoder_spec import encoder_spec
from llmasr.models.encoders import ENCODERS, encoder_entry, entry_for_class, funasr_entry
from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir
from llmasr.testing.tiny_recipe import tiny_model_section
from llmasr.testing.tiny_whisper import tiny_conformer_conf, write_tiny_whisper_dir


def signature(model):
    return [(n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in model.named_parameters()]


@pytest.mark.parametrize(
    "variant",
    ["lora_frozen_base", "lora_trained_base", "encoder_lora_ctc", "no_lora"],
)
def test_meta_model_is_the_model_training_builds(tiny_llm_dir, tmp_path, variant):
    section = tiny_model_section(tiny_llm_dir, lora=variant != "no_lora", ctc_weight=0.3, adaptor="transformer")
    if variant == "lora_trained_base":
        section["llm"]["freeze"] = False
    if variant == "encoder_lora_ctc":
        section["encoder"]["lora"] = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["linear_out"]}
        section["encoder"]["freeze"] = True
    real = build_model(section)
    meta = build_model(section, weights="meta")
    assert signature(meta) == signature(real)
    assert all(p.is_meta for p in meta.parameters())
    assert meta.ctc_tokenizer.vocab_size == real.ctc_tokenizer.vocab_size
    assert meta.frontend == real.frontend


@pytest.mark.parametrize("branch", ["encoder", "llm"])
@pytest.mark.parametrize("freeze,bias", [(True, "none"), (True, "all"), (True, "lora_only"), (False, "none")])
def test_lora_trains_what_freeze_and_bias_say_on_either_branch(tiny_llm_dir, branch, freeze, bias):
    """LoRA on the encoder follows its `freeze` and `lora.bias` as on the LLM: `freeze: false` trains the base too
    (the encoder's had stayed frozen), and `bias` trains all biases or those of the wrapped layers (ignored)."""
    section = tiny_model_section(tiny_llm_dir, lora=branch == "llm")
    targets = ["linear_out"] if branch == "encoder" else ["q_proj", "v_proj"]
    section[branch].update(freeze=freeze, lora={"r": 2, "alpha": 4, "target_modules": targets, "bias": bias})
    for weights in ("pretrained", "meta"):
        module = getattr(build_model(section, weights=weights), branch)
        trained = {n for n, p in module.named_parameters() if p.requires_grad}
        lora = {n for n in trained if "lora_" in n}
        base = {n for n, _ in module.named_parameters() if "lora_" not in n}
        biases = {n for n in base if n.endswith(".bias")}
        wrapped = {n for n in biases if n.endswith(".base_layer.bias")}
        assert (
            lora
            and trained - lora
            == {
                (True, "none"): set(),
                (True, "all"): biases,
                (True, "lora_only"): wrapped,
                (False, "none"): base,
            }[freeze, bias]
        ), (weights, sorted(trained - lora)[:4])
        assert biases and (bias != "lora_only" or wrapped)


def test_encoder_lora_targets_are_the_linear_layers_they_name():
    """On a Conformer (a Linear inside a Sequential: embed.out.0): all-linear wraps every Linear and nothing else
    (its leaf name "0" had also reached encoders.0 and embed.conv.0, and the build failed); a dotted suffix names a
    Linear as peft matches it; a name that also reaches another kind of module is refused."""
    import peft

    def build(targets):
        section = {"type": "conformer", "conf": {}, "freeze": True, "lora": {"r": 2, "target_modules": targets}}
        return build_encoder(from_dict(EncoderConfig, section, "model.encoder"), pretrained=False)[0]

    enc = build("all-linear")
    wrapped = {n for n, m in enc.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    linear = {n for n, m in enc.named_modules() if type(m) is torch.nn.Linear and ".lora_" not in n}
    assert "embed.out.0" in wrapped and {n.removesuffix(".base_layer") for n in linear} == wrapped
    enc = build(["self_attn.linear_q"])
    wrapped = {n for n, m in enc.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert wrapped and all(n.endswith("self_attn.linear_q") for n in wrapped)
    with pytest.raises(ConfigError, match=r"not nn.Linear or Conv1D layers: \['0 -> embed.conv.0 \(Conv2d\)'"):
        build(["0"])


def test_reinit_keys_of_a_frozen_encoder_are_refused(tiny_llm_dir, tmp_path):
    """Weights re-initialised under reinit_keys in a frozen encoder would stay random for the whole run: refused,
    naming them and the freeze key, in the real build and the shapes-only one `llmasr check` makes; trained, they
    load."""
    enc_dir = write_funasr_dir(tmp_path / "enc", encoder_conf=tiny_sanm_conf())
    state = torch.load(enc_dir / "model.pt", weights_only=True)
    state.pop("encoder.after_norm.weight")
    torch.save(state, enc_dir / "model.pt")
    section = tiny_model_section(tiny_llm_dir, encoder_dir=enc_dir, freeze_encoder=True)
    section["encoder"]["reinit_keys"] = ["after_norm.*"]
    for weights in ("pretrained", "shapes"):
        with pytest.raises(ConfigError, match=r"after_norm.weight would be re-initialised .* model.encoder.freeze"):
            build_model(section, weights=weights)
    section["encoder"]["freeze"] = False
    model = build_model(section)
    assert model.encoder.after_norm.weight.requires_grad


def test_meta_and_random_read_no_weight_file(tiny_llm_dir, tmp_path):
    llm = tmp_path / "llm"
    shutil.copytree(tiny_llm_dir, llm)
    for f in llm.glob("*.safetensors"):
        f.unlink()
    enc_dir = write_funasr_dir(tmp_path / "enc", encoder_conf=tiny_sanm_conf())
    (enc_dir / "model.pt").unlink()
    section = tiny_model_section(llm, encoder_dir=enc_dir)
    for weights in ("meta", "random"):
        model = build_model(section, weights=weights)
        assert sum(p.numel() for p in model.parameters()) > 0
    with pytest.raises((OSError, ConfigError)):
        build_model(section)  # the pretrained build does need the weights


def test_registry_names():
    assert funasr_entry("funasr.models.sanm.encoder:SANMEncoder", "config.yaml").type == "paraformer"
    assert funasr_entry("ConformerEncoder", "config.yaml").type == "conformer"
    with pytest.raises(ConfigError, match=r"x/config.yaml: encoder 'FancyEncoder' is not supported; supported: "):
        funasr_entry("FancyEncoder", "x/config.yaml")
    for entry in ENCODERS.values():
        assert entry_for_class(entry.class_name, "desc") is entry
        assert encoder_entry(entry.type) is entry
    with pytest.raises(ConfigError, match="model.encoder.type: unknown encoder 'wav2vec'"):
        encoder_entry("wav2vec")


@pytest.mark.parametrize("kind", ["paraformer", "conformer", "sensevoice"])
def test_encoder_conf_overrides_are_typed_as_the_constructor_declares(kind):
    """model.encoder.conf is a free mapping in the recipe; its values are typed by the encoder's own settings: a
    "1e-1" from an override is a number, and a wrong type is an error naming the key (it was a TypeError from deep
    inside the constructor)."""
    conf = {"input_size": 20, "output_size": 16, "attention_heads": 2, "linear_units": 32, "num_blocks": 2.0}
    conf.update(
        {"conformer": {}, "paraformer": {"kernel_size": 3}, "sensevoice": {"kernel_size": 3, "tp_blocks": 1}}[kind]
    )
    encoder = ENCODERS[kind].construct({**conf, "dropout_rate": "1e-1"})
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == pytest.approx(0.1) for m in encoder.modules()) > 0
    with pytest.raises(ConfigError, match=r"model.encoder.conf.num_blocks: expected an integer, got 'many'"):
        ENCODERS[kind].construct({**conf, "num_blocks": "many"})


def test_recipe_type_must_match_the_directory(tmp_path):
    enc_dir = write_funasr_dir(tmp_path / "enc", encoder_conf=tiny_sanm_conf())
    cfg = from_dict(EncoderConfig, {"type": "conformer", "path": str(enc_dir)}, "model.encoder")
    with pytest.raises(ConfigError, match=r"model.encoder.type is 'conformer' but .*config.yaml holds a SANMEncoder"):
        build_encoder(cfg)


@pytest.mark.parametrize(
    "setting, said",
    [({"sample_rate": 8000}, "sample_rate: 8000, but the encoder of .* was trained with 16000"),
     ({"lfr_n": 3}, "lfr_n: 3, but the encoder of .* was trained with 6"),
     ({"window": "povey"}, "window: 'povey', but the encoder of .* was trained with 'hamming'"),
     ({"waveform_scale": 1.0}, "waveform_scale: 1.0, but the encoder of .* was trained with 32768.0")],
)  # fmt: skip
def test_a_frontend_setting_that_changes_a_pretrained_encoders_features_is_refused(tmp_path, setting, said):
    """Sample rate, LFR step, window or scale over a pretrained directory kept the feature size, so they built and
    trained silently on features the encoder never saw; dither and the CMVN file (data check reads features
    without it) may still be set, as may the directory's own values."""
    d = write_funasr_dir(tmp_path / "p", encoder_conf=tiny_sanm_conf())
    with pytest.raises(ConfigError, match=rf"model.encoder.frontend.{said} \(its config.yaml frontend_conf\)"):
        encoder_spec(EncoderConfig(type="paraformer", path=str(d), frontend=setting))
    same = {"sample_rate": 16000, "lfr_n": 6, "dither": 0.0, "cmvn_file": None}
    assert encoder_spec(EncoderConfig(type="paraformer", path=str(d), frontend=same)).frontend.cmvn_file is None
    w = write_tiny_whisper_dir(tmp_path / "w")
    with pytest.raises(ConfigError, match=r"model.encoder.frontend.frame_shift_ms: 20.0, but .* trained with 10.0"):
        encoder_spec(EncoderConfig(type="whisper", path=str(w), frontend={"frame_shift_ms": 20}))
    # what may be set over it is what a Whisper frontend takes: no CMVN file, which it refuses
    with pytest.raises(ConfigError, match=r"chunk_seconds: 10.0, .* may set dither, min_frames only$"):
        encoder_spec(EncoderConfig(type="whisper", path=str(w), frontend={"chunk_seconds": 10}))
    with pytest.raises(ConfigError, match=r"lfr_n: 3, .* may set dither, min_frames, cmvn_file only$"):
        encoder_spec(EncoderConfig(type="paraformer", path=str(d), frontend={"lfr_n": 3}))


@pytest.mark.parametrize(
    "setting, said",
    [({"kind": "whisper"}, "kind: 'whisper', but the encoder of .* was trained with 'fbank'"),
     ({"n_mels": 128}, "n_mels: 128, but the encoder of .* was trained with 80"),
     ({"frame_length_ms": "5"}, "frame_length_ms: 5.0, but the encoder of .* was trained with 25.0")],
)  # fmt: skip
def test_a_changed_frontend_setting_is_named_where_the_changed_frontend_does_not_validate(tmp_path, setting, said):
    """`kind: whisper` over a Conformer directory was refused for a dither the recipe never set (fbank's default,
    past Whisper's range), `n_mels: 128` and a 5 ms window because the mel bins do not fit the window: the user was
    sent to change another setting, refused in turn. The setting that changes the features is named, with both
    values."""
    fe = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10, "lfr_m": 1, "lfr_n": 1}
    d = write_funasr_dir(tmp_path / "c", encoder_type="ConformerEncoder", encoder_conf=tiny_conformer_conf(80),
                         frontend_conf=fe)  # fmt: skip
    with pytest.raises(ConfigError, match=rf"^model.encoder.frontend.{said} \(its config.yaml frontend_conf\)"):
        encoder_spec(EncoderConfig(type="conformer", path=str(d), frontend=setting))
    w = write_tiny_whisper_dir(tmp_path / "w")
    with pytest.raises(ConfigError, match=r"^model.encoder.frontend.kind: 'fbank', but .* trained with 'whisper'"):
        encoder_spec(EncoderConfig(type="whisper", path=str(w), frontend={"kind": "fbank"}))


def test_a_frontend_setting_that_resizes_the_features_is_refused_at_build(tmp_path):
    """model.encoder.frontend over a pretrained directory may refine (dither), not resize: features of another size
    than the encoder takes had built and checked fine, then failed at the first batch inside the encoder."""
    d = write_funasr_dir(tmp_path / "p", encoder_conf=tiny_sanm_conf())
    assert encoder_spec(EncoderConfig(type="paraformer", path=str(d), frontend={"dither": 0.5})).frontend.dither == 0.5
    with pytest.raises(ConfigError, match=r"^model.encoder.frontend.lfr_m: the frontend makes 80-dim features \(n_mels "
                                          r"x lfr_m = 80 x 1\), but the encoder of .* takes 560 \(config.yaml's "
                                          r"encoder input_size\)"):  # fmt: skip
        build_encoder(EncoderConfig(type="paraformer", path=str(d), frontend={"lfr_m": 1, "lfr_n": 1}))
    w = write_tiny_whisper_dir(tmp_path / "w")
    with pytest.raises(
        ConfigError,
        match=r"^model.encoder.frontend.n_mels: .* makes 128-dim features .* takes 80 \(config.json's num_mel_bins\)",
    ):
        encoder_spec(EncoderConfig(type="whisper", path=str(w), frontend={"n_mels": 128}))


def test_a_whisper_window_longer_than_the_encoder_takes_is_refused_at_build():
    """A Whisper encoder built from conf takes 2 * max_source_positions frames: a model.encoder.frontend chunk_seconds
    or frame_shift_ms that fits more frames in a window let the data through clips the encoder then refused."""
    conf = {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
            "max_source_positions": 100}  # fmt: skip
    spec = encoder_spec(EncoderConfig(type="whisper", conf=conf, frontend={"chunk_seconds": 1.5}))
    assert spec.frontend.chunk_seconds == 1.5  # a shorter window: the encoder pads it
    for setting, said in (({"chunk_seconds": 5}, "chunk_seconds 5 at frame_shift_ms 10 holds 500 frames"),
                          ({"frame_shift_ms": 5}, "chunk_seconds 2 at frame_shift_ms 5 holds 400 frames")):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"{said}, but the Whisper encoder takes 200 \(2 x max_source_pos"):
            build_encoder(EncoderConfig(type="whisper", conf=conf, frontend=setting))


@pytest.mark.parametrize("stated, kept", [(None, 7), (2, 7), (50, 50)])
def test_a_conformers_fewest_frames_keep_a_larger_min_frames_filter(stated, kept):
    """A Conformer's subsampling raises min_frames to the 7 frames conv2d needs; a larger model.encoder.frontend
    min_frames (a data filter it may set) had been replaced by those 7, letting the short clips through."""
    frontend = {"lfr_m": 1, "lfr_n": 1} | ({} if stated is None else {"min_frames": stated})
    spec = encoder_spec(EncoderConfig(type="conformer", conf=tiny_conformer_conf(80), frontend=frontend))
    assert spec.frontend.min_frames == kept


def test_encoder_from_conf_takes_init_from_weights(tmp_path):
    enc_dir = write_funasr_dir(tmp_path / "enc", encoder_conf=tiny_sanm_conf(), seed=3)
    pretrained, frontend = build_encoder(from_dict(EncoderConfig, {"path": str(enc_dir)}, "model.encoder"))
    save_file({"body." + k: v.contiguous() for k, v in pretrained.state_dict().items()}, tmp_path / "enc.safetensors")
    conf = {**tiny_sanm_conf(), "input_size": frontend.feature_dim}
    weights = str(tmp_path / "enc.safetensors")
    cfg = {"conf": conf, "init_from": weights, "init_prefix": "body.", "frontend": {"lfr_m": 7}}
    rebuilt, _ = build_encoder(from_dict(EncoderConfig, cfg, "model.encoder"))
    x, lens = torch.randn(2, 9, frontend.feature_dim), torch.tensor([9, 6])
    with torch.no_grad():
        assert torch.equal(pretrained.eval()(x, lens)[0], rebuilt.eval()(x, lens)[0])
    with pytest.raises(ConfigError, match="set `path`.*or `init_from`.*not both"):
        from_dict(EncoderConfig, {"path": str(enc_dir), "init_from": str(tmp_path / "enc.safetensors")}, "enc")


# ---- sizes named at load: a pretrained adaptor or CTC head that does not fit the encoder or the LLM ------------


def _save(module, path, **replace):
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    state.update(replace)
    save_file(state, str(path))
    return str(path)


@pytest.mark.parametrize("adaptor", ["linear", "transformer", "conv", "qformer"])
def test_adaptor_weights_for_another_encoder_named(tiny_llm_dir, tmp_path, adaptor):
    section = tiny_model_section(tiny_llm_dir, lora=False, adaptor=adaptor)
    weights = _save(build_model(section, weights="random").adaptor, tmp_path / "adaptor.safetensors")
    section["adaptor"]["init_from"] = weights
    assert build_model(section).adaptor is not None  # the same sizes load
    section["encoder"]["conf"]["output_size"] = 48
    in_key = {"linear": "linear1", "transformer": "linear1", "conv": "conv", "qformer": "query"}[adaptor]
    frames = "32-dim encoder frames (64 stacked / downsample 2)" if adaptor in ("linear", "transformer") else "32-dim"
    with pytest.raises(ConfigError) as err:
        build_model(section)
    message = str(err.value)
    assert f"the adaptor in {weights} takes {frames}" in message
    assert in_key in message and "the paraformer encoder built from model.encoder.conf outputs 48" in message


def test_adaptor_weights_for_another_llm_named(tiny_llm_dir, tmp_path):
    section = tiny_model_section(tiny_llm_dir, lora=False)
    adaptor = build_model(section, weights="random").adaptor
    weights = _save(
        adaptor, tmp_path / "a.safetensors", **{"linear2.weight": torch.zeros(48, 64), "linear2.bias": torch.zeros(48)}
    )
    section["adaptor"]["init_from"] = weights
    with pytest.raises(
        ConfigError,
        match=rf"adaptor in {weights} outputs 48-dim embeddings \(linear2.weight \[48, 64\]\) "
        rf"but the LLM {tiny_llm_dir} has hidden size 64",
    ):
        build_model(section)


def test_ctc_weights_for_another_encoder_named(tiny_llm_dir, tmp_path):
    section = tiny_model_section(tiny_llm_dir, lora=False, ctc_weight=0.3)
    head = build_model(section, weights="random").ctc_head
    vocab = head.proj.weight.shape[0]
    weights = _save(head, tmp_path / "ctc.safetensors", **{"proj.weight": torch.zeros(vocab, 48)})
    section["ctc"]["init_from"] = weights
    with pytest.raises(
        ConfigError,
        match=rf"CTC head in {weights} takes 48-dim encoder frames \(weight \[{vocab}, 48\]\) "
        "but the paraformer encoder built from model.encoder.conf outputs 32",
    ):
        build_model(section)


def test_streaming_chunk_settings_survive_a_rebuild_from_conf(tmp_path):
    from llmasr.models.encoder_spec import encoder_spec
    from llmasr.testing.tiny_funasr import tiny_streaming_conf

    enc_dir = write_funasr_dir(tmp_path / "s", model="ParaformerStreaming", encoder_conf=tiny_streaming_conf())
    cfg = from_dict(EncoderConfig, {"path": str(enc_dir)}, "model.encoder")
    loaded, _ = build_encoder(cfg)
    save_file({k: v.contiguous() for k, v in loaded.state_dict().items()}, tmp_path / "enc.safetensors")
    conf = encoder_spec(cfg).conf  # what an export records
    assert conf["chunk_size"] == [12, 15] and conf["input_layer"] == "pe_online"
    rebuilt, _ = build_encoder(
        from_dict(
            EncoderConfig, {"conf": conf, "init_from": str(tmp_path / "enc.safetensors"), "frontend": {"lfr_m": 7}}, "e"
        )
    )
    assert rebuilt.chunk == loaded.chunk and rebuilt.chunk.stride == (8, 10)
    # the context travels too (chunked: how FunASR runs it); a description from before the key was trained and
    # exported with full context, and rebuilds so
    assert conf["context"] == "chunked" and (loaded.context, rebuilt.context) == ("chunked", "chunked")
    xs, lens = torch.randn(2, 30, 560), torch.tensor([30, 17])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(xs, lens)[0], loaded.eval()(xs, lens)[0], rtol=0, atol=0)
    older = {k: v for k, v in conf.items() if k != "context"}
    assert build_encoder(from_dict(EncoderConfig, {"conf": older, "frontend": {"lfr_m": 7}}, "e"))[0].context == "full"


def test_a_recipe_path_reads_its_relative_paths_beside_the_recipe(tiny_llm_dir, tmp_path, monkeypatch):
    """`llmasr.build_model("recipes/X.yaml")` (the README's Python API) had read the shipped recipes'
    `../models/...` paths from the working directory, not beside the recipe as `llmasr train` reads them."""
    import yaml

    shutil.copytree(tiny_llm_dir, tmp_path / "models" / "llm")
    section = tiny_model_section("../models/llm", lora=False)
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": section, "train": {"epochs": 1}}))
    monkeypatch.chdir(tmp_path / "recipes")  # the path also reads from the working directory
    assert build_model("r.yaml").llm.config.hidden_size == 64
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    model = build_model(recipe)
    assert model.llm.config.hidden_size == 64 and model.llm.name_or_path == str(tmp_path / "models" / "llm")


def test_a_model_section_built_in_python_takes_pathlib_paths(tiny_llm_dir, tmp_path):
    """`llmasr.build_model({... "path": Path(...)})` had been refused: "model.llm.path: expected a string"."""
    from pathlib import Path

    encoder = write_funasr_dir(tmp_path / "encoder", encoder_conf=tiny_sanm_conf())
    section = tiny_model_section(Path(tiny_llm_dir), encoder_dir=encoder, lora=False)
    section["llm"]["path"], section["encoder"]["path"] = Path(tiny_llm_dir), Path(encoder)
    model = build_model(section)
    assert model.llm.name_or_path == str(tiny_llm_dir) and model.frontend.cmvn_file == str(encoder / "am.mvn")


def test_a_model_config_made_in_python_is_held_to_the_recipes_rules(tiny_llm_dir, monkeypatch):
    """A ModelConfig edited in a notebook had been built unchecked: ctc.weight 1.5 gave a model, ctc_compress without
    a head a ValueError once the LLM had loaded; anything else an AttributeError from inside the builder."""
    from llmasr.models import builder
    from llmasr.models.config import ModelConfig

    cfg = from_dict(ModelConfig, tiny_model_section(tiny_llm_dir, lora=False), "model")
    cfg.ctc.weight = 1.5
    with pytest.raises(ConfigError, match=r"^model.ctc.weight: must be in \[0, 1\], got 1.5$"):
        build_model(cfg)
    cfg.ctc.weight, cfg.adaptor.ctc_compress = 0.0, "avg"

    def no_llm(*args, **kwargs):
        raise AssertionError("the LLM loaded before the section was checked")

    monkeypatch.setattr(builder, "load_llm", no_llm)
    with pytest.raises(ConfigError, match=r"^model.adaptor.ctc_compress: 'avg' segments the audio with the CTC head"):
        build_model(cfg)
    for wrong in (None, 3, ["recipe.yaml"]):
        with pytest.raises(ConfigError, match=r"^model: expected a recipe path, its model: section \(dict\) or a Mod"):
            build_model(wrong)


def test_an_export_or_a_run_folder_given_as_the_recipe_names_the_reader_of_its_trained_weights(tmp_path):
    """`llmasr.build_model("exp/run/export")` had said only "a directory, not a recipe file"; a run's recipe.yaml
    builds the model untrained, which the error says."""
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "llmasr_model.yaml").write_text("{}")
    with pytest.raises(ConfigError, match=r"export: an exported model, not a recipe: load it trained with llmasr"):
        build_model(tmp_path / "export")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text("{}")
    with pytest.raises(ConfigError, match=r"run: a training run, not a recipe: build_model\(.*recipe.yaml'\) builds"):
        build_model(str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"empty: a directory, not a recipe file$"):
        build_model((tmp_path / "empty").mkdir() or tmp_path / "empty")
