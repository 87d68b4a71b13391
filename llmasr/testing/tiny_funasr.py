"""Write a tiny FunASR model directory (config.yaml, model.pt, am.mvn, tokens.json, configuration.json, seg_dict)
with random weights.

The files follow the layout of the real directories of each model family (`model` below) as the ModelScope zoo
ships them: config.yaml with `model`/`encoder`/`encoder_conf`/`frontend`/`frontend_conf` (plus the sections of the
modules the encoder loader leaves out), model.pt holding the whole model's state dict (encoder tensors under
`encoder.`, the other modules' tensors under their real names beside them), am.mvn in Kaldi nnet text format,
tokens.json as a JSON list and configuration.json, whose file_path_metas map init_param, config, the CMVN file and
the tokenizer's files. The Paraformer family's CharTokenizer reads its token list through a seg_dict beside it
(configuration.json's tokenizer_conf.seg_dict_file), as Paraformer-large's vocab8404 directories have one; a
directory of another encoder (`encoder_type`: a Conformer aishell model's) has none.
`zoo_metas=False` leaves configuration.json and seg_dict out, for tests of a directory without them.

    Paraformer             SANMEncoder; decoder + CIF predictor tensors
    ParaformerStreaming    SANMEncoderChunkOpt (input_layer pe_online, chunk settings), WavFrontendOnline; no ctc.
    SeacoParaformer        SANMEncoder; + bias_encoder (LSTM), bias_embed, seaco_decoder, hotword_output_layer
    ContextualParaformer   SANMEncoder; + bias_encoder (LSTM), bias_embed, the decoder's bias_decoder
    SenseVoiceSmall        SenseVoiceEncoderSmall (tp_encoders); ctc.ctc_lo and the query `embed`; no tokens.json,
                           configuration.json maps frontend_conf.cmvn_file to am.mvn and tokenizer_conf.bpemodel
                           to its sentencepiece model (config.yaml says null for both); that model
                           (SENSEVOICE_BPE, `<unk>` at 0, the CTC head's blank), trained on the tiny corpus'
                           words, sizes ctc.ctc_lo

copy_model_dir, edit_config_yaml, rewrite_model_pt, as_deepspeed_checkpoint and as_funasr_0x change a written
directory, for tests of what loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from llmasr.data.frontend import write_kaldi_cmvn


def tiny_sanm_conf() -> dict:
    """A 2-block SAN-M encoder_conf (FunASR names) for the default 80-mel, LFR 7/6 frontend (input 560)."""
    return {
        "output_size": 32,
        "attention_heads": 4,
        "linear_units": 64,
        "num_blocks": 2,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1,
        "input_layer": "pe",
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "kernel_size": 11,
        "sanm_shfit": 0,
        "selfattention_layer_type": "sanm",
    }


def tiny_streaming_conf() -> dict:
    """tiny_sanm_conf as Paraformer-streaming's SANMEncoderChunkOpt states it (pe_online, two chunk configurations)."""
    return {
        **tiny_sanm_conf(),
        "input_layer": "pe_online",
        "chunk_size": [12, 15],
        "stride": [8, 10],
        "pad_left": [0, 0],
        "encoder_att_look_back_factor": [4, 4],
        "decoder_att_look_back_factor": [1, 1],
    }


def tiny_sensevoice_conf() -> dict:
    """A 2 + 1 block SenseVoiceEncoderSmall encoder_conf (FunASR names, as SenseVoiceSmall's config.yaml lists)."""
    return {**tiny_sanm_conf(), "tp_blocks": 1}


def paraformer_frontend_conf() -> dict:
    """Paraformer-large's WavFrontend settings, as its config.yaml states them."""
    return {
        "fs": 16000,
        "window": "hamming",
        "n_mels": 80,
        "frame_length": 25,
        "frame_shift": 10,
        "lfr_m": 7,
        "lfr_n": 6,
    }


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every tensor (LayerNorm weights included) distinct random values so that mix-ups show."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("weight") and param.dim() == 1:  # norms: around 1
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            elif param.dim() == 1:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)


def build_encoder(encoder_type: str, encoder_conf: dict, input_size: int) -> torch.nn.Module:
    from llmasr.models.encoders import funasr_entry

    return funasr_entry(encoder_type, "encoder_type").construct({"input_size": input_size, **encoder_conf})


MODELS = {  # model -> (encoder class, frontend class)
    "Paraformer": ("SANMEncoder", "WavFrontend"),
    "ParaformerStreaming": ("SANMEncoderChunkOpt", "WavFrontendOnline"),
    "SeacoParaformer": ("SANMEncoder", "WavFrontend"),
    "ContextualParaformer": ("SANMEncoder", "WavFrontend"),
    "SenseVoiceSmall": ("SenseVoiceEncoderSmall", "WavFrontend"),
}
_VOCAB = 16
SENSEVOICE_BPE = "chn_jpn_yue_eng_ko_spectok.bpe.model"  # the name in SenseVoiceSmall's directory
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # tiny_corpus.WORDS
_INNER = 8  # SeACo / contextual hotword dimension (inner_dim)


def write_funasr_dir(
    model_dir: str | Path,
    *,
    model: str = "Paraformer",
    encoder_type: str | None = None,
    encoder_conf: dict,
    frontend_conf: dict | None = None,
    seed: int = 0,
    nest_under: str | None = None,
    cmvn: tuple[np.ndarray, np.ndarray] | None = None,
    encoder_state: dict[str, torch.Tensor] | None = None,
    zoo_metas: bool = True,
) -> Path:
    """Build the encoder of `model` (or `encoder_type`) with seeded random weights, or `encoder_state`, and write
    a FunASR model directory of that family for it.

    `nest_under` ("state_dict", "model_state_dict" or "model") wraps the state dict the way training
    checkpoints do. `cmvn` is (add_shift, rescale), each [n_mels * lfr_m]; random by default. `zoo_metas=False`
    writes no configuration.json and no seg_dict. Returns the directory.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    default_encoder, frontend_type = MODELS[model]
    encoder_type = encoder_type or default_encoder
    frontend_conf = dict(paraformer_frontend_conf() if frontend_conf is None else frontend_conf)
    feature_dim = int(frontend_conf.get("n_mels", 80)) * int(frontend_conf.get("lfr_m", 1))

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder = build_encoder(encoder_type, encoder_conf, feature_dim)
    _randomise(encoder, generator)
    if encoder_state is not None:
        encoder.load_state_dict(encoder_state, strict=True)
    out = int(encoder.output_size())

    config = _config(model, encoder_type, encoder_conf, frontend_type, frontend_conf, out)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    state = {f"encoder.{k}": v.detach().clone() for k, v in encoder.state_dict().items()}
    # Tensors a real model.pt of this family carries beside the encoder; the encoder loader leaves them out.
    vocab = _write_bpe(model_dir / SENSEVOICE_BPE) if model == "SenseVoiceSmall" else _VOCAB
    state.update(_other_modules(model, out, feature_dim, generator, vocab))
    torch.save({nest_under: state} if nest_under else state, model_dir / "model.pt")

    if cmvn is None:
        rng = np.random.default_rng(seed)
        cmvn = (
            rng.normal(-8.0, 2.0, feature_dim).astype(np.float32),
            rng.uniform(0.2, 0.5, feature_dim).astype(np.float32),
        )
    write_kaldi_cmvn(model_dir / "am.mvn", *cmvn)
    if model == "SenseVoiceSmall":
        tokenizer_files = {"bpemodel": SENSEVOICE_BPE}
    else:
        tokenizer_files = {"token_list": "tokens.json"}
        tokens = ["<blank>", "<s>", "</s>", *[chr(ord("a") + i) for i in range(_VOCAB - 4)], "<unk>"]
        (model_dir / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False, indent=4), encoding="utf-8")
        if zoo_metas and encoder_type == default_encoder:  # the family's vocab8404 list; a Conformer's has none
            tokenizer_files["seg_dict_file"] = "seg_dict"
            _write_seg_dict(model_dir / "seg_dict", tokens)
    if zoo_metas:
        metas = {"init_param": "model.pt", "config": "config.yaml", "tokenizer_conf": tokenizer_files,
                 "frontend_conf": {"cmvn_file": "am.mvn"}}  # fmt: skip
        configuration = {"framework": "pytorch", "task": "auto-speech-recognition", "file_path_metas": metas}
        (model_dir / "configuration.json").write_text(json.dumps(configuration, indent=2), encoding="utf-8")
    return model_dir


def _write_seg_dict(path: Path, tokens: list[str]) -> None:
    """A seg_dict as Paraformer-large's spells the characters of its token list: each entry (but <blank>, <s>, </s>
    and <unk>) by itself."""
    path.write_text("".join(f"{t} {t}\n" for t in tokens[3:-1]), encoding="utf-8")


def _config(model: str, encoder_type: str, encoder_conf: dict, frontend: str, frontend_conf: dict, out: int) -> dict:
    config = {
        "model": model,
        "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True},
        "encoder": encoder_type,
        "encoder_conf": dict(encoder_conf),
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {"attention_heads": 4, "linear_units": 64, "num_blocks": 1, "kernel_size": 11},
        "predictor": "CifPredictorV2",
        "predictor_conf": {"idim": out, "threshold": 1.0, "l_order": 1, "r_order": 1},
        "frontend": frontend,
        "frontend_conf": frontend_conf,
        "specaug": "SpecAugLFR",
        "specaug_conf": {"lfr_rate": int(frontend_conf.get("lfr_n", 1)), "num_freq_mask": 1, "num_time_mask": 1},
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "normalize": None,
    }
    if model in ("SeacoParaformer", "ContextualParaformer"):
        config["model_conf"].update(inner_dim=_INNER, bias_encoder_type="lstm", NO_BIAS=_VOCAB - 2)
    if model == "SeacoParaformer":
        config.update(predictor="CifPredictorV3", seaco_decoder="ParaformerSANMDecoder")
        config["seaco_decoder_conf"] = {"attention_heads": 2, "linear_units": 16, "num_blocks": 1}
    if model == "ContextualParaformer":
        config["decoder"] = "ContextualParaformerDecoder"
    if model == "SenseVoiceSmall":
        for key in ("decoder", "decoder_conf", "predictor", "predictor_conf"):
            config.pop(key)
        config["model_conf"] = {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1}
        config["tokenizer"] = "SentencepiecesTokenizer"
        # as in SenseVoiceSmall's directory: configuration.json names the sentencepiece model, config.yaml says null
        config["tokenizer_conf"] = {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True}
        config["frontend_conf"] = {**frontend_conf, "cmvn_file": None}
    return config


def _write_bpe(path: Path) -> int:
    """A sentencepiece BPE model over the tiny corpus' words (ids 0-2: <unk>, <s>, </s>); returns its size."""
    import sentencepiece as spm

    sentences = [" ".join(_WORDS[i:] + _WORDS[:i]) for i in range(len(_WORDS))] * 4
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_prefix=str(path.with_suffix("")),
                                   vocab_size=40, model_type="bpe", hard_vocab_limit=False, minloglevel=2)  # fmt: skip
    path.with_suffix(".vocab").unlink()
    return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()


def _other_modules(model: str, out: int, feature_dim: int, g: torch.Generator, vocab: int) -> dict[str, torch.Tensor]:
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    if model == "SenseVoiceSmall":
        # ctc head over the sentencepiece vocabulary, and the 16 query embeddings (language, event, emotion, ITN)
        return {
            "ctc.ctc_lo.weight": rand(vocab, out),
            "ctc.ctc_lo.bias": torch.zeros(vocab),
            "embed.weight": rand(16, feature_dim),
        }
    state = {
        "decoder.embed.0.weight": rand(_VOCAB, out),
        "decoder.output_layer.weight": rand(_VOCAB, out),
        "decoder.output_layer.bias": torch.zeros(_VOCAB),
        "predictor.cif_conv1d.weight": rand(out, out, 3),
        "predictor.cif_output.weight": rand(1, out),
        "predictor.cif_output.bias": torch.zeros(1),
    }
    if model in ("SeacoParaformer", "ContextualParaformer"):
        for name, shape in (("weight_ih_l0", (4 * _INNER, _INNER)), ("weight_hh_l0", (4 * _INNER, _INNER))):
            state[f"bias_encoder.{name}"] = rand(*shape)
        state["bias_encoder.bias_ih_l0"] = torch.zeros(4 * _INNER)
        state["bias_encoder.bias_hh_l0"] = torch.zeros(4 * _INNER)
        state["bias_embed.weight"] = rand(_VOCAB, _INNER)
    if model == "SeacoParaformer":
        state["seaco_decoder.decoders.0.feed_forward.w_1.weight"] = rand(16, _INNER)
        state["seaco_decoder.after_norm.weight"] = torch.ones(_INNER)
        state["hotword_output_layer.weight"] = rand(_VOCAB, _INNER)
        state["hotword_output_layer.bias"] = torch.zeros(_VOCAB)
    if model == "ContextualParaformer":
        state["decoder.bias_decoder.src_attn.linear_q.weight"] = rand(out, out)
        state["decoder.bias_output.weight"] = rand(out, 2 * out, 1)
    return state


# ---------------------------------------------------------------------------------- editing a written directory


def copy_model_dir(src, dst):
    """The files of directory `src` copied into a new directory `dst`."""
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def edit_config_yaml(model_dir, fn):
    """config.yaml of `model_dir` rewritten with `fn` applied to its contents (a dict, changed in place)."""
    path = model_dir / "config.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    fn(data)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


def rewrite_model_pt(d, fn):
    """model.pt of directory `d` rewritten with `fn` applied to its state dict (changed in place)."""
    state = torch.load(d / "model.pt", weights_only=True)
    fn(state)
    torch.save(state, d / "model.pt")


def as_deepspeed_checkpoint(d, stage: int = 2):
    """Directory `d`'s model.pt replaced by what FunASR's DeepSpeed trainer leaves in its output_dir: a real
    DeepSpeed engine's save_checkpoint(d, tag="model.pt") of the same tensors under ZeRO `stage` (a folder holding
    mp_rank_00_model_states.pt, or ZeRO-3's zero_pp_rank_0_* placeholders; llmasr.testing.tiny_deepspeed). Returns
    the folder."""
    from llmasr.testing.tiny_deepspeed import deepspeed_save

    weights = d / "model.pt"
    held = d / ".model.pt.plain"
    weights.rename(held)
    try:
        return deepspeed_save(held, d, "model.pt", stage)
    finally:
        held.unlink()


def as_funasr_0x(d):
    """Directory `d` rewritten as a FunASR 0.x revision of it: config.yaml naming classes by 0.x registry keys
    (encoders.FUNASR_0X_NAMES), the weights (the same state dict) in model.pb, and a configuration.json of the
    ModelScope pipeline (`model.am_model_name`, `model.model_config.mvn_file`) with no file_path_metas."""
    from llmasr.models.encoders import FUNASR_0X_NAMES

    names = {key: {new: old for old, new in named.items()} for key, named in FUNASR_0X_NAMES.items()}
    edit_config_yaml(d, lambda c: c.update({k: names[k].get(c.get(k), c.get(k)) for k in names if k in c}))
    (d / "model.pt").rename(d / "model.pb")
    model_config = {"type": "pytorch", "code_base": "funasr", "mode": "paraformer", "lang": "zh-cn",
                    "am_model_config": "config.yaml", "mvn_file": "am.mvn"}  # fmt: skip
    model = {"type": "generic-asr", "am_model_name": "model.pb", "model_config": model_config}
    configuration = {"framework": "pytorch", "task": "auto-speech-recognition", "model": model,
                     "pipeline": {"type": "asr-inference"}}  # fmt: skip
    (d / "configuration.json").write_text(json.dumps(configuration, indent=4), encoding="utf-8")
    return d


def finetuned_output_dir(pretrained, out):
    """`out` laid out as FunASR's trainer leaves its output_dir after fine-tuning from directory `pretrained`:
    model.pt (the trainer's checkpoint, weights under state_dict), the pretrained configuration.json copied where
    there is one (funasr.utils.misc.prepare_model_dir) and config.yaml holding the run's settings, in which the files
    FunASR's download_model took from the pretrained directory (those its configuration.json maps, else the CMVN file,
    token list, seg_dict and bpe.model beside config.yaml) are named by full path; no file of its own beside them."""
    pretrained = Path(pretrained).resolve()
    out.mkdir()
    state = torch.load(pretrained / "model.pt", weights_only=True)
    torch.save({"epoch": 1, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, out / "model.pt")
    config = yaml.safe_load((pretrained / "config.yaml").read_text(encoding="utf-8"))
    if (pretrained / "configuration.json").is_file():
        (out / "configuration.json").write_bytes((pretrained / "configuration.json").read_bytes())
        metas = json.loads((pretrained / "configuration.json").read_text(encoding="utf-8"))["file_path_metas"]
    else:
        tokenizer = {"token_list": "tokens.json", "seg_dict": "seg_dict", "bpemodel": "bpe.model"}
        metas = {"init_param": "model.pt", "frontend_conf": {"cmvn_file": "am.mvn"}, "tokenizer_conf": tokenizer}
    _root_paths(pretrained, metas, config)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return out


def _root_paths(model_dir: Path, metas: dict, config: dict) -> None:
    """funasr.download.download_model_from_hub.add_file_root_path: each file `metas` names that `model_dir` holds,
    into `config` at the same keys by full path."""
    for key, value in metas.items():
        if isinstance(value, dict):
            if not isinstance(config.get(key), dict):
                config[key] = {}
            _root_paths(model_dir, value, config[key])
        elif isinstance(value, str) and (model_dir / value).exists():
            config[key] = str(model_dir / value)
