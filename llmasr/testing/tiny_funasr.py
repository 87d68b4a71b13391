"""Write a tiny FunASR model directory (config.yaml, model.pt, am.mvn, tokens.json) with random weights.

The files follow the layout of a real Paraformer directory: config.yaml with `encoder`/`encoder_conf`/
`frontend`/`frontend_conf` (plus decoder and predictor sections the encoder loader ignores), model.pt holding
the whole model's state dict (encoder tensors under `encoder.`, a few decoder/predictor tensors beside them),
am.mvn in Kaldi nnet text format and tokens.json as a JSON list of tokens.
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


def write_funasr_dir(
    model_dir: str | Path,
    *,
    encoder_type: str = "SANMEncoder",
    encoder_conf: dict,
    frontend_conf: dict | None = None,
    seed: int = 0,
    nest_under: str | None = None,
    cmvn: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Build `encoder_type` with seeded random weights and write a FunASR model directory for it.

    `nest_under` ("state_dict", "model_state_dict" or "model") wraps the state dict the way training
    checkpoints do. `cmvn` is (add_shift, rescale), each [n_mels * lfr_m]; random by default.
    Returns the directory.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    frontend_conf = dict(paraformer_frontend_conf() if frontend_conf is None else frontend_conf)
    feature_dim = int(frontend_conf.get("n_mels", 80)) * int(frontend_conf.get("lfr_m", 1))

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder = build_encoder(encoder_type, encoder_conf, feature_dim)
    _randomise(encoder, generator)

    out = int(encoder.output_size())
    vocab = 16
    tokens = ["<blank>", "<s>", "</s>", *[chr(ord("a") + i) for i in range(vocab - 4)], "<unk>"]
    config = {
        "model": "Paraformer",
        "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True},
        "encoder": encoder_type,
        "encoder_conf": dict(encoder_conf),
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {"attention_heads": 4, "linear_units": 64, "num_blocks": 1, "kernel_size": 11},
        "predictor": "CifPredictorV2",
        "predictor_conf": {"idim": out, "threshold": 1.0, "l_order": 1, "r_order": 1},
        "frontend": "WavFrontend",
        "frontend_conf": frontend_conf,
        "specaug": "SpecAugLFR",
        "specaug_conf": {"lfr_rate": int(frontend_conf.get("lfr_n", 1)), "num_freq_mask": 1, "num_time_mask": 1},
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "normalize": None,
    }
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    state = {f"encoder.{k}": v.detach().clone() for k, v in encoder.state_dict().items()}
    # Tensors a real Paraformer model.pt carries beside the encoder; the encoder loader must ignore them.
    state["decoder.embed.0.weight"] = torch.randn(vocab, out, generator=generator)
    state["decoder.output_layer.weight"] = torch.randn(vocab, out, generator=generator)
    state["decoder.output_layer.bias"] = torch.zeros(vocab)
    state["predictor.cif_conv1d.weight"] = torch.randn(out, out, 3, generator=generator)
    state["predictor.cif_output.weight"] = torch.randn(1, out, generator=generator)
    state["predictor.cif_output.bias"] = torch.zeros(1)
    torch.save({nest_under: state} if nest_under else state, model_dir / "model.pt")

    if cmvn is None:
        rng = np.random.default_rng(seed)
        cmvn = (
            rng.normal(-8.0, 2.0, feature_dim).astype(np.float32),
            rng.uniform(0.2, 0.5, feature_dim).astype(np.float32),
        )
    write_kaldi_cmvn(model_dir / "am.mvn", *cmvn)
    (model_dir / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False, indent=4))
    return model_dir
