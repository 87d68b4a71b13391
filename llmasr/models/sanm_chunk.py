"""The chunk settings of Paraformer-streaming's SAN-M encoder (FunASR `SANMEncoderChunkOpt`), kept for streaming.

FunASR's SANMEncoderChunkOpt is SANMEncoder with the same parameters plus chunk masks: training picks one of
several chunk configurations per batch (`chunk_size[i]`, `stride[i]`, `pad_left[i]` and the look-back factors of
the same index), inference runs chunk by chunk. llmasr runs the encoder with full context (no chunk masks), which
is exactly SANMEncoder on the same weights; these settings ride along on the encoder (and through export) so a
later streaming mode has them. They are validated here the way FunASR's `overlap_chunk` reads them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llmasr.config_io import ConfigError

CHUNK_KEYS = ("chunk_size", "stride", "pad_left", "encoder_att_look_back_factor", "decoder_att_look_back_factor")


def _ints(name: str, value: Any) -> tuple[int, ...]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ConfigError(f"SANMEncoderChunkOpt: encoder_conf.{name} must be an int or a list of ints, got {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class ChunkSettings:
    """One entry per chunk configuration (index i of every field belongs together)."""

    chunk_size: tuple[int, ...]
    stride: tuple[int, ...]
    pad_left: tuple[int, ...]
    encoder_att_look_back_factor: tuple[int, ...]
    decoder_att_look_back_factor: tuple[int, ...]

    @classmethod
    def from_conf(cls, conf: dict[str, Any]) -> ChunkSettings:
        """From encoder_conf values; FunASR's defaults fill absent keys, and pad_left and the look-back factors
        given for fewer configurations than chunk_size repeat their first value (as FunASR's overlap_chunk does)."""
        defaults = {"chunk_size": (16,), "stride": (10,), "pad_left": (0,)}
        values = {k: _ints(k, conf.get(k, defaults.get(k, (1,)))) for k in CHUNK_KEYS}
        n = len(values["chunk_size"])
        if len(values["stride"]) != n:
            raise ConfigError(
                f"SANMEncoderChunkOpt: encoder_conf.stride has {len(values['stride'])} values but chunk_size has {n} "
                f"(stride {list(values['stride'])}, chunk_size {list(values['chunk_size'])})"
            )
        for key in CHUNK_KEYS[2:]:
            if len(values[key]) < n:
                values[key] = values[key][:1] * n
            elif len(values[key]) > n:
                raise ConfigError(
                    f"SANMEncoderChunkOpt: encoder_conf.{key} has {len(values[key])} values but chunk_size has {n}"
                )
        for size, step, left in zip(values["chunk_size"], values["stride"], values["pad_left"]):
            if not 0 < step <= size or left < 0:
                raise ConfigError(
                    f"SANMEncoderChunkOpt: chunk configuration chunk_size {size}, stride {step}, pad_left {left} is "
                    "not valid (needs 0 < stride <= chunk_size and pad_left >= 0)"
                )
        return cls(**values)

    def to_conf(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}
