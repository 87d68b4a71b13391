"""Tiny random-weight Whisper directory (real HF layout) and a tiny Conformer encoder_conf, for tests and demos."""

from __future__ import annotations

from pathlib import Path


def tiny_conformer_conf(input_size: int = 80) -> dict:
    """A 2-block Conformer encoder_conf (FunASR names): output 32, x4 conv2d subsampling, latest rel-pos."""
    return {
        "input_size": input_size,
        "output_size": 32,
        "attention_heads": 4,
        "linear_units": 64,
        "num_blocks": 2,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.0,
        "input_layer": "conv2d",
        "normalize_before": True,
        "rel_pos_type": "latest",
        "pos_enc_layer_type": "rel_pos",
        "selfattention_layer_type": "rel_selfattn",
        "activation_type": "swish",
        "macaron_style": True,
        "use_cnn_module": True,
        "cnn_module_kernel": 15,
    }


def write_tiny_whisper_dir(
    path: str | Path,
    *,
    n_mels: int = 80,
    d_model: int = 32,
    layers: int = 2,
    max_source_positions: int = 100,
    seed: int = 0,
) -> Path:
    """Save a tiny WhisperForConditionalGeneration (config.json, model.safetensors, generation_config.json) and
    its WhisperFeatureExtractor (preprocessor_config.json) to `path`. The encoder takes 2 * max_source_positions
    frames of 10 ms (100 positions: 2 s). Returns the directory."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    sample_rate, hop = 16000, 160
    chunk = 2 * max_source_positions * hop / sample_rate
    if chunk != int(chunk):
        raise ValueError(f"max_source_positions {max_source_positions} is not a whole number of seconds of audio")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = WhisperConfig(
        vocab_size=64,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=layers,
        encoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=2 * d_model,
        max_source_positions=max_source_positions,
        max_target_positions=32,
        pad_token_id=60,
        bos_token_id=61,
        eos_token_id=62,
        decoder_start_token_id=61,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.save_pretrained(str(path), safe_serialization=True)
    WhisperFeatureExtractor(
        feature_size=n_mels, sampling_rate=sample_rate, hop_length=hop, chunk_length=int(chunk), n_fft=400
    ).save_pretrained(str(path))
    return path
