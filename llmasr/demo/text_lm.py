"""The demo's LLM: a word-level tokenizer and a tiny Qwen2 pretrained briefly on text.

As in real use the LLM arrives pretrained: it has read text of the task's domain (the training transcripts plus
generated digit strings and word phrases) in ChatML conversations, and follows one instruction ("Repeat after
me."), but it has never seen audio nor the "Transcribe the audio." prompt. The tokenizer keeps every corpus word
whole (one token per word or digit), which is what lets a small model learn fast (REFERENCE: character tokens
failed where word tokens reached WER 0.09).

The tokenizer is a byte-level BPE with Qwen2's own normaliser, pre-tokenizer and decoder, trained until every
corpus word is a single merge. It has to be: transformers 5 loads any `model_type: qwen2` directory with its
Qwen2Tokenizer class, which rebuilds that pipeline from tokenizer.json's vocabulary and merges and ignores the
pipeline stored there, so a sentencepiece (Metaspace / Unigram) tokenizer saved beside a Qwen2 model would come
back tokenizing differently. Built this way, `AutoTokenizer.from_pretrained` reloads it exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmasr.errors import write_error
from llmasr.testing.tiny_llm import CHATML_SPECIALS, CHATML_TEMPLATE, write_tiny_llm_dir

# The chat scaffolding as the template renders it, so prompts take few tokens.
SCAFFOLD_SYSTEM = "You are a helpful assistant."
REPEAT_PROMPT = "Repeat after me."
SCAFFOLD = [
    "user\nRepeat after me.\n",
    "system\nYou are a helpful assistant.",
    "user\nTranscribe the audio.\n",
    "<|im_end|>\n",
    "assistant\n",
]
# Qwen2's pre-tokenizer split (contractions, letter runs with one leading non-letter, single digits, punctuation,
# newlines, spaces), as transformers' Qwen2Tokenizer sets it.
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class TextLMError(RuntimeError):
    """The tokenizer or the text LM cannot be built from what was given."""


def train_word_tokenizer(texts: Sequence[str], spelled: Mapping[str, Sequence[str]] | None = None):
    """A byte-level BPE tokenizer (Qwen2's pipeline) whose merges make every word of `texts` one token, except the
    `spelled` words (word -> its pieces): only their pieces are merged, so they encode in those pieces, as a real
    LLM's subword tokenizer spells a rare name (the demo's hotwords: a list helps a model that can match a name's
    spelling to its sound).

    Returned as a transformers fast tokenizer with the ChatML specials and chat template. Text it has never seen
    still encodes, into smaller pieces down to single bytes, so nothing is out of vocabulary.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spelled = dict(spelled or {})
    lines = [" ".join(w for w in t.split() if w not in spelled) for t in texts if t and t.strip()]
    lines = [line for line in lines if line] + [p for pieces in spelled.values() for p in pieces] * 20
    if not lines:
        raise TextLMError("train_word_tokenizer: no text given")
    words = sorted({w for line in lines for w in line.split()})
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # Room for every merge: with it, BPE ends when each pre-token (" three", "\n", ...) is a single token.
    room = sum(len(w.encode()) + 1 for w in {*words, *(" " + w for w in words)}) + 64 * len(SCAFFOLD)
    trainer = trainers.BpeTrainer(
        vocab_size=256 + len(CHATML_SPECIALS) + room,
        min_frequency=1,
        special_tokens=CHATML_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Words as they appear after a space and at a line start, and the chat scaffolding, so all of them merge.
    extra = [" ".join(words)] + words + SCAFFOLD
    tok.train_from_iterator(lines + extra * 20, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    hf.chat_template = CHATML_TEMPLATE
    for special in CHATML_SPECIALS:
        ids = hf.encode(special, add_special_tokens=False)
        if len(ids) != 1:
            raise TextLMError(f"the tokenizer splits the special token {special} into {ids}")
    return hf


def turn_ids(tokenizer, role: str, text: str) -> tuple[list[int], list[int]]:
    """One ChatML turn `<|im_start|>{role}\n{text}<|im_end|>\n` as (ids, where the text and its end token start).

    The text is tokenized on its own, as PromptBuilder tokenizes a target, so pretraining sees the same ids.
    """
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    head = [start, *tokenizer.encode(f"{role}\n", add_special_tokens=False)]
    body = [*tokenizer.encode(text.strip(), add_special_tokens=False), tokenizer.eos_token_id]
    return head + body + tokenizer.encode("\n", add_special_tokens=False), [len(head), len(head) + len(body)]


def chat_example(
    tokenizer, texts: Sequence[str], rng: np.random.Generator, repeat_fraction: float = 0.5
) -> tuple[list[int], list[bool]]:
    """A random conversation (optional system turn, 1-2 user/assistant exchanges, contents drawn from `texts`)
    as ids, with a mask of the positions whose next token is trained (the assistant texts and end tokens).

    A `repeat_fraction` of the exchanges is the instruction "Repeat after me." with the assistant echoing the
    user's text: the one instruction this tiny LLM learns to follow, as an instruct LLM would know it."""
    ids: list[int] = []
    train: list[bool] = []
    turns = [("system", SCAFFOLD_SYSTEM)] if rng.random() < 0.3 else []
    for _ in range(int(rng.integers(1, 3))):
        said = texts[int(rng.integers(len(texts)))]
        if rng.random() < repeat_fraction:
            turns += [("user", f"{REPEAT_PROMPT}\n{said}"), ("assistant", said)]
        else:
            turns += [("user", said), ("assistant", texts[int(rng.integers(len(texts)))])]
    for role, text in turns:
        t_ids, (lo, hi) = turn_ids(tokenizer, role, text)
        ids += t_ids
        train += [role == "assistant" and lo <= i < hi for i in range(len(t_ids))]
    return ids, train


@dataclass
class TextLMConfig:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    steps: int = 600
    batch_size: int = 32
    # Exchanges that are "Repeat after me." (see chat_example). Copying emerges abruptly (loss 1.6 -> 0.2 between
    # steps 250 and 480 at 1.0; at 0.8 it had not yet, 22% exact repeats after 600 steps, vs 85% at 1.0).
    repeat_fraction: float = 1.0
    # Qwen2's initializer_range, which sets the scale of the token embeddings. 0.2 (norm ~2.3 at width 128) matches
    # what a fresh adaptor emits; at the usual 0.02 the audio embeddings start 10x larger than any word's, and the
    # speech LLM learned far slower (held-out WER after 7 epochs: 0.60 at 0.2, 0.89 at 0.02).
    init_std: float = 0.2
    lr: float = 3e-3
    warmup: int = 20
    seed: int = 0


def new_qwen2(tokenizer, cfg: TextLMConfig):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        initializer_range=cfg.init_std,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    return AutoModelForCausalLM.from_config(config)


def _batch(examples: list[tuple[list[int], list[bool]]], pad_id: int):
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (seq, train) in enumerate(examples):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        keep = torch.tensor(train)
        labels[i, : len(seq)] = torch.where(keep, torch.tensor(seq), torch.full_like(keep, -100, dtype=torch.long))
    return ids, mask, labels


def pretrain_lm(model, tokenizer, texts: Sequence[str], cfg: TextLMConfig, log: Callable[[str], None] = print):
    """Next-token training of the assistant turns of random ChatML conversations; returns the per-step losses.

    Conversations rather than bare assistant turns: the speech LLM's answer follows a user turn (the prompt and
    the audio) at a position well past 0, and a model that has only ever seen text start at position 0 answers
    garbage in that context (measured: loss 12.7 vs 2.8 for the bare-text LM).
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise TextLMError("pretrain_lm: no text to train on")
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))

    model.train()
    losses = []
    every = max(1, cfg.steps // 5)
    start = time.time()
    for step in range(cfg.steps):
        examples = [chat_example(tokenizer, texts, rng, cfg.repeat_fraction) for _ in range(cfg.batch_size)]
        ids, mask, labels = _batch(examples, tokenizer.pad_token_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % every == 0 or step == 0:
            log(f"  text LM step {step + 1}/{cfg.steps}: loss {losses[-1]:.3f} ({time.time() - start:.0f} s)")
    model.eval()
    return losses


def build_text_lm(
    out_dir: str | Path,
    texts: Sequence[str],
    cfg: TextLMConfig | None = None,
    *,
    log: Callable[[str], None] = print,
    spelled: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """Tokenizer + Qwen2 pretrained on `texts`, saved as a HF directory; returns a summary (losses, sizes).
    `spelled`: words the tokenizer keeps in pieces (train_word_tokenizer)."""
    cfg = cfg or TextLMConfig()
    tokenizer = train_word_tokenizer(texts, spelled)
    model = new_qwen2(tokenizer, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"text LM: Qwen2 {cfg.num_layers} layers x {cfg.hidden_size}, {n_params / 1e6:.2f}M parameters, "
        f"vocabulary {len(tokenizer)}; pretraining {cfg.steps} steps on {len(texts)} lines")  # fmt: skip
    losses = pretrain_lm(model, tokenizer, texts, cfg, log)
    try:
        write_tiny_llm_dir(out_dir, model=model, tokenizer=tokenizer)
    except Exception as err:  # safetensors' and transformers' full-disk errors name no file
        full = write_error(Path(out_dir), err)
        if full is None:
            raise
        raise full from err
    return {
        "path": str(out_dir),
        "params": n_params,
        "vocab": len(tokenizer),
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-10:])),
    }
