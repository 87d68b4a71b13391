import pytest
import torch

import llmasr
from llmasr.config_io import ConfigError
from llmasr.models.decoding import DecodeConfig
from llmasr.models.losses import full_logits_cross_entropy
from llmasr.testing.tiny_recipe import random_batch, tiny_model_section

TARGETS = ["zero one two", "three four", "five six seven eight", "nine"]


@pytest.fixture
def model(tiny_llm_dir):
    torch.manual_seed(0)
    return llmasr.build_model(tiny_model_section(tiny_llm_dir, ctc_weight=0.3))


@pytest.fixture
def encoder_passes(model, monkeypatch):
    """One entry for each audio embedding (the encoder's pass) `model` makes in the test."""
    ran = []
    monkeypatch.setattr(model, "_embed", lambda *a, **k: ran.append(1) or type(model)._embed(model, *a, **k))
    return ran


def test_forward_backward_trains_the_right_branches(model):
    model.train()
    out = model(random_batch(model, TARGETS))
    assert torch.isfinite(out.loss) and out.n_utts == 4
    assert int(out.n_tokens) > len(TARGETS)  # targets plus one end token each
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("encoder."))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("adaptor."))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("ctc_head."))
    lora = [n for n in grads if "lora_" in n]
    assert lora and all(grads[n] is not None for n in lora if "lora_B" in n)
    base = [n for n, p in model.llm.named_parameters() if "lora_" not in n]
    assert base and all(not p.requires_grad for n, p in model.llm.named_parameters() if "lora_" not in n)


def test_loss_equals_hf_full_logits_loss_on_the_same_inputs(model):
    model.eval()
    batch = random_batch(model, TARGETS)
    with torch.no_grad():
        out = model(batch)
        _, _, merged = model.embed_batch(batch)
        logits = model.llm(
            inputs_embeds=merged.inputs_embeds,
            attention_mask=merged.attention_mask,
            position_ids=merged.position_ids,
        ).logits
        ref = full_logits_cross_entropy(logits, merged.labels)
    assert abs(float(out.llm_loss_sum) - float(ref)) < 1e-4
    assert abs(float(out.llm_loss_sum / out.n_tokens) - float(ref / out.n_tokens)) < 1e-6


def test_batch_loss_is_sum_of_single_utterance_losses(model):
    model.eval()
    frames = [12, 15, 18, 21]
    with torch.no_grad():
        whole = model(random_batch(model, TARGETS, frames=frames, seed=3))
        parts = []
        full = random_batch(model, TARGETS, frames=frames, seed=3)
        for i in range(4):
            parts.append(model(full.select([i])))
    assert abs(float(whole.llm_loss_sum) - sum(float(p.llm_loss_sum) for p in parts)) < 1e-4
    assert abs(float(whole.ctc_loss_sum) - sum(float(p.ctc_loss_sum) for p in parts)) < 1e-4


def test_frozen_branch_stays_in_eval_mode_and_gets_no_gradient(tiny_llm_dir):
    section = tiny_model_section(tiny_llm_dir, freeze_encoder=True)
    m = llmasr.build_model(section)
    m.train()
    assert "encoder" in m.frozen_branches()
    assert not m.encoder.training and all(not mod.training for mod in m.encoder.modules())
    assert m.adaptor.training
    batch = random_batch(m, TARGETS[:2])
    # Dropout 0.1 in the tiny encoder: frozen means eval, so two passes agree exactly.
    a, _ = m.encoder(batch.feats, batch.feat_lens)
    b, _ = m.encoder(batch.feats, batch.feat_lens)
    assert torch.equal(a, b)
    m(batch).loss.backward()
    assert all(p.grad is None for p in m.encoder.parameters())


def test_a_frozen_conformer_under_lora_keeps_its_batch_norm_statistics(tiny_llm_dir):
    """encoder.freeze with encoder LoRA: the branch trains (its adaptors), but its frozen base's BatchNorm running
    statistics had moved on every forward (and were exported so); a trained BatchNorm still updates them."""
    from llmasr.testing.tiny_whisper import tiny_conformer_conf

    for freeze in (True, False):
        section = tiny_model_section(tiny_llm_dir)
        section["encoder"] = {
            "type": "conformer", "freeze": freeze, "conf": tiny_conformer_conf(80),
            "frontend": {"n_mels": 80, "lfr_m": 1, "lfr_n": 1},
            "lora": {"r": 2, "alpha": 4, "target_modules": ["linear_q", "linear_v"]},
        }  # fmt: skip
        model = llmasr.build_model(section).train()
        assert model.encoder.training and "encoder" not in model.frozen_branches()
        norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm1d)]
        before = [n.running_mean.clone() for n in norms]
        model(random_batch(model, ["zero one", "two three"], frames=[40, 64])).loss.backward()
        moved = [not torch.equal(b, n.running_mean) for b, n in zip(before, norms)]
        assert norms and moved == [not freeze] * len(norms)


def test_lora_wraps_every_named_target(model):
    import peft

    targets = [(n, mod) for n, mod in model.llm.named_modules() if n.endswith(("q_proj", "v_proj"))]
    assert targets and all(isinstance(mod, peft.tuners.lora.LoraLayer) for _, mod in targets)
    assert not any(
        isinstance(mod, peft.tuners.lora.LoraLayer)
        for n, mod in model.llm.named_modules()
        if n.endswith(("k_proj", "o_proj"))
    )


def test_lora_wraps_the_llm_without_peft_s_deprecation_noise(tiny_llm_dir):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llmasr.build_model(tiny_model_section(tiny_llm_dir))
        warnings.warn("`is_gradient_checkpointing` is deprecated, said by our own code", FutureWarning, stacklevel=1)
    said = [str(w.message) for w in caught if "is_gradient_checkpointing" in str(w.message)]
    assert said == ["`is_gradient_checkpointing` is deprecated, said by our own code"]  # only peft's call is quiet


def test_all_linear_lora_and_encoder_lora(tiny_llm_dir):
    import peft

    section = tiny_model_section(tiny_llm_dir, freeze_encoder=True)
    section["llm"]["lora"]["target_modules"] = "all-linear"
    section["encoder"]["lora"] = {"r": 2, "alpha": 4, "target_modules": ["linear_q_k_v", "linear_out"]}
    m = llmasr.build_model(section)
    lora_llm = [n for n, mod in m.llm.named_modules() if isinstance(mod, peft.tuners.lora.LoraLayer)]
    assert any(n.endswith("gate_proj") for n in lora_llm) and any(n.endswith("o_proj") for n in lora_llm)
    trainable_enc = [n for n, p in m.encoder.named_parameters() if p.requires_grad]
    assert trainable_enc and all("lora_" in n for n in trainable_enc)
    m.train()
    assert m.encoder.training  # has trainable adapters, so it is not a frozen branch


def test_batched_greedy_decoding_equals_one_by_one(model):
    model.eval()
    batch = random_batch(model, TARGETS, frames=[12, 20, 16, 9], seed=5)
    together = model.generate(batch, max_new_tokens=6)
    alone = []
    for i in range(4):
        alone += model.generate(batch.select([i]), max_new_tokens=6)
    assert together == alone


def test_gradient_checkpointing_gives_same_gradients(tiny_llm_dir):
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        section = tiny_model_section(tiny_llm_dir)
        section["llm"]["gradient_checkpointing"] = ckpt
        section["encoder"]["gradient_checkpointing"] = ckpt
        section["encoder"]["conf"]["dropout_rate"] = 0.0
        section["encoder"]["conf"]["attention_dropout_rate"] = 0.0
        section["encoder"]["conf"]["positional_dropout_rate"] = 0.0
        m = llmasr.build_model(section)
        m.train()
        m(random_batch(m, TARGETS)).loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_bad_lora_target_lists_available_modules(tiny_llm_dir):
    section = tiny_model_section(tiny_llm_dir)
    section["llm"]["lora"]["target_modules"] = ["q_proj", "qkv_proj"]
    with pytest.raises(ConfigError, match=r"\['qkv_proj'\] match no nn.Linear.*available: .*q_proj"):
        llmasr.build_model(section)


def test_a_lora_target_that_is_an_embedding_says_so(tiny_llm_dir):
    """peft can wrap nn.Embedding, so `embed_tokens` in target_modules is a fair guess: the error had only said it
    matched no nn.Linear, as a misspelt name would; it names the module it reaches, its type, and what trains it."""
    section = tiny_model_section(tiny_llm_dir)
    section["llm"]["lora"]["target_modules"] = ["q_proj", "embed_tokens"]
    with pytest.raises(ConfigError) as err:
        llmasr.build_model(section)
    said = str(err.value)
    assert "['embed_tokens'] match no nn.Linear" in said
    assert "embed_tokens -> model.embed_tokens (Embedding)" in said
    assert "LoRA wraps nn.Linear and Conv1D layers only" in said and "model.llm.freeze: false" in said


def test_missing_llm_dir_and_missing_tokenizer(tmp_path, tiny_llm_dir):
    section = tiny_model_section(tmp_path / "nope")
    with pytest.raises(ConfigError, match="LLM directory not found"):
        llmasr.build_model(section)
    (tmp_path / "no_tok").mkdir()
    (tmp_path / "no_tok" / "config.json").write_text((tiny_llm_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match="no tokenizer files"):
        llmasr.build_model(tiny_model_section(tmp_path / "no_tok"))


def test_encoder_input_size_must_match_frontend(tiny_llm_dir):
    section = tiny_model_section(tiny_llm_dir)
    section["encoder"]["conf"]["input_size"] = 80
    with pytest.raises(
        ConfigError,
        match=r"makes 560-dim features \(n_mels x lfr_m = 80 x 7\), but model.encoder.conf.input_size is 80",
    ):
        llmasr.build_model(section)


def test_pretrained_adaptor_of_another_llm_size_is_rejected_with_both_shapes(tiny_llm_dir, tmp_path):
    from safetensors.torch import save_file

    section = tiny_model_section(tiny_llm_dir)
    m = llmasr.build_model(section)
    state = {k: v.clone() for k, v in m.adaptor.state_dict().items()}
    good = tmp_path / "adaptor.safetensors"
    save_file(state, str(good))
    section["adaptor"]["init_from"] = str(good)
    m2 = llmasr.build_model(section)
    assert all(torch.equal(m2.adaptor.state_dict()[k], v) for k, v in state.items())
    key = next(k for k in state if k.endswith("weight") and state[k].shape[0] == 64)  # output rows = LLM hidden
    bad_state = dict(state)
    bad_state[key] = torch.zeros(128, *state[key].shape[1:])
    bad = tmp_path / "adaptor_big.safetensors"
    save_file(bad_state, str(bad))
    section["adaptor"]["init_from"] = str(bad)
    with pytest.raises(Exception, match=rf"{key}: checkpoint \[128, .*\] vs model \[64, "):
        llmasr.build_model(section)


def test_unknown_recipe_key_is_named(tiny_llm_dir):
    section = tiny_model_section(tiny_llm_dir)
    section["adaptor"]["downsampel"] = 2
    with pytest.raises(ConfigError, match=r"model.adaptor: unknown key\(s\) \['downsampel'\]"):
        llmasr.build_model({"model": section})


@pytest.fixture
def funasr_dir_with_ctc(tmp_path):
    from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir

    conf = tiny_sanm_conf()
    conf["input_size"] = 560
    d = write_funasr_dir(tmp_path / "paraformer", encoder_conf=conf)
    state = torch.load(d / "model.pt", weights_only=True)
    state["ctc.ctc_lo.weight"] = torch.randn(16, 32)
    state["ctc.ctc_lo.bias"] = torch.randn(16)
    torch.save(state, d / "model.pt")
    return d


def test_pretrained_encoder_and_ctc_head_from_a_funasr_directory(tiny_llm_dir, funasr_dir_with_ctc):
    section = tiny_model_section(tiny_llm_dir, encoder_dir=funasr_dir_with_ctc, ctc_weight=0.3)
    section["ctc"].update(
        vocab=str(funasr_dir_with_ctc / "tokens.json"),
        init_from=str(funasr_dir_with_ctc / "model.pt"),
        init_prefix="ctc.",
    )
    m = llmasr.build_model(section)
    saved = torch.load(funasr_dir_with_ctc / "model.pt", weights_only=True)
    assert torch.equal(m.ctc_head.proj.weight, saved["ctc.ctc_lo.weight"])
    assert torch.equal(m.encoder.state_dict()["after_norm.weight"], saved["encoder.after_norm.weight"])
    assert m.frontend.lfr_m == 7 and m.frontend.cmvn_file.endswith("am.mvn")
    out = m(random_batch(m, ["abc", "de"]))
    assert torch.isfinite(out.loss) and float(out.ctc_loss_sum) > 0


def test_ctc_head_of_another_vocabulary_fails_at_load_not_in_the_loss(tiny_llm_dir, funasr_dir_with_ctc):
    section = tiny_model_section(tiny_llm_dir, encoder_dir=funasr_dir_with_ctc, ctc_weight=0.3)
    section["ctc"].update(init_from=str(funasr_dir_with_ctc / "model.pt"), init_prefix="ctc.")  # vocab: llm
    with pytest.raises(ConfigError, match=r"has 16 outputs but the vocabulary 'llm' has 301 entries"):
        llmasr.build_model(section)


def test_whisper_encoder_from_an_hf_directory(tiny_llm_dir, tmp_path):
    from llmasr.models.config import EncoderConfig
    from llmasr.models.encoder_spec import encoder_frontend
    from llmasr.testing.tiny_whisper import write_tiny_whisper_dir

    wdir = write_tiny_whisper_dir(tmp_path / "whisper")
    section = tiny_model_section(tiny_llm_dir)
    section["encoder"] = {"type": "whisper", "path": str(wdir), "freeze": True}
    m = llmasr.build_model(section)
    assert m.frontend.kind == "whisper" and m.frontend.feature_dim == 80
    assert encoder_frontend(EncoderConfig(type="whisper", path=str(wdir))) == m.frontend
    batch = random_batch(m, TARGETS[:2], frames=[60, 90])
    out = m(batch)
    assert torch.isfinite(out.loss)
    # Whisper halves the frame rate, the linear adaptor halves it again.
    _, enc_lens, _, audio_lens = m.encode_audio(batch.feats, batch.feat_lens)
    assert enc_lens.tolist() == [30, 45] and audio_lens.tolist() == [15, 22]


def test_conformer_encoder_from_a_funasr_directory(tiny_llm_dir, tmp_path):
    from llmasr.models.config import EncoderConfig
    from llmasr.models.encoder_spec import encoder_frontend
    from llmasr.testing.tiny_funasr import write_funasr_dir
    from llmasr.testing.tiny_whisper import tiny_conformer_conf

    fe = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10, "lfr_m": 1, "lfr_n": 1}
    d = write_funasr_dir(
        tmp_path / "conformer", encoder_type="ConformerEncoder", encoder_conf=tiny_conformer_conf(80), frontend_conf=fe
    )
    section = tiny_model_section(tiny_llm_dir, encoder_dir=d)
    section["encoder"]["type"] = "conformer"
    m = llmasr.build_model(section)
    assert type(m.encoder).__name__ == "ConformerEncoder"
    assert encoder_frontend(EncoderConfig(type="conformer", path=str(d))) == m.frontend
    m.eval()
    out = m(random_batch(m, TARGETS[:2], frames=[40, 64]))
    assert torch.isfinite(out.loss)


def test_default_length_cap_follows_each_utterance_duration(model):
    model.eval()
    # An untrained model rarely emits the end token: every row runs to its own cap.
    batch = random_batch(model, TARGETS[:2], frames=[10, 40], seed=7)
    together = model.generate(batch, tokens_per_second=2.0)
    alone = []
    for i in range(2):
        alone += model.generate(batch.select([i]), tokens_per_second=2.0)
    assert together == alone


def test_transcribe_gives_generate_and_the_ctc_greedy_path_of_one_encoder_pass(model, monkeypatch):
    from llmasr.models.ctc import ctc_greedy
    from llmasr.models.decoding import DecodeConfig

    model.eval()
    batch = random_batch(model, TARGETS, frames=[12, 20, 16, 9], seed=5)
    calls = []
    encoder_forward = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda *a: calls.append(1) or encoder_forward(*a))
    got = model.transcribe(batch, DecodeConfig(max_new_tokens=5, num_beams=2))
    assert len(calls) == 1  # the CTC head reads the encoder output of the LLM pass
    monkeypatch.undo()
    assert got.llm == model.generate(batch, max_new_tokens=5, num_beams=2)
    with torch.no_grad():
        enc, lens = model.encoder(batch.feats, batch.feat_lens)
        ids = ctc_greedy(model.ctc_head(enc, lens), lens, model.ctc_tokenizer.blank_id)
    assert got.ctc == [model.ctc_tokenizer.decode(i) for i in ids] and len(got.ctc) == len(TARGETS)


def test_transcribe_without_a_ctc_head_has_no_ctc_hypotheses(tiny_llm_dir):
    torch.manual_seed(0)
    plain = llmasr.build_model(tiny_model_section(tiny_llm_dir)).eval()
    batch = random_batch(plain, TARGETS[:2])
    assert plain.ctc_head is None and plain.transcribe(batch).ctc is None


def test_batched_decoding_with_a_repetition_penalty_equals_one_by_one(model):
    """transformers' own penalty skips as many first tokens of a row as the row has left padding (its input_ids hold
    the generated tokens alone): in a batch, the shorter utterances' first tokens went unpenalised."""
    from llmasr.models.decoding import DecodeConfig

    model.eval()
    batch = random_batch(model, TARGETS, frames=[12, 60, 30, 9], seed=5)
    for beams in (1, 2):
        cfg = DecodeConfig(num_beams=beams, repetition_penalty=1.5, max_new_tokens=10, ctc_weight=0.0)
        together = model.transcribe(batch, cfg).llm
        alone = [model.transcribe(batch.select([i]), cfg).llm[0] for i in range(len(TARGETS))]
        assert together == alone, beams
        plain = DecodeConfig(num_beams=beams, max_new_tokens=10, ctc_weight=0.0)
        assert together != model.transcribe(batch, plain).llm  # the penalty acts


def test_an_llm_generation_config_max_length_does_not_warn_at_every_batch(model):
    """Llama 3 Instruct's generation_config sets max_length 4096: beside the caps (max_new_tokens) transformers
    warned at every generate call, a line a batch of a decode. The setting is the LLM's again afterwards."""
    import logging

    from llmasr.models.decoding import DecodeConfig

    model.eval()
    model.llm.generation_config.max_length = 4096
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        batch = random_batch(model, TARGETS[:2], frames=[12, 30], seed=5)
        model.transcribe(batch, DecodeConfig(max_new_tokens=5, ctc_weight=0.0))
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "max_length" in r.getMessage()]
    assert model.llm.generation_config.max_length == 4096


@pytest.mark.parametrize(
    "setting, value",
    [("ctc_weight", 1.5), ("repeat_limit", -1), ("num_beams", 0), ("tokens_per_second", -2.0), ("max_new_tokens", -1)],
)
def test_a_decode_config_built_in_python_is_checked_by_name_before_the_search(model, setting, value):
    """A DecodeConfig made in Python (the README's `model.transcribe(batch, DecodeConfig(...))`) meets no recipe's
    checks: a ctc_weight of 1.5 had weighed the LLM by -0.5 and decoded garbage, a repeat_limit of -1 or num_beams 0
    had stopped in a ZeroDivisionError, a negative tokens_per_second had decoded with a cap of its own making."""
    from llmasr.models.decoding import DecodeConfig

    batch = random_batch(model.eval(), TARGETS[:2], frames=[12, 20], seed=5)
    with pytest.raises(ConfigError, match=rf"decode\.{setting}: must be"):
        model.transcribe(batch, DecodeConfig(**{setting: value}))
    with pytest.raises(ConfigError, match=rf"decode\.{setting}: must be"):
        model.generate(batch, **{setting: value})


def test_max_new_tokens_0_built_in_python_is_the_cap_by_duration_as_a_recipe_s_and_the_flag_s(model):
    from llmasr.models.decoding import DecodeConfig

    batch = random_batch(model.eval(), TARGETS[:2], frames=[12, 20], seed=5)
    zero = DecodeConfig(max_new_tokens=0, ctc_weight=0.0)
    assert model.transcribe(batch, zero).llm == model.transcribe(batch, DecodeConfig(ctc_weight=0.0)).llm
    assert zero.max_new_tokens is None  # read as unset by the checks every search makes


def test_decoding_right_after_a_training_step_searches_the_model_without_dropout(tiny_llm_dir):
    # The README's Python API runs model(batch), loss.backward(), then model.generate / model.transcribe on a model
    # still in training mode: dropout stayed on, so "greedy" search gave another text at every call
    section = tiny_model_section(tiny_llm_dir, ctc_weight=0.3)
    section["encoder"]["conf"].update(dropout_rate=0.5, positional_dropout_rate=0.5, attention_dropout_rate=0.5)
    section["llm"]["lora"]["dropout"] = 0.5
    torch.manual_seed(0)
    model = llmasr.build_model(section)
    batch = random_batch(model, TARGETS)
    model.eval()
    want_ids = model.generate_ids(batch, max_new_tokens=6)
    want = model.transcribe(batch, DecodeConfig(max_new_tokens=6))
    model.train()
    model(batch).loss.backward()
    for seed in (1, 2):
        torch.manual_seed(seed)
        assert model.generate_ids(batch, max_new_tokens=6) == want_ids
        got = model.transcribe(batch, DecodeConfig(max_new_tokens=6))
        assert (got.llm, got.ctc) == (want.llm, want.ctc)
    # the caller's mode comes back, frozen branches kept in eval mode as model.train() keeps them
    assert model.training and model.encoder.training and model.adaptor.training
    model.eval()
    model.generate(batch, max_new_tokens=2)
    assert not model.training and not model.encoder.training


@pytest.mark.parametrize(
    "setting, value, why",
    [("num_beams", "4", "expected an integer, got '4'"), ("num_beams", 2.5, "expected an integer, got 2.5"),
     ("timestamps", "false", "expected true/false, got 'false'"), ("ctc_weight", "a", "expected a number")],
)  # fmt: skip
def test_a_decode_config_built_in_python_is_checked_for_types_by_name(model, setting, value, why):
    """The value checks alone had met a DecodeConfig made in Python: num_beams="4" stopped in a '<' TypeError,
    timestamps="false" (a true string) would have aligned."""
    from llmasr.models.decoding import DecodeConfig

    batch = random_batch(model.eval(), TARGETS[:2], frames=[12, 20], seed=5)
    with pytest.raises(ConfigError, match=rf"^decode\.{setting}: {why}"):
        model.transcribe(batch, DecodeConfig(**{setting: value}))
    assert (
        model.transcribe(batch, DecodeConfig(num_beams=2.0, max_new_tokens=3)).llm
        == model.transcribe(batch, DecodeConfig(num_beams=2, max_new_tokens=3)).llm
    )  # a whole float is the integer, as in a recipe


def test_transcribe_takes_decode_settings_as_keywords_or_a_dict_as_generate_does(model):
    """`model.transcribe(batch, num_beams=2)` had reached the LLM's generate beside the search's own num_beams (peft:
    "got multiple values for keyword argument"), a dict for the DecodeConfig an AttributeError."""
    batch = random_batch(model.eval(), TARGETS[:2], frames=[12, 20], seed=5)
    want = model.transcribe(batch, DecodeConfig(num_beams=2, max_new_tokens=3))
    for got in (
        model.transcribe(batch, num_beams=2, max_new_tokens=3),
        model.transcribe(batch, {"num_beams": 2, "max_new_tokens": 3}),
        model.transcribe(batch, DecodeConfig(num_beams=4, max_new_tokens=3), num_beams=2),  # the keyword over cfg
    ):
        assert (got.llm, got.ctc, got.mode) == (want.llm, want.ctc, want.mode)
    assert model.generate(batch, num_beams=2, max_new_tokens=3) == want.llm
    with pytest.raises(ConfigError, match=r"^decode: unknown key\(s\) \['num_beam'\]; did you mean 'num_beams'"):
        model.transcribe(batch, {"num_beam": 2})
    with pytest.raises(ConfigError, match=r"^decode: expected a DecodeConfig or a dict of its keys, got 4"):
        model.transcribe(batch, 4)


def test_a_batch_of_another_tokenizer_is_named_not_an_index_error(model):
    """A batch a loader made for a model with a larger vocabulary had stopped in torch's "index out of range in
    self" from inside the embedding (on a GPU, a device-side assert)."""
    import dataclasses

    batch = random_batch(model, TARGETS[:2], frames=[12, 20], seed=5)
    rows = model.llm.get_input_embeddings().weight.shape[0]
    ids = batch.text_ids.clone()
    ids[1, int(batch.target_start[1])] = rows + 99
    other = dataclasses.replace(batch, text_ids=ids)
    said = rf"^batch.text_ids hold token id {rows + 99}, past this model's {rows} LLM embeddings: a batch made for"
    with pytest.raises(ValueError, match=said):
        model(other)
    with pytest.raises(ValueError, match=said):
        model.generate(dataclasses.replace(other, target_start=other.text_lens))
    assert model(batch).loss.isfinite()


def test_the_token_id_check_comes_before_the_encoder_runs(model, monkeypatch):
    """Its wait for the device (on a GPU) falls where the encoder's own check of its input lengths waits: made after
    the encoder, it had held the queue between the encoder and the merge on every forward."""
    import dataclasses

    batch = random_batch(model, TARGETS[:2], frames=[12, 20], seed=5)
    ids = batch.text_ids.clone()
    ids[0, 0] = model.llm.get_input_embeddings().weight.shape[0]

    def encoder_ran(*args, **kwargs):
        raise AssertionError("the encoder ran before the token ids were checked")

    monkeypatch.setattr(model.encoder, "forward", encoder_ran)
    with pytest.raises(ValueError, match=r"^batch.text_ids hold token id"):
        model(dataclasses.replace(batch, text_ids=ids))


def test_a_batch_without_ctc_labels_is_refused_by_a_model_that_trains_a_ctc_head(model, tmp_path):
    """A loader built without ctc_tokenizer=model.ctc_tokenizer (the README's call with it left out, or another
    model's loader) had given batches whose CTC loss, over no labels, taught the head blank for every frame."""
    from llmasr.data.config import DataConfig
    from llmasr.data.loader import build_dataloader
    from llmasr.testing.run_dirs import write_corpus

    manifest = write_corpus(tmp_path, TARGETS)

    def batch(**ctc):
        args = dict(prompt_builder=model.prompt, train=True, **ctc)
        return next(iter(build_dataloader(DataConfig(num_workers=0), [manifest], model.frontend, **args)[0]))

    with pytest.raises(ValueError, match=r"^this model trains a CTC head \(model.ctc.weight 0.3\) and the batch carr"):
        model(batch())
    assert len(model.generate(batch(), max_new_tokens=2)) == len(TARGETS)  # decoding reads no labels
    assert model(batch(ctc_tokenizer=model.ctc_tokenizer)).ctc_loss_sum > 0


def test_float64_features_a_user_made_with_numpy_are_read_as_the_encoder_s_dtype(model):
    """`model(batch)` with float64 feats (numpy's default) had failed deep in the encoder with torch's "mixed dtype"
    error; they are cast to the encoder's dtype, as the trainer casts a batch to its training dtype."""
    import dataclasses

    model.eval()
    batch = random_batch(model, TARGETS[:2])
    wide = dataclasses.replace(batch, feats=batch.feats.double())
    with torch.no_grad():
        assert torch.equal(model(wide).loss, model(batch).loss)
        assert model.generate(wide, max_new_tokens=3) == model.generate(batch, max_new_tokens=3)
        assert model.encode_audio(wide.feats, wide.feat_lens)[0].dtype == torch.float32


def test_features_given_as_a_numpy_array_are_read_as_the_encoder_s_dtype(model):
    """README: `model(batch)` casts floating-point feats, "numpy's float64 too"; a numpy array itself in `feats` had
    failed with "'numpy.ndarray' object has no attribute 'is_floating_point'". It is read as the tensor it holds, and
    an integer one is refused as an integer tensor is."""
    import dataclasses

    model.eval()
    batch = random_batch(model, TARGETS[:2])
    as_numpy = dataclasses.replace(batch, feats=batch.feats.double().numpy())
    with torch.no_grad():
        assert torch.equal(model(as_numpy).loss, model(batch).loss)
        assert model.generate(as_numpy, max_new_tokens=3) == model.generate(batch, max_new_tokens=3)
    samples = dataclasses.replace(batch, feats=(batch.feats * 1000).numpy().astype("int16"))
    with pytest.raises(ValueError, match=r"batch\.feats is torch\.int16, not floating-point features"):
        model(samples)


def test_integer_features_are_refused_naming_both_dtypes(model):
    import dataclasses

    batch = random_batch(model, TARGETS[:2])
    samples = dataclasses.replace(batch, feats=(batch.feats * 1000).to(torch.int16))
    with pytest.raises(ValueError, match=r"batch\.feats is torch\.int16, not floating-point features .*the model's "
                       r"encoder computes in torch\.float32"):  # fmt: skip
        model(samples)


def test_a_misspelt_generate_keyword_is_refused_before_the_encoder_runs(model, encoder_passes):
    """`model.transcribe(batch, num_beam=4)` went on to the LLM's generate, which refused it only after the encoder
    pass, as transformers' "model_kwargs are not used by the model": it is refused first, named with the nearest
    keyword, by transformers' own reading of what generate takes. generate's own keywords still reach it."""
    batch = random_batch(model.eval(), TARGETS[:2], frames=[12, 20], seed=5)
    for call in (model.transcribe, model.generate, model.generate_ids):
        with pytest.raises(TypeError, match=r"unknown setting 'num_beam'.*; did you mean 'num_beams'\?$"):
            call(batch, num_beam=4)
    with pytest.raises(TypeError, match=r"unknown setting 'output_score'.*; did you mean 'output_scores'\?$"):
        model.transcribe(batch, output_score=True)  # a GenerationConfig field's neighbour
    assert encoder_passes == []  # refused before any work
    want = model.transcribe(batch, max_new_tokens=3).llm
    # a GenerationConfig field, a keyword of generate's own, an input of the model: transformers takes them
    assert model.transcribe(batch, max_new_tokens=3, length_penalty=1.0, synced_gpus=False, use_cache=True).llm == want


def test_generate_keywords_transformers_takes_outside_its_signature_still_reach_it(model):
    """`stop_strings` needs generate's `tokenizer=` (and assisted decoding its `assistant_tokenizer=`), which generate
    takes from its **kwargs, named by neither its signature nor GenerationConfig: the typo check refused them as
    unknown settings. They reach generate."""
    batch = random_batch(model.eval(), TARGETS[:2], frames=[12, 20], seed=5)
    want = model.transcribe(batch, max_new_tokens=3).llm
    got = model.transcribe(batch, max_new_tokens=3, stop_strings=["\x00never"], tokenizer=model.prompt.tokenizer).llm
    assert got == want
    with pytest.raises(TypeError, match=r"unknown setting 'tokeniser'.*; did you mean 'tokenizer'\?$"):
        model.transcribe(batch, tokeniser=model.prompt.tokenizer)


def test_stop_strings_given_without_a_tokenizer_apply_with_the_prompts(model):
    """generate raised at the first batch on stop strings given without `tokenizer=` ("could not locate a
    tokenizer"): the search passes the prompt's, as it does for stop strings the LLM's generation_config.json ships."""
    batch = random_batch(model.eval(), TARGETS[:2], frames=[12, 20], seed=5)
    assert (
        model.transcribe(batch, max_new_tokens=3, stop_strings=["\x00never"]).llm
        == model.transcribe(batch, max_new_tokens=3).llm
    )


@pytest.mark.parametrize("given", ["eos_token_id", "logits_processor", "output_scores", "do_sample", "attention_mask"])
def test_a_generate_keyword_the_search_sets_itself_is_refused_before_the_encoder_runs(model, encoder_passes, given):
    """generate takes eos_token_id or logits_processor, so the typo check let them by, but the search passes them
    itself: generate was called with two values for one keyword, a TypeError of Python's after the encoder pass.
    They are refused first, named with why."""
    batch = random_batch(model.eval(), TARGETS[:2], frames=[12, 20], seed=5)
    with pytest.raises(TypeError, match=rf"^transcribe: {given!r} is set by llmasr's search itself"):
        model.transcribe(batch, **{given: None})
    assert encoder_passes == []


@pytest.mark.parametrize("given", [("penalty_alpha", 0.6), ("guidance_scale", 1.5), ("prompt_lookup_num_tokens", 3)])
def test_a_generate_keyword_the_search_sets_aside_is_refused_before_the_encoder_runs(model, encoder_passes, given):
    """The search sets aside what the LLM ships of these, but a caller's reached generate, which failed after the
    encoder pass (contrastive search loaded from the Hub, guidance on input_ids the search does not pass, prompt
    lookup on one row alone). They are refused first, named with why; unset (None) they are let by."""
    key, value = given
    batch = random_batch(model.eval(), TARGETS[:2], frames=[12, 20], seed=5)
    with pytest.raises(TypeError, match=rf"^transcribe: {key}={value!r} (switches generate|is one generate cannot)"):
        model.transcribe(batch, **{key: value})
    assert encoder_passes == []
    assert model.transcribe(batch, max_new_tokens=3, **{key: None}).llm == model.transcribe(batch, max_new_tokens=3).llm
