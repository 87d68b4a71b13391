"""Checks on a FunASR model directory's whole model.pt when only its encoder is taken.

- The vocabulary: FunASR sizes a model's output layers from tokens.json and loads model.pt with
  `ignore_init_mismatch`, silently skipping an output layer of another size; fine-tuning then fails deep in the
  label-smoothing loss (`assert x.size(2) == self.size`, 320 vs 8404). Here a tokens.json whose length disagrees
  with any vocabulary-sized tensor of model.pt is an error at load, naming both numbers and both files. A
  Paraformer-streaming model.pt has no `ctc.` tensors (its decoder's output layer and embedding carry the size);
  SenseVoice has no tokens.json at all (a sentencepiece model instead), so nothing is compared there.
- The modules left out: the loader names every top-level module of model.pt it does not load (decoder,
  predictor, SeACo's bias_encoder / seaco_decoder / hotword_output_layer, SenseVoice's ctc and query `embed`, ...)
  in one log record, so nothing is dropped unsaid.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from llmasr.config_io import ConfigError
from llmasr.text_files import read_json

log = logging.getLogger(__name__)

# Tensors whose first dimension is the vocabulary size, in the model families llmasr loads encoders from.
VOCAB_ROWS = (
    "ctc.ctc_lo.weight",  # CTC head (Paraformer with ctc_weight > 0, Conformer, SenseVoice)
    "decoder.output_layer.weight",  # attention / Paraformer decoder output
    "decoder.embed.0.weight",  # decoder token embedding
    "hotword_output_layer.weight",  # SeACo-Paraformer
    "bias_embed.weight",  # SeACo / contextual Paraformer hotword embedding
)


_UNCHECKED: set[Path] = set()  # directories without tokens.json, logged


def read_token_list(path: Path) -> list:
    return read_json(path, list, "token list")


def check_vocabulary(model_dir: Path, state: dict[str, torch.Tensor], ckpt_path: Path) -> int | None:
    """Compare tokens.json (when the directory has one) with every vocabulary-sized tensor of model.pt.

    Returns the vocabulary size (None without tokens.json); raises ConfigError on the first disagreement."""
    tokens_path = model_dir / "tokens.json"
    if not tokens_path.is_file():
        if model_dir not in _UNCHECKED:  # said once: check, build and export each load the directory
            _UNCHECKED.add(model_dir)
            rows = [k for k in VOCAB_ROWS if k in state]
            log.info("%s: no tokens.json, so the vocabulary-sized tensors of %s (%s) are not compared with a token "
                     "list", model_dir, ckpt_path, ", ".join(rows) or "none here")  # fmt: skip
        return None
    size = len(read_token_list(tokens_path))
    for key in VOCAB_ROWS:
        tensor = state.get(key)
        if tensor is not None and tensor.dim() >= 1 and int(tensor.shape[0]) != size:
            raise ConfigError(
                f"{tokens_path} lists {size} tokens but {ckpt_path} has {key} of shape {list(tensor.shape)} "
                f"({int(tensor.shape[0])} rows): the token list and the checkpoint come from different models. "
                "Put the tokens.json the checkpoint was trained with beside it (FunASR would skip this layer at "
                "load and fail later inside the loss)"
            )
    return size


def log_left_out(state: dict[str, torch.Tensor], taken: tuple[str, ...], source: Path, model_name: str) -> list[str]:
    """Name, in one log record, the top-level modules of `state` outside the prefixes `taken` (the encoder's, and
    SenseVoice's query embeddings when the encoder prepends them); returns them."""
    left = sorted({key.split(".", 1)[0] for key in state if not key.startswith(taken)})
    if left:
        count = sum(1 for key in state if not key.startswith(taken))
        # the encoder's load leaves `ctc` out; the CTC head's own load (model.ctc.from_encoder, init_from) takes it
        ctc = (
            " (the CTC head reads ctc.* itself where model.ctc.from_encoder or init_from names them)"
            if "ctc" in left
            else ""
        )
        log.info(
            "%s (%s): loaded the encoder (%s) only%s; left out %d tensors of the modules %s",
            source,
            model_name,
            " and ".join(f"{t}*" for t in taken),
            ctc,
            count,
            ", ".join(left),
        )
    return left
