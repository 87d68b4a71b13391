"""The typed model section: values no model could be built or trained with are refused by their key at load."""

import pytest
import yaml

from llmasr.config_io import ConfigError
from llmasr.recipe import load_recipe


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.adaptor.dropout=1.5", r"model.adaptor.dropout: must be in \[0, 1\), got 1.5"),
        ("model.adaptor.ffn_dim=0", "model.adaptor.ffn_dim: must be >= 1, got 0"),
        ("model.adaptor.n_head=0", "model.adaptor.n_head: must be >= 1, got 0"),
        ("model.adaptor.n_layer=-1", "model.adaptor.n_layer: must be >= 0, got -1"),
        ("model.ctc.decoder.dropout=2", r"model.ctc.decoder.dropout: must be in \[0, 1\), got 2.0"),
        ("model.llm.lora.alpha=0", "model.llm.lora.alpha: must be positive .* at 0 they train nothing"),
        ("model.encoder.lora.alpha=-8", "model.encoder.lora.alpha: must be positive"),
        # in a list it had been a module name, refused later as matching nothing with no word of the brackets
        ("model.llm.lora.target_modules=[all-linear]", "model.llm.lora.target_modules: 'all-linear' in a list .*alone"),
    ],
)
def test_sizes_rates_and_scales_out_of_range_are_refused_by_key(override, message):
    """torch had refused a dropout of 1.5 only once the model was built, naming no key; an ffn_dim of 0 had built an
    adaptor whose output ignores the audio, and a LoRA alpha of 0 adapters that never change."""
    with pytest.raises(ConfigError, match=message):
        load_recipe(data={"model": {"llm": {"path": "llm", "lora": {}}}}, overrides=[override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.encoder.conf.dropout_rate=1.5", r"model.encoder.conf.dropout_rate: must be in \[0, 1\), got 1.5"),
        ("model.encoder.conf.attention_dropout_rate='-0.1'", r"model.encoder.conf.attention_dropout_rate: must be in"),
        ("model.encoder.conf.encoder_layerdrop=1.5", r"model.encoder.conf.encoder_layerdrop: must be in \[0, 1\)"),
    ],
)
def test_an_encoder_dropout_out_of_range_is_refused_by_key(override, message):
    """The encoder's constructor settings are typed when it is built, where torch refused the rate naming no key."""
    with pytest.raises(ConfigError, match=message):
        load_recipe(data={"model": {"llm": {"path": "llm"}}}, overrides=[override])


@pytest.mark.parametrize(
    ("section", "override", "message"),
    [
        ({}, "model.adaptor.num_queries=8", "model.adaptor.num_queries: only used by type qformer, not linear"),
        ({}, "model.adaptor.n_layer=4", "model.adaptor.n_layer: only used by type transformer or qformer, not linear"),
        ({"adaptor": {"type": "conv"}}, "model.adaptor.n_head=4", "model.adaptor.n_head: only used by .* not conv"),
        ({"adaptor": {"type": "transformer"}}, "model.adaptor.num_queries=2", "num_queries: only used by type qformer"),
        ({}, "model.adaptor.init_prefix=audio_adaptor.", "model.adaptor.init_prefix: .* init_from is not set"),
        ({}, "model.encoder.init_prefix=encoder.", "model.encoder.init_prefix: .* init_from is not set"),
        ({}, "model.ctc.init_prefix=ctc.", "model.ctc.init_prefix: .* init_from is not set"),
        ({}, "model.encoder.reinit_keys=[encoders.0.*]", "model.encoder.reinit_keys: .* loads none"),
    ],
)
def test_a_field_nothing_reads_is_refused_by_key(section, override, message):
    """A linear adaptor's n_layer, a Q-Former's num_queries on another type, a key prefix with no weights file and
    reinit_keys on an encoder that loads no weights had been accepted and changed nothing."""
    with pytest.raises(ConfigError, match=message):
        load_recipe(data={"model": {"llm": {"path": "llm"}, **section}}, overrides=[override])


def test_fields_their_settings_read_are_accepted():
    recipe = load_recipe(
        data={"model": {"llm": {"path": "llm"}}},
        overrides=["model.adaptor.type=qformer", "model.adaptor.num_queries=2", "model.adaptor.n_layer=3",
                   "model.encoder.init_from=enc.safetensors", "model.encoder.init_prefix=encoder.",
                   "model.encoder.reinit_keys=[encoders.0.*]", "model.ctc.init_from=ctc.pt",
                   "model.ctc.init_prefix=ctc."],
    )  # fmt: skip
    assert (recipe.model.adaptor.num_queries, recipe.model.encoder.init_prefix) == (2, "encoder.")


def refused_then_saved(tmp_path, model: dict, refused: str, caplog):
    """A recipe of `model` (a model section with an LLM folder) written to a file: a new run's load refuses it with
    `refused`, a saved run's loads it with warnings; (the saved load's recipe, the file)."""
    (tmp_path / "llm").mkdir()
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": {"llm": {"path": str(tmp_path / "llm")}, **model}}))
    with pytest.raises(ConfigError, match=refused):
        load_recipe(path)
    with caplog.at_level("WARNING"):
        return load_recipe(path, saved=True), path


def test_a_saved_run_with_a_model_field_nothing_reads_still_loads(tmp_path, caplog):
    """A run saved before the refusal loads with the field dropped and a warning naming it, so that it still
    resumes, exports and decodes; the defaults a saved recipe writes out load without a word."""
    model = {"adaptor": {"type": "linear", "n_layer": 4, "n_head": 8, "num_queries": 4, "init_prefix": "a."},
             "encoder": {"reinit_keys": ["encoders.0.*"]}}  # fmt: skip
    recipe, _ = refused_then_saved(tmp_path, model, "n_layer: only used by type transformer or qformer", caplog)
    assert recipe.model.adaptor.n_layer == 2 and recipe.model.encoder.reinit_keys == []
    for name in ("model.adaptor.n_layer", "model.adaptor.init_prefix", "model.encoder.reinit_keys"):
        assert f"{name}: " in caplog.text and "dropped" in caplog.text
    assert "n_head" not in caplog.text and "num_queries" not in caplog.text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.encoder.frontend.n_fft=512", "model.encoder.frontend.n_fft: a whisper frontend's setting; an fbank"),
        ("model.encoder.frontend.chunk_seconds=20", "model.encoder.frontend.chunk_seconds: a whisper frontend's"),
    ],
)
def test_a_whisper_frontend_setting_on_an_fbank_encoder_is_refused_by_key(override, message):
    """An fbank frontend's n_fft or chunk_seconds (Whisper's settings) had been accepted and left its features as
    they were (tests/data/test_frontend.py)."""
    with pytest.raises(ConfigError, match=message):
        load_recipe(data={"model": {"llm": {"path": "llm"}}}, overrides=[override])
    recipe = load_recipe(  # a Whisper encoder's frontend reads them
        data={"model": {"llm": {"path": "llm"}, "encoder": {"type": "whisper", "conf": {"d_model": 16}}}},
        overrides=[override],
    )
    assert recipe.model.encoder.frontend


def test_a_saved_run_with_an_fbank_frontend_n_fft_still_loads(tmp_path, caplog):
    """The walker over a saved recipe reaches into the encoder's frontend settings: the field is dropped and named,
    the rest kept."""
    model = {"encoder": {"frontend": {"n_fft": 512, "dither": 0.0}}}
    recipe, path = refused_then_saved(tmp_path, model, "model.encoder.frontend.n_fft: ", caplog)
    assert recipe.model.encoder.frontend == {"dither": 0.0}
    assert f"{path}: model.encoder.frontend.n_fft: a whisper frontend's setting" in caplog.text
    assert "dropped" in caplog.text


@pytest.mark.parametrize(
    ("section", "override", "message"),
    [
        ({"ctc": {"weight": 0.3, "decoder": {"n_layer": 0}}}, "model.ctc.decoder.n_head=4",
         "model.ctc.decoder.n_head: is read only by the transformer blocks, and n_layer is 0"),
        ({"ctc": {"weight": 0.3, "decoder": {"n_layer": 0}}}, "model.ctc.decoder.dropout=0.1",
         "model.ctc.decoder.dropout: is read only by the transformer blocks"),
        ({"adaptor": {"type": "transformer", "n_layer": 0}}, "model.adaptor.dropout=0.1",
         "model.adaptor.dropout: is read only by the transformer blocks, and n_layer is 0"),
        ({"adaptor": {"type": "transformer", "n_layer": 0}}, "model.adaptor.n_head=4", "model.adaptor.n_head: is read"),
    ],
)  # fmt: skip
def test_heads_and_dropout_of_no_transformer_blocks_are_refused_by_key(section, override, message):
    """A CTC decoder or a transformer adaptor with n_layer 0 is Linear - ReLU - Linear alone: its n_head and its
    dropout (applied in the blocks only) had been accepted and changed neither the outputs nor the weights."""
    import torch

    from llmasr.models.adaptors import TransformerAdaptor
    from llmasr.models.config import AdaptorConfig
    from llmasr.models.ctc import CTCHead
    from llmasr.models.ctc_config import CTCDecoderConfig

    x, lens, outs = torch.randn(2, 9, 24), torch.tensor([9, 6]), []
    for n_head, dropout in ((8, 0.0), (3, 0.5)):  # built as a recipe had built them
        torch.manual_seed(0)
        ctc = CTCHead(24, 11, decoder=CTCDecoderConfig(n_layer=0, n_head=n_head, dropout=dropout)).train()
        torch.manual_seed(0)
        cfg = AdaptorConfig(type="transformer", n_layer=0, n_head=n_head, dropout=dropout, ffn_dim=16)
        outs.append((ctc(x, lens), TransformerAdaptor(cfg, 24, 32).train()(x, lens)[0]))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    with pytest.raises(ConfigError, match=message):
        load_recipe(data={"model": {"llm": {"path": "llm"}, **section}}, overrides=[override])


def test_heads_and_dropout_of_transformer_blocks_are_accepted():
    recipe = load_recipe(
        data={"model": {"llm": {"path": "llm"}, "ctc": {"weight": 0.3}}},
        overrides=["model.adaptor.type=transformer", "model.adaptor.dropout=0.1", "model.adaptor.n_head=4",
                   "model.ctc.decoder={n_layer: 1, n_head: 4, dropout: 0.1}"],
    )  # fmt: skip
    assert (recipe.model.adaptor.n_head, recipe.model.ctc.decoder.n_head) == (4, 4)


def test_a_saved_run_with_heads_of_no_ctc_decoder_blocks_still_loads(tmp_path, caplog):
    """The walker over a saved recipe reaches the CTC decoder: the field is dropped and named, the rest kept."""
    model = {"ctc": {"weight": 0.3, "decoder": {"n_layer": 0, "n_head": 4, "ffn_dim": 32}}}
    recipe, path = refused_then_saved(tmp_path, model, "model.ctc.decoder.n_head: ", caplog)
    assert (recipe.model.ctc.decoder.n_head, recipe.model.ctc.decoder.ffn_dim) == (8, 32)
    assert f"{path}: model.ctc.decoder.n_head: is read only by the transformer blocks" in caplog.text


@pytest.mark.parametrize("branch", ["llm", "encoder"])
@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r".*layers\.(1[4-9]|2[0-7]\.self_attn\.q_proj",
         r"'\.\*layers\\\.\(1\[4-9\]\|2\[0-7\]\\\.self_attn\\\.q_proj' is not a regular expression: missing \), "
         "unterminated subpattern at position 10"),
        ("*q_proj", r"'\*q_proj' is not a regular expression: nothing to repeat at position 0"),
        ("All-Linear", "write all-linear in lower case, got 'All-Linear'"),
        ("", "an empty regular expression matches no module"),
    ],
)  # fmt: skip
def test_a_target_modules_string_re_cannot_read_is_refused_by_key(branch, pattern, message):
    """A string other than all-linear is a regular expression, as peft reads it; one re cannot compile is refused
    naming the key, re's error and its position, not by peft's traceback once the weights are loaded."""
    section = {"llm": {"path": "llm", "lora": {}}, "encoder": {"lora": {}}}
    section[branch]["lora"]["target_modules"] = pattern
    with pytest.raises(ConfigError, match=rf"model\.{branch}\.lora\.target_modules: {message}"):
        load_recipe(data={"model": section})


def test_a_target_modules_regex_is_accepted_from_yaml_and_an_override():
    """Speech recipes put LoRA on some layers alone with a pattern over whole module names; it had been refused as
    "a list of module names or 'all-linear'"."""
    pattern = r".*layers\.(1[4-9]|2[0-7])\.self_attn\.(q_proj|v_proj)"
    text = "model:\n  llm:\n    path: llm\n    lora:\n      target_modules: '" + pattern + "'\n"
    assert load_recipe(data=yaml.safe_load(text)).model.llm.lora.target_modules == pattern
    got = load_recipe(data={"model": {"llm": {"path": "llm", "lora": {}}}},
                      overrides=[f"model.llm.lora.target_modules={pattern}"])  # fmt: skip
    assert got.model.llm.lora.target_modules == pattern
