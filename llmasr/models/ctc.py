"""CTC auxiliary head: its vocabulary (`build_ctc_tokenizer`; the kinds in llmasr.models.ctc_vocab), the projection
(with Fun-ASR-Nano's decoder layers before it when configured), the loss and greedy decoding."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmasr.config_io import ConfigError
from llmasr.errors import EVERY_RANK
from llmasr.models.adaptor_blocks import length_mask
from llmasr.models.adaptors import TransformerAdaptor
from llmasr.models.config import AdaptorConfig
from llmasr.models.ctc_config import CTCConfig, CTCDecoderConfig
from llmasr.models.ctc_seg_dict import SegDictCTCTokenizer
from llmasr.models.ctc_tiktoken import TiktokenCTCTokenizer
from llmasr.models.ctc_token_list import TokenListCTCTokenizer
from llmasr.models.ctc_vocab import (
    SEPARATOR_NAMES,
    CTCTokenizer,
    LLMCTCTokenizer,
    SentencePieceCTCTokenizer,
    ctc_collapse,
)

log = logging.getLogger(__name__)
_SEG_DICT_NOTED: set[str] = set()  # token lists whose unused seg_dict was pointed out (once a process)
_NO_SEPARATOR_NOTED: set[str] = set()  # letter lists without a word separator, pointed out (once a process)


def build_ctc_tokenizer(cfg: CTCConfig, llm_tokenizer=None, lead: str = "") -> CTCTokenizer:
    """`model.ctc` -> its CTC tokenizer (the kinds: llmasr.models.ctc_vocab), from `vocab`, with `vocab_size`
    sizing a .tiktoken vocabulary's head and `blank` naming the entry of a sentencepiece model or token list that is
    the blank. `llm_tokenizer`: the LLM's, for `vocab: llm`, with `lead` the whitespace its chat template writes
    before an answer (PromptBuilder.answer_lead)."""
    spec = cfg.vocab
    if cfg.vocab_kind == "llm":
        if llm_tokenizer is None:
            raise ConfigError("model.ctc.vocab: 'llm' needs the LLM tokenizer, none was given")
        return LLMCTCTokenizer(llm_tokenizer, lead)
    if not Path(spec).is_file():
        raise ConfigError(
            f"model.ctc.vocab: file not found: {spec} (use 'llm', a .model or .tiktoken file, or a token list)"
        )
    if cfg.vocab_kind == "sentencepiece":
        return SentencePieceCTCTokenizer(spec, cfg.blank)
    if cfg.vocab_kind == "tiktoken":
        return TiktokenCTCTokenizer(spec, cfg.vocab_size)
    if cfg.seg_dict is not None:
        return SegDictCTCTokenizer(spec, cfg.seg_dict, cfg.blank)
    beside = Path(spec).parent / "seg_dict"
    if beside.is_file() and spec not in _SEG_DICT_NOTED:
        _SEG_DICT_NOTED.add(spec)
        _NO_SEPARATOR_NOTED.add(spec)  # the seg_dict is the fix for what a letter list without a separator does too
        log.warning(
            "model.ctc.vocab %s has a seg_dict beside it, which FunASR spells this token list's text through; set "
            "model.ctc.seg_dict: %s to read it so (without it an English word outside the list is spelled in letters)",
            spec, beside, extra=EVERY_RANK,
        )  # fmt: skip
    tokenizer = TokenListCTCTokenizer(spec, cfg.blank)
    if tokenizer.sep is None and spec not in _NO_SEPARATOR_NOTED and any(_latin_letter(t) for t in tokenizer.tokens):
        _NO_SEPARATOR_NOTED.add(spec)
        log.warning(
            "model.ctc.vocab %s spells a word it does not list letter by letter and has no word separator (%s): "
            "between two such words the CTC head has no label to learn the space by, so its text runs them together "
            "('two one' reads back 'TWOONE', two errors in the CTC WER). Add '<space>' to the list "
            "(it is then put between words) if the transcripts hold such words",
            spec, ", ".join(SEPARATOR_NAMES), extra=EVERY_RANK,
        )  # fmt: skip
    return tokenizer


def _latin_letter(token: str) -> bool:
    return len(token) == 1 and token.isascii() and token.isalpha()


class CTCHead(nn.Module):
    """[decoder layers ->] dropout -> Linear(encoder_dim -> vocab_size); returns float32 log-probabilities [B, T, V].
    `decoder` (model.ctc.decoder): Fun-ASR-Nano's CTC decoder, a transformer adaptor at the encoder's width whose
    parameter names are FunASR's `ctc_decoder.*` ones. `detach_encoder` (model.ctc.detach_encoder): no gradient
    flows back into the encoder through the head."""

    def __init__(
        self,
        encoder_dim: int,
        vocab_size: int,
        dropout: float = 0.0,
        decoder: CTCDecoderConfig | None = None,
        detach_encoder: bool = False,
    ):
        super().__init__()
        self.detach_encoder = detach_encoder
        self.decoder = None
        if decoder is not None:
            if decoder.n_layer and encoder_dim % decoder.n_head:
                raise ConfigError(
                    f"model.ctc.decoder.n_head: its blocks work at the encoder width {encoder_dim}, which n_head="
                    f"{decoder.n_head} does not divide"
                )
            blocks = AdaptorConfig(type="transformer", downsample=1, ffn_dim=decoder.ffn_dim, n_layer=decoder.n_layer,
                                   n_head=decoder.n_head, dropout=decoder.dropout)  # fmt: skip
            self.decoder = TransformerAdaptor(blocks, encoder_dim, encoder_dim)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(encoder_dim, vocab_size)

    def forward(self, enc: Tensor, enc_lens: Tensor) -> Tensor:
        if self.detach_encoder:
            enc = enc.detach()
        if self.decoder is not None:
            enc = self.decoder(enc, enc_lens)[0]
        return self.proj(self.dropout(enc)).float().log_softmax(dim=-1)


def build_ctc_head(cfg: CTCConfig, encoder_dim: int, vocab_size: int) -> CTCHead:
    """The head `model.ctc` describes, over `vocab_size` outputs (its vocabulary's)."""
    return CTCHead(encoder_dim, vocab_size, decoder=cfg.decoder, detach_encoder=cfg.detach_encoder)


def validate_ctc_targets(targets: Tensor, target_lens: Tensor, vocab_size: int, blank_id: int | None = None) -> None:
    """Raise a clear error for target ids outside [0, vocab_size) or equal to the blank (padded [B, S] targets)."""
    valid = length_mask(target_lens.to(targets.device), targets.size(1))
    bad = valid & ((targets < 0) | (targets >= vocab_size))
    if blank_id is not None:
        bad |= valid & (targets == blank_id)
    if bool(bad.any()):
        b, s = (int(v) for v in bad.nonzero()[0])
        tid = int(targets[b, s])
        what = "is the blank id" if tid == blank_id else f"is outside the CTC vocabulary [0, {vocab_size})"
        raise ValueError(
            f"CTC target id {tid} at position {s} of utterance {b} in the batch {what} "
            f"(vocab_size {vocab_size}, blank {blank_id}); the CTC vocabulary and the data's token ids disagree"
        )


def ctc_loss(
    log_probs: Tensor,
    lens: Tensor,
    targets: Tensor,
    target_lens: Tensor,
    blank_id: int,
    label_smoothing: float = 0.0,
    reduction: str = "sum",
) -> Tensor:
    """CTC loss over [B, T, V] log-probs and padded [B, S] targets (zero_infinity=True).

    With label smoothing s, each utterance's loss gains s * (mean over its valid frames of -mean_v log p), a pull
    towards the uniform distribution; s = 0 gives plain CTC exactly. reduction: "sum" (over utterances), "mean"
    (over utterances) or "none" ([B]).
    """
    if reduction not in ("sum", "mean", "none"):
        raise ValueError(f"ctc_loss: reduction must be 'sum', 'mean' or 'none', got {reduction!r}")
    validate_ctc_targets(targets, target_lens, log_probs.size(-1), blank_id)
    log_probs = log_probs.float()
    per_utt = F.ctc_loss(
        log_probs.transpose(0, 1),
        targets.clamp(min=0),  # padding past target_lens (e.g. -1 or -100) is never read, but must be a valid id
        lens,
        target_lens,
        blank=blank_id,
        reduction="none",
        zero_infinity=True,
    )
    if label_smoothing > 0:
        frame_term = -log_probs.mean(dim=-1) * length_mask(lens.to(log_probs.device), log_probs.size(1))
        smooth = label_smoothing * frame_term.sum(dim=1) / lens.to(frame_term).clamp(min=1)
        # an utterance CTC has no path for teaches the head nothing, its smoothing pull included
        per_utt = per_utt + smooth.masked_fill(ctc_unalignable(lens, targets, target_lens).to(smooth.device), 0.0)
    if reduction == "sum":
        return per_utt.sum()
    if reduction == "mean":
        return per_utt.mean()
    return per_utt


def ctc_unalignable(lens: Tensor, targets: Tensor, target_lens: Tensor) -> Tensor:
    """[B] bool: utterances whose labels need more frames than the encoder gave (one per label, plus a blank between
    each pair of equal neighbours). CTC has no path for them: zero_infinity makes their loss 0, so they teach the
    head nothing, which the trainer counts instead of letting it pass unseen."""
    n = targets.size(1)
    if n == 0:
        return lens.new_zeros(lens.shape, dtype=torch.bool)
    pos = torch.arange(1, n, device=targets.device)
    repeats = ((targets[:, 1:] == targets[:, :-1]) & (pos < target_lens[:, None].to(targets.device))).sum(dim=1)
    return lens.to(targets.device) < target_lens.to(targets.device) + repeats


def ctc_greedy(log_probs: Tensor, lens: Tensor, blank_id: int) -> list[list[int]]:
    """Best path per utterance: argmax per valid frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(dim=-1).cpu()
    return [ctc_collapse(best[b, : int(n)].tolist(), blank_id) for b, n in enumerate(lens.cpu())]
