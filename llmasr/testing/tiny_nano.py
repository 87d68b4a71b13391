"""Write a tiny Fun-ASR-Nano directory (FunASR's FunASRNano layout) with random weights.

    SRC/config.yaml          model: FunASRNano; audio_encoder SenseVoiceEncoderSmall, audio_adaptor Transformer
                             (downsample_rate 1, use_low_frame_rate), llm_conf.init_param_path, ctc_decoder
                             Transformer + ctc_conf, frontend WavFrontend without CMVN; `${...}` references as the
                             released config has them
    SRC/configuration.json   file_path_metas: init_param, config, llm_conf / tokenizer_conf init_param_path
    SRC/model.pt             {"state_dict": ...} in bf16: audio_encoder.*, audio_adaptor.*, llm.* (tied embeddings,
                             lm_head stored too, as torch's state_dict has it), ctc_decoder.*, ctc.ctc_lo.*
    SRC/Qwen3-0.6B/          config.json, generation_config.json and the tokenizer: no weights
    SRC/multilingual.tiktoken the CTC branch's byte-level BPE vocabulary (single bytes + a few merges)

The encoder and adaptor are llmasr's classes, whose parameter names are FunASR's (the parity tests load the same
tensors into FunASR's classes). Sizes are tiny; names and layout are the real ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml

from llmasr.models.adaptors import TransformerAdaptor
from llmasr.models.config import AdaptorConfig
from llmasr.models.ctc_tiktoken import write_ranks
from llmasr.models.sensevoice import SenseVoiceEncoderSmall
from llmasr.models.tokenizer import load_tokenizer
from llmasr.testing.tiny_funasr import _randomise, paraformer_frontend_conf, tiny_sensevoice_conf
from llmasr.testing.tiny_llm import DEFAULT_CORPUS, train_bpe_tokenizer

LLM_DIR = "Qwen3-0.6B"
CTC_MERGES = 40  # byte pairs merged into tokens after the 256 single bytes
CTC_SPECIALS = 3  # stand-ins for SenseVoice's special tokens, between the BPE tokens and the blank
CTC_VOCAB = 256 + CTC_MERGES + CTC_SPECIALS + 1  # stands in for the 60,515 outputs of Nano's CTC head (blank = last)
CTC_TEXT = DEFAULT_CORPUS + ["语音转写：你好世界"]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja")


def write_tiktoken(path: Path, texts: list[str], merges: int = CTC_MERGES) -> Path:
    """A byte-level BPE vocabulary in tiktoken's file format (`<base64 token> <rank>` lines): the 256 single bytes,
    then `merges` tokens, each the most frequent adjacent pair in `texts`' words (ties: the first pair met)."""
    from collections import Counter

    words = [[bytes([b]) for b in (" " + w).encode("utf-8")] for t in texts for w in t.split()]
    tokens = [bytes([b]) for b in range(256)]
    for _ in range(merges):
        pairs = Counter((a, b) for w in words for a, b in zip(w, w[1:]))
        (a, b), _ = pairs.most_common(1)[0]
        tokens.append(a + b)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i : i + 2] = [a + b]
                i += 1
    return write_ranks(path, tokens)


def nano_config(encoder_conf: dict, frontend_conf: dict, *, llm_dim: int, ffn_dim: int = 48) -> dict:
    """config.yaml of a Nano directory, in the released file's layout."""
    enc_dim = int(encoder_conf["output_size"])
    input_size = int(frontend_conf["n_mels"]) * int(frontend_conf["lfr_m"])
    return {
        "model": "FunASRNano",
        "model_conf": {"lsm_weight": 0.1, "length_normalized_loss": True},
        "input_size": input_size,
        "audio_encoder": "SenseVoiceEncoderSmall",
        "audio_encoder_conf": {**encoder_conf, "freeze": True, "feat_permute": True},  # as the release lists it
        "llm": "Qwen3-0.6b",
        "llm_conf": {"hub": "hf", "freeze": True, "llm_dtype": "bf16", "init_param_path": LLM_DIR, "use_lora": False},
        "audio_adaptor": "Transformer",
        "audio_adaptor_conf": {
            "downsample_rate": 1,
            "use_low_frame_rate": True,
            "ffn_dim": ffn_dim,
            "llm_dim": llm_dim,
            "encoder_dim": enc_dim,
            "n_layer": 2,
            "freeze": False,
        },  # fmt: skip
        "ctc_decoder": "Transformer",
        "detach_ctc_decoder": True,
        "ctc_decoder_conf": {
            "downsample_rate": 1,
            "ffn_dim": ffn_dim,
            "llm_dim": enc_dim,
            "encoder_dim": enc_dim,
            "n_layer": 1,
            "freeze": False,
        },  # fmt: skip
        "ctc_weight": 1.0,
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
        "ctc_vocab_size": CTC_VOCAB,
        "frontend": "WavFrontend",
        "frontend_conf": {**frontend_conf, "cmvn_file": None},
        "tokenizer": "HuggingfaceTokenizer",
        "tokenizer_conf": {"init_param_path": "${llm_conf.init_param_path}"},
        "dataset_conf": {
            "ctc_tokenizer": "SenseVoiceTokenizer",
            "ctc_tokenizer_conf": {"vocab_path": "multilingual.tiktoken", "is_multilingual": True},
        },
        "train_conf": {"max_epoch": 2, "use_lora": "${llm_conf.use_lora}", "accum_grad": 1},
    }


def _tiny_qwen3(tokenizer, hidden: int, seed: int):
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def write_nano_dir(
    src: str | Path,
    *,
    encoder_conf: dict | None = None,
    frontend_conf: dict | None = None,
    llm_hidden: int = 64,
    seed: int = 0,
    tokenizer_from: str | Path | None = None,
) -> Path:
    """A Nano directory with seeded random weights (see the module docstring); returns it. `tokenizer_from`: an LLM
    folder whose tokenizer files the LLM folder gets, as they are (a Qwen release's layout:
    llmasr.testing.tiny_llm.write_qwen_layout_llm_dir), instead of a tokenizer trained here."""
    src = Path(src)
    (src / LLM_DIR).mkdir(parents=True, exist_ok=True)
    encoder_conf = dict(encoder_conf or tiny_sensevoice_conf())
    frontend_conf = dict(frontend_conf or paraformer_frontend_conf())
    config = nano_config(encoder_conf, frontend_conf, llm_dim=llm_hidden)
    g = torch.Generator().manual_seed(seed)

    encoder = SenseVoiceEncoderSmall(input_size=config["input_size"], **encoder_conf)
    enc_dim = encoder.output_size()
    ad = config["audio_adaptor_conf"]
    adaptor = TransformerAdaptor(AdaptorConfig(type="transformer", downsample=1, ffn_dim=ad["ffn_dim"]), enc_dim,
                                 llm_hidden)  # fmt: skip
    ctc_conf = config["ctc_decoder_conf"]
    ctc_decoder = TransformerAdaptor(
        AdaptorConfig(type="transformer", downsample=1, ffn_dim=ctc_conf["ffn_dim"], n_layer=1), enc_dim, enc_dim
    )
    for module in (encoder, adaptor, ctc_decoder):
        _randomise(module, g)
    tokenizer = train_bpe_tokenizer(CTC_TEXT, 300) if tokenizer_from is None else load_tokenizer(tokenizer_from)
    llm = _tiny_qwen3(tokenizer, llm_hidden, seed)
    _randomise(llm, g)  # larger than HF's init, so that the greedy ids depend on the audio and vary per step
    state = {}
    for prefix, module in (("audio_encoder.", encoder), ("audio_adaptor.", adaptor), ("ctc_decoder.", ctc_decoder),
                           ("llm.", llm)):  # fmt: skip
        state.update({prefix + k: v.detach().clone() for k, v in module.state_dict().items()})
    state["ctc.ctc_lo.weight"] = torch.randn(CTC_VOCAB, enc_dim, generator=g) / enc_dim**0.5
    state["ctc.ctc_lo.bias"] = torch.zeros(CTC_VOCAB)
    torch.save({"state_dict": {k: v.to(torch.bfloat16) for k, v in state.items()}}, src / "model.pt")

    (src / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    metas = {
        "init_param": "model.pt",
        "config": "config.yaml",
        "tokenizer_conf": {"init_param_path": LLM_DIR},
        "llm_conf": {"init_param_path": LLM_DIR},
    }
    configuration = {"framework": "pytorch", "task": "auto-speech-recognition", "file_path_metas": metas}
    (src / "configuration.json").write_text(json.dumps(configuration, indent=2), encoding="utf-8")
    write_tiktoken(src / "multilingual.tiktoken", CTC_TEXT)
    llm.config.save_pretrained(src / LLM_DIR)
    llm.generation_config.save_pretrained(src / LLM_DIR)
    if tokenizer_from is None:
        tokenizer.save_pretrained(src / LLM_DIR)
    else:  # the files as written: a tokenizer saved by transformers' class need not be them
        for name in _TOKENIZER_FILES:
            if (Path(tokenizer_from) / name).is_file():
                shutil.copyfile(Path(tokenizer_from) / name, src / LLM_DIR / name)
    return src
