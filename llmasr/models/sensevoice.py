"""SenseVoiceSmall's encoder (FunASR `SenseVoiceEncoderSmall`), state-dict compatible with FunASR.

A SAN-M stack (llmasr.models.sanm blocks) with a second stack after it:

    xs * sqrt(output_size) + sinusoidal PE (depth = input_size)
    encoders0.0       first block: input_size -> output_size, no residual around its attention
    encoders.{i}      num_blocks - 1 blocks
    after_norm
    tp_encoders.{i}   tp_blocks more blocks
    tp_norm

Differences from Paraformer's SANMEncoder, all FunASR's: every LayerNorm uses eps 1e-5 and is computed in float32
whatever the activations' dtype; blocks are always pre-norm; there is no input layer choice (the PE is always
applied). FunASR's class accepts `input_layer`, `pos_enc_class`, `normalize_before` and friends and ignores them;
so does this one, with a warning when a value would mean something else.

What the encoder needs from a SenseVoiceSmall model.pt: the `encoder.` tensors. `SenseVoiceSmall.inference`
prepends four query frames taken from `embed.weight` ([16, input_size]: language, two event/emotion slots, text
normalisation) to the features, and decodes the encoder's output with `ctc.ctc_lo`. An LLM-ASR model
(Fun-ASR-Nano) runs the encoder on the features alone, as this class does by default. With `queries` (llmasr's
constructor key beside FunASR's: `{language: auto, itn: false}`) it prepends SenseVoiceSmall's four query frames
the way its inference does (the loader takes `embed.weight` for them) and returns the frames after them: the
encoder then sees what it was trained on, and SenseVoice's own CTC head reads its output as in FunASR.
`language: per_line` gives each row its line's language (Batch.languages; "auto" for a line without one or in a
language SenseVoiceSmall has no query for) and, in training steps (SpeechLLM draws it, frozen encoder or not),
"auto" with probability `auto_rate` (FunASR's SenseVoiceSmall.encode: 0.2), so the model still runs on audio whose
language nobody states.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmasr.config_io import ConfigError
from llmasr.data.languages import language_key
from llmasr.errors import EVERY_RANK, nearest_hint
from llmasr.models.attention_kernels import key_padding_bias
from llmasr.models.sanm import (
    EncoderLayerSANM,
    MultiHeadedAttentionSANM,
    PositionwiseFeedForward,
    SinusoidalPositionEncoder,
    checked_input,
)

log = logging.getLogger(__name__)

# SenseVoiceSmall's query rows (its lid_dict, the event/emotion slots, textnorm_dict): 16 in its `embed` table.
LANGUAGES = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
EVENT_EMOTION = (1, 2)
TEXT_NORM = {True: 14, False: 15}  # withitn, woitn
QUERY_ROWS = 16


PER_LINE = "per_line"  # queries.language: each line's own language (Batch.languages), as FunASR's training reads it
AUTO_RATE = 0.2  # FunASR's SenseVoiceSmall.encode: in training a line's language query is "auto" this often


def query_ids(queries: dict) -> list[int]:
    """The four embedding rows SenseVoiceSmall prepends, in its order: language, event, emotion, text norm. With
    language per_line the first is "auto"'s, each row's own replacing it in the forward."""
    if not isinstance(queries, dict):
        raise ConfigError(f"SenseVoiceEncoderSmall: queries takes {{language, itn, auto_rate}}, got {queries!r}")
    keys = ["language", "itn", "auto_rate"]
    unknown = sorted(set(queries) - set(keys), key=str)
    if unknown:  # FunASR's generate() names them use_itn=True, textnorm="withitn"
        key = unknown[0]
        hint = "; FunASR's use_itn / textnorm is itn: true or false here" if key in ("use_itn", "textnorm") else ""
        raise ConfigError(f"SenseVoiceEncoderSmall: queries.{key} is not a key of queries (it takes "
                          f"{', '.join(keys)}){hint or nearest_hint(str(key), keys)}")  # fmt: skip
    language, itn = queries.get("language", "auto"), queries.get("itn", False)
    if language not in LANGUAGES and language != PER_LINE:
        bare = str(language).removeprefix("<|").removesuffix("|>")
        hint = f" (write {bare!r}, not FunASR's tag {language!r})" if bare in LANGUAGES else ""
        raise ConfigError(
            f"SenseVoiceEncoderSmall: queries.language {language!r} is not one of {sorted(LANGUAGES)} or "
            f"{PER_LINE!r} (each line's own){hint}"
        )
    if not isinstance(itn, bool):
        hint = {"withitn": " (FunASR's withitn is itn: true)", "woitn": " (FunASR's woitn is itn: false)"}
        bare = str(itn).removeprefix("<|").removesuffix("|>")
        raise ConfigError(f"SenseVoiceEncoderSmall: queries.itn must be true or false, got {itn!r}{hint.get(bare, '')}")
    auto_rate(queries)
    return [LANGUAGES.get(language, LANGUAGES["auto"]), *EVENT_EMOTION, TEXT_NORM[itn]]


def auto_rate(queries: dict) -> float:
    """How often training gives a line "auto" instead of its language (queries.auto_rate, language per_line only)."""
    if "auto_rate" not in queries:
        return AUTO_RATE
    rate = queries["auto_rate"]
    if queries.get("language") != PER_LINE:
        raise ConfigError(
            f"SenseVoiceEncoderSmall: queries.auto_rate {rate!r} is for language {PER_LINE!r} (each line's language, "
            f"'auto' that often in training); queries.language is {queries.get('language', 'auto')!r}"
        )
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ConfigError(f"SenseVoiceEncoderSmall: queries.auto_rate must be a number in [0, 1], got {rate!r}")
    return float(rate)


def language_query(language: str | None) -> str:
    """The query a line's language key (llmasr.data.languages.language_key) gets: its own where SenseVoiceSmall has
    one, else "auto" (no language, or one it has no query for: llmasr check names those lines)."""
    return language if language in LANGUAGES else "auto"


def asked_language(model, language, setting: str = "language") -> str | None:
    """`language` asked of every line without its own `lang` (decode --language, Transcriber's language=) as a
    language key (None for "auto": SenseVoice's own identification); ValueError naming `setting` where it is no
    language, where `model`'s encoder reads none, or where SenseVoiceSmall has no query for it: a line would run with
    "auto" whatever was asked."""
    if language is None:
        return None
    key = language_key(language) if isinstance(language, str) else None
    if key is None:
        raise ValueError(f"{setting}: a language code or name (zh, en, Japanese), got {language!r}")
    if key == "auto":  # the default, asking none: a script that always passes it runs any model
        return None
    if not model.per_line_language:
        queries = getattr(model.encoder, "query_ids", None)
        held = "" if queries is None else " (its queries.language is fixed by the recipe it was trained with)"
        raise ValueError(
            f"{setting} {language!r}: this model's encoder reads no language{held}; a SenseVoice encoder with "
            "model.encoder.conf.queries.language per_line takes one"
        )
    if key not in LANGUAGES:
        raise ValueError(
            f"{setting} {language!r}: SenseVoiceSmall has a query for {', '.join(sorted(LANGUAGES))}, not {key!r}; "
            "leave it out (or give auto) for SenseVoice's own language identification"
        )
    return key


# encoder_conf keys FunASR's class takes and never reads: (value it would mean nothing unusual with, ...).
_IGNORED: dict[str, tuple] = {
    "input_layer": ("pe", None),
    "pos_enc_class": ("SinusoidalPositionEncoder", None),
    "normalize_before": (True,),
    "concat_after": (False,),
    "positionwise_layer_type": ("linear",),
    "positionwise_conv_kernel_size": (),
    "padding_idx": (),
    "positional_dropout_rate": (),
    "stochastic_depth_rate": (0.0, 0),
    "selfattention_layer_type": ("sanm",),
}


class FP32LayerNorm(nn.LayerNorm):
    """FunASR SenseVoice's LayerNorm: eps 1e-5, normalised in float32, cast back to the input's dtype."""

    def __init__(self, size: int):
        super().__init__(size, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class SenseVoiceEncoderSmall(nn.Module):
    """SenseVoiceSmall encoder. Constructor arguments are FunASR's `encoder_conf` names (plus input_size)."""

    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        tp_blocks: int = 0,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        kernel_size: int = 11,
        sanm_shfit: int = 0,
        queries: dict | None = None,
        **ignored,
    ):
        super().__init__()
        _check_ignored(ignored)
        if num_blocks < 1 or tp_blocks < 0:
            raise ConfigError(
                f"SenseVoiceEncoderSmall: needs num_blocks >= 1, tp_blocks >= 0; got {num_blocks}, {tp_blocks}"
            )
        if input_size % 2 or input_size < 4:
            raise ConfigError(
                f"SenseVoiceEncoderSmall: the position encoding needs an even input_size, got {input_size}"
            )
        self._output_size = output_size
        self.input_size = input_size
        self.gradient_checkpointing = False
        self.embed = SinusoidalPositionEncoder()

        def block(in_size: int) -> EncoderLayerSANM:
            attn = MultiHeadedAttentionSANM(
                attention_heads, in_size, output_size, attention_dropout_rate, kernel_size, sanm_shfit
            )
            ffn = PositionwiseFeedForward(output_size, linear_units, dropout_rate)
            return EncoderLayerSANM(in_size, output_size, attn, ffn, dropout_rate, True, norm=FP32LayerNorm)

        self.encoders0 = nn.ModuleList([block(input_size)])
        self.encoders = nn.ModuleList([block(output_size) for _ in range(num_blocks - 1)])
        self.after_norm = FP32LayerNorm(output_size)
        self.tp_encoders = nn.ModuleList([block(output_size) for _ in range(tp_blocks)])
        self.tp_norm = FP32LayerNorm(output_size)
        self.query_embed = None
        if queries is not None:  # SenseVoiceSmall's `embed` table; its rows are the four query frames
            self.query_embed = nn.Embedding(QUERY_ROWS, input_size)
            self.register_buffer("query_ids", torch.tensor(query_ids(queries)), persistent=False)
        self.per_line = queries is not None and queries.get("language") == PER_LINE
        self.auto_rate = auto_rate(queries) if queries is not None else 0.0

    def output_size(self) -> int:
        return self._output_size

    def _run(self, layers: nn.ModuleList, xs, key_mask, valid):
        for layer in layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                xs = checkpoint(layer, xs, key_mask, valid, use_reentrant=False)
            else:
                xs = layer(xs, key_mask, valid)
        return xs

    @staticmethod
    def output_lengths(xs_lens: torch.Tensor) -> torch.Tensor:
        return xs_lens  # no subsampling: the frontend's LFR sets the frame rate

    def forward(
        self, xs: torch.Tensor, xs_lens: torch.Tensor, languages: list[str | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """xs [B, T, input_size], xs_lens [B] -> ([B, T, output_size], xs_lens). `languages`: each row's language
        key (None: none), read with queries.language per_line (else ignored; None there: "auto" for every row)."""
        xs_lens = checked_input("SenseVoiceEncoderSmall", xs, xs_lens, self.input_size)
        t = xs.size(1)
        n_query = 0
        if self.query_embed is not None:  # in front of every utterance, its padding stays at the end
            ids = self.query_ids.expand(xs.size(0), -1)
            if self.per_line and languages is not None:
                ids = torch.cat([self._language_ids(languages, xs.size(0)), ids[:, 1:]], dim=1)
            query = self.query_embed(ids).to(xs.dtype)
            xs = torch.cat([query, xs], dim=1)
            n_query = query.size(1)
            t += n_query
        mask = torch.arange(t, device=xs.device)[None, :] < (xs_lens + n_query)[:, None]
        key_mask = key_padding_bias(mask, xs.dtype)  # once for all blocks
        valid = mask[:, :, None].to(xs.dtype)
        xs = self.embed(xs * self.output_size() ** 0.5)
        xs = self._run(self.encoders0, xs, key_mask, valid)
        xs = self.after_norm(self._run(self.encoders, xs, key_mask, valid))
        xs = self.tp_norm(self._run(self.tp_encoders, xs, key_mask, valid))
        return xs[:, n_query:], xs_lens

    def _language_ids(self, languages: list[str | None], rows: int) -> torch.Tensor:
        """[rows, 1] query rows of the lines' languages."""
        if len(languages) != rows:
            raise ValueError(f"SenseVoiceEncoderSmall: {len(languages)} languages for a batch of {rows} rows")
        ids = [LANGUAGES[language_query(lang)] for lang in languages]
        return torch.tensor(ids, device=self.query_ids.device)[:, None]

    def training_languages(self, languages: list[str | None]) -> list[str | None]:
        """The rows' languages a training step runs with: each None ("auto") with probability auto_rate, drawn per
        row as FunASR's encode does. The model's training mode decides, not the encoder's: a frozen encoder runs in
        eval mode, and the adaptor and LLM must still learn its "auto" output, which decoding gives lines without a
        language."""
        keep = (torch.rand(len(languages)) >= self.auto_rate).tolist()
        return [lang if k else None for lang, k in zip(languages, keep)]


def _check_ignored(ignored: dict) -> None:
    for key, value in ignored.items():
        if key not in _IGNORED:
            known = sorted([*_CONSTRUCTOR_KEYS, *_IGNORED])
            raise ConfigError(
                f"SenseVoiceEncoderSmall: unknown encoder_conf key {key!r} (value {value!r})"
                f"{nearest_hint(key, known)}; supported keys: {', '.join(known)}"
            )
        usual = _IGNORED[key]
        if isinstance(value, str):
            value = value.rsplit(".", 1)[-1].rsplit(":", 1)[-1]
        if usual and value not in usual:
            log.warning(
                "SenseVoiceEncoderSmall: encoder_conf.%s=%r is ignored, as FunASR's SenseVoiceEncoderSmall ignores "
                "it (the encoder always behaves as %s=%r)",
                key,
                value,
                key,
                usual[0],
                extra=EVERY_RANK,
            )


_CONSTRUCTOR_KEYS = (
    "input_size",
    "output_size",
    "attention_heads",
    "linear_units",
    "num_blocks",
    "tp_blocks",
    "dropout_rate",
    "attention_dropout_rate",
    "kernel_size",
    "sanm_shfit",
    "queries",
)

CONF_KEYS = frozenset((*_CONSTRUCTOR_KEYS, *_IGNORED))  # what the constructor takes, or ignores as FunASR's does
