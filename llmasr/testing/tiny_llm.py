"""Tiny Hugging Face causal LMs with real tokenizers, written to disk in the real format.

Used by the tests, the embedded demo and the recipe checks, so that the same `from_pretrained` loaders that read a
Qwen2.5-7B directory are the ones exercised. Nothing here downloads anything.
"""

from __future__ import annotations

from pathlib import Path

import torch

# ChatML, the format of the Qwen family; written here rather than copied so that tiny models carry a template.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# A Qwen2.5 / Qwen3 tokenizer.json's pre-tokenizer regex (before its ByteLevel), and added tokens as such a release
# lists them: the ChatML specials and two that are not special
QWEN_PRETOKENIZE = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN_ADDED = {**dict.fromkeys(CHATML_SPECIALS, True), "<tool_call>": False, "</tool_call>": False}

DEFAULT_CORPUS = [
    "zero one two three four five six seven eight nine",
    "the quick brown fox jumps over the lazy dog",
    "transcribe the audio please",
    "speech recognition with a large language model",
    "hello world this is a test of the tokenizer",
    "you are a helpful assistant",
]


def _qwen_pipeline(tok) -> None:
    """Give tokenizers.Tokenizer `tok` Qwen2.5's / Qwen3's pipeline: NFC; its Split regex, then ByteLevel; ByteLevel
    decoding."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )  # fmt: skip
    tok.decoder = decoders.ByteLevel()


def train_bpe_tokenizer(texts: list[str], vocab_size: int = 300, *, chat_template: str | None = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer with Qwen2.5's pipeline (NFC; its Split regex, then ByteLevel) trained on `texts`,
    wrapped as a transformers fast tokenizer. The pipeline is Qwen's so that transformers' Qwen2Tokenizer, which it
    loads a qwen2 folder with, tokenizes as the folder's tokenizer.json does: the class a real Qwen folder gets."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    _qwen_pipeline(tok)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CHATML_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrapped(tok, chat_template)


def train_gpt2_style_bpe_tokenizer(texts: list[str], vocab_size: int = 300, *, chat_template: str | None = None):
    """A byte-level BPE with GPT-2's pipeline (ByteLevel's own split, no normaliser) trained on `texts` and the
    default corpus: punctuation stands alone where Qwen's split joins one such character to the letters after it
    ("(ann" one pre-token), for tests of a tokenizer of that shape."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=CHATML_SPECIALS, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator([*texts, *DEFAULT_CORPUS], trainer=trainer)
    return _wrapped(tok, chat_template)


def _wrapped(tok, chat_template: str | None, **specials):
    """`tok` (a tokenizers.Tokenizer) as a transformers fast tokenizer with the ChatML specials and template."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        **specials,
    )
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf


def train_word_level_tokenizer(texts: list[str], *, chat_template: str | None = CHATML_TEMPLATE):
    """A WordLevel tokenizer (one token a word, split at whitespace and punctuation) of the words of `texts` and the
    words of the prompt: any other word is its unk token, "<unk>"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    prompt = "transcribe the audio . you are a helpful assistant user system \n"
    words = dict.fromkeys(w for t in [*texts, prompt] for w in pre_tokenizers.Whitespace().pre_tokenize_str(t))
    vocab = {w: i for i, w in enumerate(dict.fromkeys(["<unk>", *CHATML_SPECIALS, *(w for w, _ in words), "\n"]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins the words with spaces
    return _wrapped(tok, chat_template, unk_token="<unk>")


def train_unigram_tokenizer(texts: list[str], vocab_size: int = 120, *, chat_template: str | None = CHATML_TEMPLATE):
    """A SentencePiece-style tokenizer (Unigram model, NFKC, Metaspace, no byte fallback) trained on `texts`: a
    character the texts never hold is its unk token, "<unk>"."""
    from tokenizers import SentencePieceUnigramTokenizer

    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(
        [*texts, *DEFAULT_CORPUS], vocab_size=vocab_size, special_tokens=["<unk>", *CHATML_SPECIALS],
        unk_token="<unk>", show_progress=False,
    )  # fmt: skip
    return _wrapped(sp._tokenizer, chat_template, unk_token="<unk>")


def train_char_bpe_tokenizer(texts: list[str], vocab_size: int = 120, *, chat_template: str | None = CHATML_TEMPLATE):
    """A BPE tokenizer over characters (NFKC, Metaspace, as a SentencePiece BPE) with no unk token and no byte
    fallback, trained on `texts`, the default corpus and the prompt's line breaks: a character they never hold it
    writes no token for at all."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHATML_SPECIALS, show_progress=False)
    tok.train_from_iterator([*texts, *DEFAULT_CORPUS, "user\nsystem\nassistant\n"], trainer=trainer)
    return _wrapped(tok, chat_template)


# The sparse blocks of the tiny MoEs (every layer one): Qwen3-30B-A3B's shape (8 routed experts here, top-2, no
# shared expert) and Qwen1.5-MoE / Qwen2-57B-A14B's (4 routed experts, top-2, a shared expert behind a sigmoid gate)
MOE_SHAPES = {
    "qwen3_moe": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "norm_topk_prob": True},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 64},
}  # fmt: skip


def write_tiny_llm_dir(
    path: str | Path,
    *,
    arch: str = "qwen2",  # qwen2 (Qwen2/Qwen2.5), qwen3, llama, or the MoEs qwen3_moe, qwen2_moe (MOE_SHAPES)
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    tokenizer=None,
    texts: list[str] | None = None,
    vocab_size: int = 300,
    chat_template: str | None = CHATML_TEMPLATE,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    model=None,
    max_position_embeddings: int = 2048,
) -> Path:
    """Write a randomly initialised tiny causal LM (Qwen2 or Llama architecture) plus tokenizer to `path`.

    Pass `model` to save an already trained model (the demo pretrains one on text) with its `tokenizer`.
    """
    from transformers import (
        AutoModelForCausalLM,
        LlamaConfig,
        Qwen2Config,
        Qwen2MoeConfig,
        Qwen3Config,
        Qwen3MoeConfig,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = train_bpe_tokenizer(texts or DEFAULT_CORPUS, vocab_size, chat_template=chat_template)
    if model is None:
        cls = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "llama": LlamaConfig, "qwen3_moe": Qwen3MoeConfig,
               "qwen2_moe": Qwen2MoeConfig}[arch]  # fmt: skip
        moe = dict(MOE_SHAPES[arch], head_dim=hidden_size // num_heads) if arch in MOE_SHAPES else {}
        config = cls(
            **moe,
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_qwen_layout_llm_dir(
    path: str | Path, *, arch: str = "qwen2", texts: list[str] | None = None, added: tuple[str, ...] = ()
) -> Path:
    """A tiny LLM directory in the on-disk layout of a Qwen2.5 / Qwen3 release: tokenizer.json with Qwen's pipeline
    (NFC; the Split regex, then ByteLevel) and its added tokens after the vocabulary, vocab.json with merges.txt,
    and a tokenizer_config.json naming Qwen2Tokenizer, with added_tokens_decoder and the chat template. `added`:
    further tokens tokenizer.json holds and tokenizer_config.json does not list (added with the tokenizers library)."""
    import json

    from tokenizers import (
        AddedToken,
        Tokenizer,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    _qwen_pipeline(tok)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts or DEFAULT_CORPUS, trainer=trainer)
    tok.model.continuing_subword_prefix = tok.model.end_of_word_suffix = ""  # as a release's file writes them
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_ADDED.items()])
    tok.add_tokens(list(added))
    path = write_tiny_llm_dir(path, tokenizer=_wrapped(tok, None), arch=arch)
    tok.save(str(path / "tokenizer.json"))
    tok.model.save(str(path))  # vocab.json, merges.txt
    listed = {
        str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": s}
        for t, s in QWEN_ADDED.items()
    }  # fmt: skip
    config = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": listed,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
        "chat_template": CHATML_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }  # fmt: skip
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    (path / "chat_template.jinja").unlink(missing_ok=True)
    return path


def write_unk_llm_dir(path: str | Path, tokenizer, **kw) -> Path:
    """A tiny LLM directory around a tokenizer that is not byte-level (train_word_level_tokenizer's,
    train_unigram_tokenizer's, train_char_bpe_tokenizer's), as a Llama: transformers 5 loads a qwen2 directory's
    tokenizer with its own Qwen2 class, which rebuilds a byte-level BPE from the vocabulary (llmasr's loader reads
    tokenizer.json as written all the same: llmasr.models.tokenizer.as_written)."""
    return write_tiny_llm_dir(path, tokenizer=tokenizer, arch="llama", **kw)
