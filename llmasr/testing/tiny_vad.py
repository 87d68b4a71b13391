"""Write a tiny FunASR FSMN VAD directory (config.yaml, model.pt, am.mvn) in the layout of FunASR's fsmn-vad
(iic/speech_fsmn_vad_zh-cn-16k-common-pytorch): model FsmnVADStreaming, encoder FSMN, frontend WavFrontendOnline
(80 mels, LFR 5/1), FunASR's model_conf, the FSMN's tensors under `encoder.` in model.pt.

`crafted` (the default) sets one path through the network by hand so that the VAD hears loudness: a frame whose
mean log-mel (its 80 bins, of int16-scaled samples) stands `margin` above `level` is speech, one below `level`
silence (p(silence) about 0.8 against random small outputs), and speech holds over the dips between syllables (the
first block's memory averages the last 200 ms). The defaults suit llmasr.testing.tiny_corpus.syllable_bursts
(bursts near 22.8, the floor near 13.5); every other weight is small and random, so the whole network still
computes something. With `crafted=False` every weight is random (numerical parity of the network).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from llmasr.data.frontend import write_kaldi_cmvn

TINY_FSMN = {
    "input_dim": 400, "input_affine_dim": 12, "fsmn_layers": 2, "linear_dim": 16, "proj_dim": 8, "lorder": 20,
    "rorder": 0, "lstride": 1, "rstride": 0, "output_affine_dim": 12, "output_dim": 6,
}  # fmt: skip
FRONTEND = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10, "dither": 0.0,
            "lfr_m": 5, "lfr_n": 1}  # fmt: skip
# FunASR's fsmn-vad model_conf, as its config.yaml ships it
MODEL_CONF = {
    "sample_rate": 16000, "detect_mode": 1, "snr_mode": 0, "max_end_silence_time": 800,
    "max_start_silence_time": 3000, "do_start_point_detection": True, "do_end_point_detection": True,
    "window_size_ms": 200, "sil_to_speech_time_thres": 150, "speech_to_sil_time_thres": 150,
    "speech_2_noise_ratio": 1.0, "do_extend": 1, "lookback_time_start_point": 200, "lookahead_time_end_point": 100,
    "max_single_segment_time": 60000, "snr_thres": -100.0, "noise_frame_num_used_for_snr": 100,
    "decibel_thres": -100.0, "speech_noise_thres": 0.6, "fe_prior_thres": 0.0001, "silence_pdf_num": 1,
    "sil_pdf_ids": [0], "speech_noise_thresh_low": -0.1, "speech_noise_thresh_high": 0.3,
    "output_frame_probs": False, "frame_in_ms": 10, "frame_length_ms": 25,
}  # fmt: skip


def _fsmn_state(conf: dict, g: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    """Random FSMN tensors under FunASR's names (llmasr.models.fsmn_vad.FSMN's)."""
    from llmasr.models.fsmn_vad import FSMN

    net = FSMN(**conf)
    return {k: torch.randn(v.shape, generator=g) * scale for k, v in net.state_dict().items()}


def _craft(state: dict[str, torch.Tensor], conf: dict) -> None:
    """Unit 0 of every layer carries relu(4 * mean(features) + 2), the first FSMN block adds its average over the
    last `lorder` frames; output 0 (silence) is 3 - 3 * that."""

    def only(key: str, row: int, weights: torch.Tensor | float, bias: float | None = 0.0) -> None:
        state[key][row] = weights
        if bias is not None:
            state[key.replace(".weight", ".bias")][row] = bias

    dim = conf["input_dim"]
    only("in_linear1.linear.weight", 0, 1.0 / dim)
    for key in ("in_linear2.linear.weight", "out_linear1.linear.weight"):
        state[key][:, 0] = 0.0  # unit 0 reaches the next layer's unit 0 alone
    only("in_linear2.linear.weight", 0, torch.eye(conf["input_affine_dim"])[0] * 4.0, 2.0)
    for i in range(conf["fsmn_layers"]):
        block = f"fsmn.{i}."
        state[block + "linear.linear.weight"][:, 0] = 0.0
        state[block + "linear.linear.weight"][0] = torch.eye(conf["linear_dim"])[0]
        # the first block's memory averages unit 0 over its window: speech holds through the dips between syllables
        state[block + "fsmn_block.conv_left.weight"][0] = 1.0 / conf["lorder"] if i == 0 else 0.0
        state[block + "affine.linear.weight"][:, 0] = 0.0
        only(block + "affine.linear.weight", 0, torch.eye(conf["proj_dim"])[0])
    only("out_linear1.linear.weight", 0, torch.eye(conf["linear_dim"])[0])
    state["out_linear2.linear.weight"][:, 0] = 0.0
    only("out_linear2.linear.weight", 0, torch.eye(conf["output_affine_dim"])[0] * -3.0, 3.0)


def write_fsmn_vad_dir(
    model_dir: str | Path, *, level: float = 15.0, margin: float = 6.0, crafted: bool = True, seed: int = 0,
    model_conf: dict | None = None, fsmn: dict | None = None,
) -> Path:  # fmt: skip
    """Write the directory (see the module docstring); `level`, `margin`: the CMVN maps a mean log-mel of `level` to
    -0.5 and `level + margin` to +0.5 (the crafted path's speech side); `fsmn`: encoder_conf (TINY_FSMN by default,
    input_dim 400). Returns the directory."""
    fsmn = dict(TINY_FSMN if fsmn is None else fsmn)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    state = _fsmn_state(fsmn, g, scale=0.05 if crafted else 0.3)
    if crafted:
        _craft(state, fsmn)
    torch.save({f"encoder.{k}": v for k, v in state.items()}, model_dir / "model.pt")
    config = {
        "model": "FsmnVADStreaming", "model_conf": {**MODEL_CONF, **(model_conf or {})},
        "encoder": "FSMN", "encoder_conf": fsmn,
        "frontend": "WavFrontendOnline", "frontend_conf": dict(FRONTEND),
    }  # fmt: skip
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    dim = fsmn["input_dim"]
    shift = np.full(dim, -(level + margin / 2), dtype=np.float32)
    write_kaldi_cmvn(model_dir / "am.mvn", shift, np.full(dim, 1.0 / margin, dtype=np.float32))
    return model_dir


# Parity cases (tests/fixtures/make_vad_fixture.py records FunASR's segments for them): seconds of syllable bursts
# with pauses of several lengths, the VAD's weights, and FunASR's max_end_silence_time (None: its schedule).
VAD_CASES = (
    {"name": "short", "seconds": 20.0, "seed": 3, "crafted": True, "max_end_silence_ms": None},
    {"name": "fixed_silence", "seconds": 20.0, "seed": 3, "crafted": True, "max_end_silence_ms": 500},
    {"name": "three_chunks", "seconds": 150.0, "seed": 4, "crafted": True, "max_end_silence_ms": None},
    {"name": "random_weights", "seconds": 130.0, "seed": 5, "crafted": False, "max_end_silence_ms": None},
)
PAUSES_S = (0.6, 1.2, 2.5, 0.3, 3.1, 0.9)


def vad_case_audio(case: dict) -> np.ndarray:
    """The waveform of a VAD_CASES case: syllable bursts with a pause (cycling through PAUSES_S) every 4.3 s."""
    from llmasr.testing.tiny_corpus import syllable_bursts

    seconds = case["seconds"]
    starts = np.arange(1.5, seconds - 1.0, 4.3)
    gaps = [(a, a + PAUSES_S[i % len(PAUSES_S)]) for i, a in enumerate(starts)]
    return syllable_bursts(seconds, gaps=gaps, seed=case["seed"])
