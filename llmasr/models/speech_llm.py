"""SpeechLLM: audio encoder -> adaptor -> causal LM, with an optional CTC head on the encoder.

The batch it consumes is what llmasr.data.collate produces: padded features and lengths, per-utterance prompt
token ids with the audio position and the target start (from models.prompt.PromptBuilder), and CTC targets.
The number of audio tokens per utterance comes from the encoder and adaptor at run time, never from a formula on
the data side.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from llmasr.data.batch import Batch
from llmasr.data.device_features import DeviceFeatures
from llmasr.data.frontend import FrontendConfig
from llmasr.models.ctc import ctc_greedy, ctc_loss, ctc_unalignable
from llmasr.models.ctc_align import align_words
from llmasr.models.ctc_compress import ctc_compress
from llmasr.models.ctc_gate import heard_rows
from llmasr.models.ctc_vocab import LLMCTCTokenizer
from llmasr.models.decoding import DecodeConfig, Transcripts, search_config
from llmasr.models.insert_audio import merge_audio_into_text
from llmasr.models.llm import base_lm, causal_lm_parts, logit_transform
from llmasr.models.llm_search import gated_search, refuse_unknown_generate
from llmasr.models.losses import group_rows, labels_only_cross_entropy
from llmasr.models.prompt import PromptBuilder
from llmasr.models.router_aux import router_aux

BRANCHES = ("encoder", "adaptor", "ctc_head", "llm")


def _decoding(method):
    """A search runs the model as decoding runs it, without dropout, in whatever mode the caller left it (the README's
    Python API decodes right after a training step), and gives the caller's mode back."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        was_training = self.training
        if was_training:
            self.eval()
        try:
            with torch.no_grad():
                return method(self, *args, **kwargs)
        finally:
            if was_training:
                self.train(True)  # frozen branches back in eval mode, as train() leaves them

    return run


def _check_token_ids(text_ids: torch.Tensor, rows: int | None) -> None:
    """Ids past the LLM's embedding rows come from another tokenizer (a batch another model's loader made): named,
    not torch's "index out of range in self" (on a GPU, a device-side assert that ends the process). Made before the
    encoder is queued, its wait is for the batch's copy alone (SAN-M's and SenseVoice's check of their input lengths
    waits there too); after it, the wait had held the queue between the encoder and the merge."""
    if rows is not None and text_ids.numel() and bool(((text_ids < 0) | (text_ids >= rows)).any()):
        raise ValueError(
            f"batch.text_ids hold token id {int(text_ids.max())}, past this model's {rows} LLM embeddings: a batch "
            "made for another model (another tokenizer)? build its loader with this model's "
            "prompt_builder=model.prompt and ctc_tokenizer=model.ctc_tokenizer"
        )


@dataclass(eq=False)
class SpeechLLMOutput(dict):
    """Also a dict of its fields, kept in step both ways (as transformers' ModelOutput): DeepSpeed finds a forward's
    tensors only in tensors, tuples, lists and dicts, starts its backward (timers, ZeRO's backward state) from hooks on
    them, and ZeRO-3 swaps them in place for ones its backward hooks see."""

    loss: torch.Tensor  # what backward() is called on
    llm_loss_sum: torch.Tensor
    n_tokens: torch.Tensor
    n_correct: torch.Tensor
    ctc_loss_sum: torch.Tensor  # 0 when the CTC head is off
    n_utts: int
    ctc_unaligned: torch.Tensor | None = None  # [B] bool: rows too long for CTC (ctc.ctc_unalignable); None: no head
    # forward(groups=...): [G, 5] float32, each group's rows' (llm_loss_sum, n_tokens, n_correct, ctc_loss_sum, n_utts)
    by_group: torch.Tensor | None = None
    # an MoE's router loss (llmasr.models.router_aux) x n_tokens, for a token-weighted mean; None: the LLM adds none
    router_aux_sum: torch.Tensor | None = None

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        dict.__setitem__(self, name, value)

    def __setitem__(self, key, value):
        setattr(self, key, value)


class SpeechLLM(nn.Module):
    """Audio encoder -> adaptor -> causal LM (with an optional CTC head on the encoder), built by llmasr.build_model.

    model(batch) gives the training loss of a collated batch (llmasr.data.loader.build_dataloader with this model's
    frontend, prompt and ctc_tokenizer); model.generate(batch) the transcripts; model.transcribe(batch, DecodeConfig)
    the transcripts with the CTC head's text, the guards that ended them, timestamps and confidence as asked. A search
    runs without dropout and gives back the mode it found.
    """

    def __init__(
        self,
        encoder: nn.Module,
        adaptor: nn.Module,
        llm: nn.Module,
        prompt: PromptBuilder,
        frontend: FrontendConfig,
        *,
        ctc_head: nn.Module | None = None,
        ctc_tokenizer=None,
        ctc_weight: float = 0.0,
        ctc_label_smoothing: float = 0.0,
        ctc_compress: str = "none",
    ):
        super().__init__()
        if ctc_compress != "none" and ctc_head is None:
            raise ValueError(f"ctc_compress={ctc_compress!r} needs a CTC head (model.ctc.weight > 0)")
        self.encoder = encoder
        self.adaptor = adaptor
        self.llm = llm
        self.ctc_head = ctc_head
        self.prompt = prompt
        self.frontend = frontend
        self.ctc_tokenizer = ctc_tokenizer
        self.ctc_weight = ctc_weight
        self.ctc_label_smoothing = ctc_label_smoothing
        self.ctc_compress = ctc_compress
        self.fused_head: nn.Module | None = None  # training's fused head + loss (llmasr.models.fused_kernels)
        # what the LM's own forward does to the head's logits
        self.logit_transform = logit_transform(base_lm(llm).config)
        self.router_aux = router_aux(base_lm(llm))  # an MoE's load-balancing term, where its config asks for it

    # -- train/eval ---------------------------------------------------------------------------------------------
    def frozen_branches(self) -> list[str]:
        """Branches with no trainable parameter; they stay in eval mode (no dropout, frozen BatchNorm stats)."""
        out = []
        for name in BRANCHES:
            module = getattr(self, name)
            if module is not None and not any(p.requires_grad for p in module.parameters()):
                out.append(name)
        return out

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for name in self.frozen_branches():
                branch = getattr(self, name)
                branch.eval()
                if name == "encoder":  # nothing before it trains: no gradient passes through it
                    continue
                # Gradients still pass through a frozen LLM to the adaptor, so its activations are kept unless
                # recomputed; its checkpointed modules recompute only in training mode. Those modules alone are put
                # back (their children, dropout among them, stay in eval).
                for module in branch.modules():
                    if getattr(module, "gradient_checkpointing", False) is True:
                        module.training = True
            for module in self.modules():  # a frozen base under LoRA: its BatchNorm statistics are frozen too
                params = list(module.parameters(recurse=False))
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and params:
                    if not any(p.requires_grad for p in params):
                        module.eval()
        return self

    # -- forward ------------------------------------------------------------------------------------------------
    def encode_audio(self, feats: torch.Tensor, feat_lens: torch.Tensor, languages: list[str | None] | None = None):
        """(encoder output, its lengths, audio embeddings, their lengths); `languages` as Batch.languages."""
        enc, enc_lens, _, audio, audio_lens = self._encode(feats, feat_lens, languages)
        return enc, enc_lens, audio, audio_lens

    @property
    def per_line_language(self) -> bool:
        """Whether the encoder reads each row's language (SenseVoice with queries.language per_line)."""
        return bool(getattr(self.encoder, "per_line", False))

    def _encoder_input(self, feats: torch.Tensor) -> torch.Tensor:
        """`feats` in the dtype the encoder computes in (its first weight's), as the trainer casts a batch: numpy's
        float64 had failed deep in the encoder ("mixed dtype"). Integer features (PCM samples?) are refused."""
        weight = next((p for p in self.encoder.parameters() if p.is_floating_point()), None)
        dtype, device = (None, None) if weight is None else (weight.dtype, weight.device)
        if not isinstance(feats, torch.Tensor):  # a numpy array (the README's "numpy's float64"): read as its tensor
            feats = torch.as_tensor(feats, device=device)
        if not feats.is_floating_point():
            raise ValueError(f"batch.feats is {feats.dtype}, not floating-point features (log-mel filterbanks, not "
                             f"audio samples); the model's encoder computes in {dtype}")  # fmt: skip
        return feats if dtype is None or feats.dtype == dtype else feats.to(dtype)

    def _encode(self, feats: torch.Tensor, feat_lens: torch.Tensor, languages: list[str | None] | None = None):
        feats = self._encoder_input(feats)
        if self.per_line_language:
            if self.training and languages is not None:  # the model's mode: a frozen encoder is in eval mode
                languages = self.encoder.training_languages(languages)
            enc, enc_lens = self.encoder(feats, feat_lens, languages)
        else:
            enc, enc_lens = self.encoder(feats, feat_lens)
        log_probs = None
        frames, frame_lens = enc, enc_lens
        if self.ctc_compress != "none":
            log_probs = self.ctc_head(enc, enc_lens)
            frames, frame_lens = ctc_compress(enc, enc_lens, log_probs, self.ctc_tokenizer.blank_id, self.ctc_compress)
        audio, audio_lens = self.adaptor(frames, frame_lens)
        return enc, enc_lens, log_probs, audio, audio_lens

    def embed_batch(self, batch: Batch, *, for_generation: bool = False):
        """(encoder output, its lengths, MergedInputs) for a collated batch.

        For generation the rows are left-padded, carry no labels and end at `target_start`, which drops any
        reference target a training batch holds.
        """
        enc, enc_lens, _, merged = self._embed(batch, for_generation)
        return enc, enc_lens, merged

    def batch_features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, lengths) of a batch: the workers' `feats`, or, with features on the device, those computed
        here from `batch.wave` on its device (cast to the dtype `feats` carries); the one place training,
        validation and decoding get them."""
        if not batch.has_waves:
            return batch.feats, batch.feat_lens
        if getattr(self, "_device_features", None) is None:
            self._device_features = DeviceFeatures(self.frontend)
        feats, lens = self._device_features(batch.wave, batch.wave_lens, batch.spec_masks)
        if not torch.equal(lens, batch.feat_lens.to(lens.device)):
            raise RuntimeError(
                f"features computed on the device have {lens.tolist()} frames, the data side expected "
                f"{batch.feat_lens.tolist()} (keys {batch.keys})"
            )
        return feats.to(batch.feats.dtype), batch.feat_lens

    def _embed(self, batch: Batch, for_generation: bool):
        embed, _, _ = causal_lm_parts(self.llm)
        text_ids = batch.text_ids
        _check_token_ids(text_ids, getattr(embed, "num_embeddings", None))  # (under ZeRO-3 the weight is a shard)
        enc, enc_lens, log_probs, audio, audio_lens = self._encode(*self.batch_features(batch), batch.languages)
        merged = merge_audio_into_text(
            embed(text_ids),
            text_ids,
            batch.target_start if for_generation else batch.text_lens,
            batch.audio_pos,
            batch.target_start,
            audio,
            audio_lens,
            left_pad=for_generation,
            with_labels=not for_generation,
        )
        return enc, enc_lens, log_probs, merged

    def _llm_hidden(self, merged) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the decoder's last hidden states, an MoE's router loss or None: llmasr.models.router_aux)."""
        _, decoder, _ = causal_lm_parts(self.llm)
        out = decoder(
            inputs_embeds=merged.inputs_embeds,
            attention_mask=merged.attention_mask,
            position_ids=merged.position_ids,
            use_cache=False,
            **({"output_router_logits": True} if self.router_aux is not None else {}),
        )
        aux = None if self.router_aux is None else self.router_aux(out.router_logits, merged.attention_mask)
        return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]), aux

    def forward(
        self,
        batch: Batch,
        *,
        token_normalizer: torch.Tensor | float | None = None,
        utt_normalizer: torch.Tensor | float | None = None,
        groups: torch.Tensor | None = None,
        n_groups: int = 0,
    ) -> SpeechLLMOutput:
        """Loss for one batch.

        The LLM loss is summed over labelled tokens and divided by `token_normalizer` (default: this batch's token
        count); the CTC loss is summed over utterances and divided by `utt_normalizer` (default: batch size). The
        trainer passes the counts of a whole accumulation window across ranks, which makes the accumulated
        gradient equal to that of one batch holding all of it. `groups` ([B] int64 in 0..n_groups-1: validation's
        manifest of each row): each group's sums too (`by_group`), the batch's computed as without them.
        """
        if self.ctc_head is not None and not batch.ctc_labelled and batch.size:
            raise ValueError(
                f"this model trains a CTC head (model.ctc.weight {self.ctc_weight:g}) and the batch carries no CTC "
                "labels: its loader was built without ctc_tokenizer=model.ctc_tokenizer (another model's loader?); "
                "the CTC loss would teach the head blank for every frame"
            )
        enc, enc_lens, log_probs, merged = self._embed(batch, for_generation=False)
        head = causal_lm_parts(self.llm)[2]
        hidden, aux = self._llm_hidden(merged)
        token = labels_only_cross_entropy(
            hidden, merged.labels, head, self.fused_head, self.logit_transform, groups=groups, n_groups=n_groups
        )
        n_tok = token.n_tokens.clamp(min=1) if token_normalizer is None else token_normalizer
        loss = token.loss_sum / n_tok + (0.0 if aux is None else self.router_aux.term(aux, token.n_tokens, n_tok))
        n_utts = int(batch.text_ids.shape[0])
        ctc_sum = loss.new_zeros(())
        ctc_rows = None  # each row's CTC loss, for `groups`
        if self.ctc_head is not None:
            if log_probs is None:  # not already computed for compression
                log_probs = self.ctc_head(enc, enc_lens)
            per_utt = ctc_loss(
                log_probs,
                enc_lens,
                batch.ctc_ids,
                batch.ctc_lens,
                blank_id=self.ctc_tokenizer.blank_id,
                label_smoothing=self.ctc_label_smoothing,
                reduction="none",
            )
            ctc_sum, ctc_rows = per_utt.sum(), per_utt.detach()  # the sum ctc_loss(reduction="sum") takes
            n_utt = max(n_utts, 1) if utt_normalizer is None else utt_normalizer
            loss = loss + self.ctc_weight * ctc_sum / n_utt
            unaligned = ctc_unalignable(enc_lens, batch.ctc_ids, batch.ctc_lens)  # a mask: read back by the trainer
        else:
            unaligned = None
        by_group = None if groups is None else group_rows(token.by_group, ctc_rows, groups, n_groups)
        return SpeechLLMOutput(
            loss,
            token.loss_sum.detach(),
            token.n_tokens,
            token.n_correct,
            ctc_sum.detach(),
            n_utts,
            unaligned,
            by_group,
            None if aux is None else aux.detach() * token.n_tokens,
        )

    def ctc_texts(self, log_probs: torch.Tensor, lens: torch.Tensor) -> list[str]:
        """The CTC head's greedy best-path transcripts from its log-probs [B, T, V] and lengths [B]."""
        tok = self.ctc_tokenizer
        return [tok.decode(ids) for ids in ctc_greedy(log_probs, lens, tok.blank_id)]

    # -- inference ----------------------------------------------------------------------------------------------
    @_decoding
    def transcribe(self, batch: Batch, cfg: DecodeConfig | dict | None = None, **settings) -> Transcripts:
        """The LLM's transcripts of a batch under `cfg` (greedy or beam search, CTC-guided when cfg.guidance says
        so; the prompt ends at `target_start`), which guard ended each (decode_guards), and, with a CTC head, the
        head's greedy best path over the same encoder pass and (cfg.timestamps) each transcript's word times, its text
        force-aligned to the head's frames (models.ctc_align), and (cfg.confidence) each transcript's log-probability
        under the LLM (models.confidence).

        With `cfg.max_new_tokens` unset, each utterance's cap is `cfg.tokens_per_second` times its own duration plus
        8, so a model that loops stops at a length tied to its audio rather than at a global maximum.
        `settings`: DecodeConfig fields set over `cfg` (num_beams=4), as generate takes them; the rest go to the LLM's
        generate (e.g. synced_gpus=True under ZeRO-3).
        """
        cfg, generate_kwargs = search_config(cfg, settings)
        refuse_unknown_generate(self.llm, generate_kwargs, "transcribe")  # before the encoder runs
        merged, ctc, ctc_texts, heard = self._prepare(batch, cfg)
        rows, truncated, mode, scores = gated_search(self, merged, batch, cfg, generate_kwargs, ctc, heard)
        llm = [self.prompt.decode(ids) if ok else "" for ids, ok in zip(rows, heard)]
        times = None
        if cfg.timestamps and ctc is not None:
            log_probs, enc_lens = ctc
            shifts = batch.feat_lens.double() * self.frontend.frame_seconds / enc_lens.clamp(min=1).double()
            times = [
                align_words(self.ctc_tokenizer, text, log_probs[i, : int(enc_lens[i])], float(shifts[i]))
                if heard[i]
                else []
                for i, text in enumerate(llm)
            ]
        no_speech = [not h for h in heard] if cfg.ctc_gate else None
        return Transcripts(llm, ctc_texts, truncated, mode, times, scores, no_speech)

    @torch.no_grad()
    def generate(self, batch: Batch, **settings) -> list[str]:
        """The LLM's transcripts only; `settings`: DecodeConfig fields (e.g. num_beams, max_new_tokens), the rest
        go to the LLM's generate."""
        return [self.prompt.decode(ids) for ids in self.generate_ids(batch, **settings)]

    @_decoding
    def generate_ids(self, batch: Batch, **settings) -> list[list[int]]:
        """`generate`'s token ids, before decoding (each row cut at its cap)."""
        extras = [k for k in ("timestamps", "confidence") if settings.get(k)]
        if extras:  # ids have no place for them: they would be dropped, the confidence pass paid for nothing
            asked = ", ".join(f"{k}=True" for k in extras)
            raise ValueError(f"generate and generate_ids return the transcripts alone; {' and '.join(extras)} come "
                             f"from transcribe(batch, DecodeConfig({asked}))")  # fmt: skip
        cfg, kwargs = search_config(None, settings)
        refuse_unknown_generate(self.llm, kwargs, "generate")
        merged, ctc, _, heard = self._prepare(batch, cfg, texts=False)
        return gated_search(self, merged, batch, cfg, kwargs, ctc, heard)[0]

    def _prepare(self, batch: Batch, cfg: DecodeConfig, texts: bool = True) -> tuple:
        """What a search of `batch` starts from: (the left-padded prompts with their audio (MergedInputs), the CTC
        head's (log-probs, lengths) or None without a head, its greedy texts (None without a head, or unless `texts`
        or cfg.ctc_gate asks for them), per row whether the search takes it: all rows, or with cfg.ctc_gate those whose
        CTC text holds a word (models.ctc_gate))."""
        cfg.validate_search()  # a DecodeConfig built in Python has met no recipe's checks
        gate = cfg.gate(self.ctc_head is not None)
        enc, enc_lens, log_probs, merged = self._embed(batch, for_generation=True)
        ctc = said = None
        if self.ctc_head is not None:  # log_probs: already computed when the adaptor compresses by CTC
            ctc = (self.ctc_head(enc, enc_lens) if log_probs is None else log_probs, enc_lens)
            said = self.ctc_texts(*ctc) if texts or gate else None  # generate_ids without the gate reads none
        return merged, ctc, said, heard_rows(said) if gate else [True] * len(batch.feat_lens)

    @property
    def ctc_on_llm_vocab(self) -> bool:
        """Whether the CTC head spells in the LLM's tokens (it can guide the search token by token), or in its own
        vocabulary (its guidance rescores a beam's n-best)."""
        return isinstance(self.ctc_tokenizer, LLMCTCTokenizer)
