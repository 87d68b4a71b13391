"""Model FLOPs of a training step, from the shapes the model's matmuls see and what is frozen.

Counted per matrix product (a multiply-add is 2 FLOPs), for the real (unpadded) rows of a batch:

- forward: 2 * weight elements * rows, for every Linear and convolution (a convolution's rows are its output
  positions; grouped/depthwise convolutions count their own weight elements), LoRA's A and B included; an MoE
  layer's fused experts for the top-k experts each token runs, and its router (llmasr.train.flops_moe);
- backward, activation gradient: the same again wherever a gradient flows into the module's input (autograd computes
  it exactly when the input requires grad, which is what the counter reads);
- backward, weight gradient: the same again only for weights that are trained (frozen base weights have none);
- attention scores (QK^T and the weighted sum of V): 2 * 2 * width * Tq * Tk per row forward. Backward, in an LLM
  layer, each product autograd runs (attention_products): dV where the values want a gradient, dA = dO V^T where the
  queries or keys do, then dQ and dK for each that does: a layer whose input needs no gradient (nothing trains
  before it) runs dQ or dV only for a trained q or v projection, and no dK without a trained k. Encoder and adaptor
  attention count twice the forward backward when a gradient reaches the scores (the block's input needs one, or a
  q/k/v weight trains; a LoRA on the output projection alone does not). LLM attention is causal and counts T(T+1)/2
  pairs per row; encoder and adaptor attention counts all T^2 pairs. Relative-position attention (the conformer's)
  adds its position scores, a third product of 2 * width * Tq * P over the P positions of its table (2T - 1,
  legacy T).

Each product is also counted by the dtype it ran in (StepCount.bf16_flops, fp16_flops; the rest is fp32), so that
MFU can weigh it by that dtype's peak (llmasr.train.efficiency).

Padding is not useful work: each branch's count at padded shapes is scaled by its real share (audio frames for the
encoder, adaptor and CTC head; real tokens for the LLM decoder). For the LLM this is exact (its attention is counted
from each row's own length). On the audio side the matmuls of frame-wise layers scale by the real frame share and
self-attention over an utterance's frames by the share of squares, sum(T_i^2) / (B * Tmax^2): a row of T real frames
does T^2 of the padded Tmax^2 pairs. Both are exact up to the rounding of lengths between frame rates. Whisper's
encoder is the exception: it takes a fixed window (30 s) whatever the clip, so every utterance costs it one whole
window, counted unscaled (a share of the batch's padded length would make the same clips cost less the more unequal
the batch). A Paraformer-streaming encoder run chunked (llmasr.models.sanm_chunk) runs its blocks over FunASR's chunk
layout, (chunk_size + gap) / stride rows per frame, and attends densely under a mask: it is counted at the layout's
shapes (what runs), scaled by the frames' shares, which the layout's differ from by each utterance's last, partial
chunk. The output head runs on labelled positions only (llmasr.models.losses), so its rows are exact. Embedding
lookups, norms, activations and the loss are not counted. Activation-checkpoint recomputation happens in the
backward, outside the counted forward, so the count is model FLOPs, not hardware FLOPs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from llmasr.models.devices import host_values
from llmasr.models.llm import causal_lm_parts
from llmasr.models.router_aux import num_experts
from llmasr.models.whisper import WhisperAudioEncoder
from llmasr.train import flops_moe
from llmasr.train.param_groups import numel

GEMMS = (nn.Linear, nn.Conv1d, nn.Conv2d)
HALF = (torch.bfloat16, torch.float16)  # the dtypes counted apart (StepCount.bf16_flops, fp16_flops)
AUDIO_BRANCHES = ("encoder", "adaptor", "ctc_head")
QKV = ("q_proj", "k_proj", "v_proj")  # an LLM attention block's projections (Llama, Qwen, Mistral, Gemma, ...)
FUSED_QKV = ("qkv_proj", "query_key_value", "c_attn", "W_pack")  # one projection for all three (Phi-3, ...)


@dataclass
class StepCount:
    """What one or more micro batches cost and held (sums; `add` merges them)."""

    flops: float = 0.0
    llm_tokens: float = 0.0  # real LLM positions (audio embeddings + text)
    llm_slots: float = 0.0  # LLM positions including padding
    audio_frames: float = 0.0  # real feature frames
    audio_slots: float = 0.0  # feature frames including padding
    bf16_flops: float = 0.0  # of `flops`, those of matmuls run in bfloat16
    fp16_flops: float = 0.0  # ... in float16 (the rest ran in float32: MFU weighs each by its own peak)

    def add(self, other: StepCount) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_list(self) -> list[float]:
        return [getattr(self, name) for name in self.__dataclass_fields__]

    @classmethod
    def from_list(cls, values) -> StepCount:
        return cls(*(float(v) for v in values))


def gemm_flops(weight_elements: float, rows: float, *, input_grad: bool, weight_grad: bool) -> float:
    """Forward + backward FLOPs of one matrix product with a weight of `weight_elements` over `rows` rows."""
    one = 2.0 * weight_elements * rows
    return one * (1 + int(input_grad) + int(weight_grad))


def attention_flops(width: int, pairs: float, *, backward: bool) -> float:
    """Score and weighted-sum FLOPs of attention with `width` = heads * head size over `pairs` query-key pairs."""
    return 2.0 * width * pairs * attention_products(backward, backward, backward)


def attention_products(q: bool, k: bool, v: bool) -> int:
    """Products of 2 * width * pairs FLOPs that attention runs forward and backward, where its queries, keys and
    values (`q`, `k`, `v`) want a gradient: QK^T and AV forward; backward dV = A^T dO for the values, dA = dO V^T
    when the queries or keys want one, then dQ = dS K and dK = dS^T Q for each that does (autograd computes the
    gradient of a product's operand only where that operand requires one)."""
    return 2 + int(v) + int(q or k) + int(q) + int(k)


def causal_pairs(lengths: torch.Tensor) -> torch.Tensor:
    """Query-key pairs of causal attention over rows of these real lengths (a float64 tensor on their device)."""
    lengths = lengths.double()
    return (lengths * (lengths + 1) / 2).sum()


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D, GPT-2's linear layer (weight [in, out]), which LoRA targets as it targets nn.Linear;
    imported only once transformers is (an LLM built), as this module is imported before."""
    import sys

    utils = sys.modules.get("transformers.pytorch_utils")
    return utils is not None and isinstance(module, utils.Conv1D)


def _gemm_rows(module: nn.Module, output: torch.Tensor) -> int:
    """Rows of a Linear's output [..., out] (transformers' Conv1D's too: out is its `nf`), output positions of a
    convolution's [B, C, *positions]."""
    if _is_conv1d(module):
        channels = module.nf
    else:
        channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    return output.numel() // max(channels, 1)


def _attention_width(module: nn.Module) -> int | None:
    """heads * head size of an encoder/adaptor attention block: the FunASR-named ones of llmasr.models (h/d_k, or
    n_head with linear_q) and Hugging Face's (num_heads/head_dim: Whisper's encoder)."""
    for heads, size in (("h", "d_k"), ("num_heads", "head_dim")):
        if isinstance(getattr(module, heads, None), int) and isinstance(getattr(module, size, None), int):
            return getattr(module, heads) * getattr(module, size)
    if isinstance(getattr(module, "n_head", None), int) and isinstance(getattr(module, "linear_q", None), nn.Linear):
        return module.linear_q.out_features
    return None


def _attention_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(queries, keys) [B, T, D] of an attention block's call: (q, kv, mask) blocks name both, Hugging Face's take
    hidden_states and key_value_states, the rest attend over their first input."""
    q = args[0] if args else kwargs.get("hidden_states")
    if not torch.is_tensor(q) or q.dim() != 3:
        return None, None
    if hasattr(module, "n_head") and len(args) > 1 and torch.is_tensor(args[1]):
        return q, args[1]
    kv = kwargs.get("key_value_states")
    return q, kv if torch.is_tensor(kv) else q


AFTER_SCORES = ("linear_out", "out_proj", "fsmn_block")  # an attention block's output projection, SAN-M's memory


def _trains_before_scores(module: nn.Module) -> bool:
    """Whether an attention block trains a weight its scores depend on (q/k/v projections, position biases and
    projection), as opposed to the output projection and SAN-M's FSMN memory, which sit after or beside them."""
    return any(p.requires_grad for name, p in module.named_parameters() if name.split(".")[0] not in AFTER_SCORES)


def _position_pairs(module: nn.Module, args: tuple, q: torch.Tensor) -> float:
    """Query-position pairs of a relative-position attention block (linear_pos, called (x, pos_emb, ...)): each
    query scored against every position of pos_emb [1, P, D]; 0 for other attention."""
    pos = args[1] if len(args) > 1 else None
    if not isinstance(getattr(module, "linear_pos", None), nn.Linear) or not torch.is_tensor(pos) or pos.dim() != 3:
        return 0.0
    return float(q.shape[0] * q.shape[1] * pos.shape[1])


def _params(module: nn.Module | None):
    return module.parameters() if isinstance(module, nn.Module) else ()


class FlopCounter:
    """Counts a SpeechLLM's forward shapes while armed (`with counter.measure(batch):` around the forward);
    `take()` returns the StepCount since the last take."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.armed = False
        self.padded = dict.fromkeys((*AUDIO_BRANCHES, "llm", "head"), 0.0)
        self.quadratic = dict.fromkeys(AUDIO_BRANCHES, 0.0)  # self-attention over the frames: scales as T^2
        # the same counts by the dtype they ran in: a run may hold an fp32 encoder beside a bf16 LLM
        self.by_dtype = {d: (dict.fromkeys(self.padded, 0.0), dict.fromkeys(self.quadratic, 0.0)) for d in HALF}
        self._llm_dtype: torch.dtype | None = None
        self._utts = 0  # rows of the measured batch
        self.total = StepCount()
        self._llm_mask: torch.Tensor | None = None
        self.handles = []
        _, decoder, head = causal_lm_parts(model.llm)
        config = getattr(model.llm, "config", None) or getattr(decoder, "config", None)
        self.llm_layers = int(config.num_hidden_layers)
        heads = int(config.num_attention_heads)
        self.llm_width = heads * int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        # A gradient flows back through the LLM when anything before or in it is trained (not the CTC side head).
        upstream = [getattr(model, b, None) for b in ("encoder", "adaptor", "llm")]
        encoder = getattr(model, "encoder", None)
        # an encoder over a fixed window (0: none) runs the same whatever the batch's padding: its count is not
        # scaled, and its frames a row, whatever the row holds, are the audio slots the padding ratio counts
        windowed = [m for m in encoder.modules() if isinstance(m, WhisperAudioEncoder)] if encoder is not None else []
        self.window_frames = windowed[0].n_frames if windowed else 0
        self.llm_backward = any(p.requires_grad for m in upstream if m is not None for p in m.parameters())
        self._llm_products: list[int] = []  # attention_products of each LLM attention block run in the forward
        self.llm_blocks = self._hook_llm_attention(decoder)
        for branch in AUDIO_BRANCHES:
            module = getattr(model, branch, None)
            if module is not None:
                self._hook_branch(module, branch)
        self._hook_branch(decoder, "llm")
        moe = flops_moe.hooks(decoder, num_experts(config), lambda: self.armed, gemm_flops,
                              lambda flops, dtype: self._add("llm", flops, dtype))  # fmt: skip
        self.handles += moe
        self._hook_branch(head, "head")  # a plain Linear, or peft's wrapper: its base layer and LoRA A/B
        self.handles.append(decoder.register_forward_pre_hook(self._on_decoder, with_kwargs=True))
        fused = getattr(model, "fused_head", None)
        if fused is not None:  # the head's matmul runs inside the fused loss, not through the head module
            self.handles.append(fused.register_forward_hook(self._on_fused_head))

    def _hook_branch(self, module: nn.Module, branch: str) -> None:
        for sub in module.modules():
            if isinstance(sub, GEMMS) or _is_conv1d(sub):
                self._hook_gemm(sub, branch)
            elif branch != "llm" and _attention_width(sub) is not None:
                hook = self._on_attention(branch, _trains_before_scores(sub))
                self.handles.append(sub.register_forward_hook(hook, with_kwargs=True))

    def _hook_llm_attention(self, decoder: nn.Module) -> int:
        """Hooks on each LLM attention block's q/k/v projections (or its fused one): which of its queries, keys and
        values want a gradient, as autograd sees them in the forward (a q_norm/k_norm that trains adds its side).
        The number of blocks found (0: an architecture not named here, counted by llm_backward alone)."""
        blocks = 0
        for att in decoder.modules():
            sides = {n[0]: getattr(att, n, None) for n in QKV}
            fused = next((getattr(att, n) for n in FUSED_QKV if isinstance(getattr(att, n, None), nn.Module)), None)
            if all(isinstance(m, nn.Module) for m in sides.values()):
                feeds = [(m, side) for side, m in sides.items()]
            elif fused is not None:
                feeds = [(fused, "qkv")]
            else:
                continue
            blocks += 1
            trained = {s for s in "qk" if any(p.requires_grad for p in _params(getattr(att, f"{s}_norm", None)))}
            wanted: set[str] = set()  # the sides wanting a gradient in this call of the block
            self.handles.append(att.register_forward_pre_hook(self._on_llm_attention_start(wanted, trained)))
            for module, side in feeds:
                self.handles.append(module.register_forward_hook(self._on_projection(wanted, side)))
            self.handles.append(att.register_forward_hook(self._on_llm_attention(wanted)))
        return blocks

    @staticmethod
    def _on_llm_attention_start(wanted: set[str], trained: set[str]):
        def hook(mod, args):
            wanted.clear()
            wanted.update(trained)

        return hook

    def _on_projection(self, wanted: set[str], side: str):
        def hook(mod, args, output):
            if self.armed and torch.is_tensor(output) and output.requires_grad:
                wanted.update(side)

        return hook

    def _on_llm_attention(self, wanted: set[str]):
        def hook(mod, args, output):
            if self.armed:
                self._llm_products.append(attention_products("q" in wanted, "k" in wanted, "v" in wanted))

        return hook

    def _hook_gemm(self, module: nn.Module, branch: str) -> None:
        def hook(mod, args, output):
            if not self.armed or not torch.is_tensor(output):
                return
            x = args[0] if args else None
            grad_in = torch.is_tensor(x) and x.requires_grad
            flops = gemm_flops(
                numel(mod.weight), _gemm_rows(mod, output), input_grad=grad_in, weight_grad=mod.weight.requires_grad
            )
            self._add(branch, flops, output.dtype)

        self.handles.append(module.register_forward_hook(hook))

    def _on_fused_head(self, mod, args, output):
        if self.armed:
            x, w = args[0], mod.weight
            flops = gemm_flops(numel(w), x.shape[0], input_grad=x.requires_grad, weight_grad=w.requires_grad)
            self._add("head", flops, x.dtype)

    def _on_attention(self, branch: str, trains_before_scores: bool):
        def hook(mod, args, kwargs, output):
            if not self.armed:
                return
            q, kv = _attention_inputs(mod, args, kwargs)
            if q is None:
                return
            pairs = float(q.shape[0] * q.shape[1] * kv.shape[1])
            out = output[0] if isinstance(output, tuple) else output
            # a gradient through the scores: into the block's input, or to a trained q/k/v weight (not merely to a
            # LoRA on the output projection, whose output then needs a gradient though no score does)
            back = q.requires_grad or kv.requires_grad or trains_before_scores
            width = _attention_width(mod)
            positions = _position_pairs(mod, args, q)  # one product (q.p^T), where scores are two (QK^T, AV)
            flops = attention_flops(width, pairs, backward=back) + attention_flops(width, positions, backward=back) / 2
            # An utterance's frames attending to each other: a row of T real frames does T^2 of the padded Tmax^2
            # (a Q-Former's windows or queries are rows or positions of their own: their work scales as T).
            over_frames = q.shape[0] == self._utts and kv.shape[1] == q.shape[1]
            self._add(branch, flops, out.dtype if torch.is_tensor(out) else q.dtype, quadratic=over_frames)

        return hook

    def _add(self, branch: str, flops: float, dtype: torch.dtype, quadratic: bool = False) -> None:
        """`flops` of `branch` at padded shapes, run in `dtype`."""
        (self.quadratic if quadratic else self.padded)[branch] += flops
        if dtype in self.by_dtype:
            self.by_dtype[dtype][int(quadratic)][branch] += flops

    def _on_decoder(self, module, args, kwargs):
        if self.armed and torch.is_tensor(kwargs.get("attention_mask")):
            self._llm_mask = kwargs["attention_mask"]
            embeds = kwargs.get("inputs_embeds")  # its attention runs in the dtype of its hidden states
            self._llm_dtype = embeds.dtype if torch.is_tensor(embeds) else next(module.parameters()).dtype

    @contextlib.contextmanager
    def measure(self, batch):
        """Count the forward of `batch` (a llmasr.data.batch.Batch) run inside."""
        for counts in (self.padded, self.quadratic, *(c for pair in self.by_dtype.values() for c in pair)):
            for key in counts:
                counts[key] = 0.0
        self._llm_mask = self._llm_dtype = None
        self._llm_products.clear()
        self._utts = int(batch.feat_lens.numel())
        self.armed = True
        try:
            yield
        finally:
            self.armed = False
        rows = int(batch.feat_lens.numel())
        self.total.add(self._finish(batch.feat_lens, batch.feat_slots, rows * self.window_frames))

    def _finish(self, feat_lens: torch.Tensor, feat_slots: int, window_slots: int = 0) -> StepCount:
        """The count of one forward; its LLM terms stay float64 tensors on the mask's device until `take` reads them
        (a read per micro batch would make the host wait for the device each time). `window_slots`: the frames a
        fixed-window encoder runs over (rows x its window), which the audio padding counts instead of the batch's."""
        lens = feat_lens.double()  # the host batch's lengths (TrainEngine.micro_step)
        frames = float(lens.sum())
        audio_share = frames / max(feat_slots, 1)
        longest = feat_slots / max(lens.numel(), 1)  # the padded length
        square_share = float((lens / max(longest, 1.0)).square().mean()) if lens.numel() else 0.0
        tokens = slots = 0.0
        token_share = llm_attention = 0.0
        mask = self._llm_mask
        if mask is not None:
            lengths = mask.sum(1)
            tokens, slots = lengths.sum().double(), float(mask.numel())
            token_share = tokens / max(slots, 1.0)
            products = (
                sum(self._llm_products)
                if self.llm_blocks
                else self.llm_layers * attention_products(*(self.llm_backward,) * 3)
            )
            llm_attention = 2.0 * self.llm_width * causal_pairs(lengths) * products

        def real(padded: dict, quadratic: dict):
            out = padded["head"] + padded["llm"] * token_share
            for branch in AUDIO_BRANCHES:
                if branch == "encoder" and self.window_frames:
                    out += padded[branch] + quadratic[branch]
                else:
                    out += padded[branch] * audio_share + quadratic[branch] * square_share
            return out

        half = {d: real(*self.by_dtype[d]) + (llm_attention if self._llm_dtype == d else 0.0) for d in HALF}
        flops = real(self.padded, self.quadratic) + llm_attention
        audio_slots = float(max(window_slots, feat_slots))
        return StepCount(flops, tokens, slots, frames, audio_slots, half[torch.bfloat16], half[torch.float16])

    def take_pending(self) -> list:
        """The StepCount since the last take as a list whose entries may still be device tensors (for a caller that
        reads them back with others: host_values)."""
        out, self.total = self.total, StepCount()
        return out.as_list()

    def take(self) -> StepCount:
        return StepCount.from_list(host_values(self.take_pending()))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
