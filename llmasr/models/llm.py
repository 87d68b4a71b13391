"""Loading a Hugging Face causal LM from a local directory, with LoRA through peft.

Under ZeRO-3 the trainer keeps a `transformers.integrations.HfDeepSpeedConfig` alive before calling `load_llm`,
so `from_pretrained` partitions the weights as it reads them (zero.Init) and no rank ever holds the whole LLM.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import torch
from torch import nn

from llmasr.config_io import ConfigError, checked
from llmasr.config_paths import nested_hint, not_found
from llmasr.errors import EVERY_RANK
from llmasr.models.config import LoraConfig
from llmasr.models.llm_checkpointing import set_activation_checkpointing
from llmasr.models.llm_files import (
    LLMWeightsError,
    check_adapter_weights,
    check_llm_weights,
    refuse_misfit,
    refuse_non_finite,
    stored_shapes,
    weight_files,
)
from llmasr.models.lora import apply_lora, peft_wrapping
from llmasr.models.tokenizer import TOKENIZER_FILES, LLMLoadError, load_tokenizer, tokenizer_dir
from llmasr.text_files import not_utf8

log = logging.getLogger(__name__)

# transformers builds a model with class-wide switches set for the while (PreTrainedModel.tie_weights made a no-op,
# then put back): two builds in two threads at once put back each other's no-op, and every later load in the process
# left tied embeddings untied. One build at a time (a Transcriber loaded per thread, a test's thread ranks).
_BUILDING = threading.RLock()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The spellings the Python API and the command line take for the LLM's dtype -> its DTYPES name
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", **{name: name for name in DTYPES}}


def dtype_name(dtype: str | torch.dtype, *, what: str = "dtype", error: type[Exception] = ValueError) -> str:
    """The DTYPES name of `dtype`: bf16, fp16, fp32, the recipe's bfloat16, float16, float32, or their torch dtypes
    (every function that takes the LLM's dtype reads it here); anything else is refused with `error` naming `what`."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return next(k for k, v in DTYPES.items() if v == dtype)
    elif isinstance(dtype, str) and dtype in DTYPE_NAMES:
        return DTYPE_NAMES[dtype]
    raise error(f"{what} must be one of bf16, fp16, fp32 (or bfloat16, float16, float32, or their torch dtypes); "
                f"got {dtype!r}")  # fmt: skip


# load_llm honours a live HfDeepSpeedConfig: under ZeRO-3 from_pretrained partitions weights as it reads them.
SUPPORTS_ZERO_INIT = True


def embedding_shape(model: nn.Module) -> tuple[int, ...]:
    """[vocab, hidden] of the input embeddings, also when ZeRO-3 has partitioned them (weight.shape is [0])."""
    weight = model.get_input_embeddings().weight
    return tuple(getattr(weight, "ds_shape", weight.shape))


def check_llm_dir(path: str | Path, *, tokenizer: str | Path | None = None, key: str = "model.llm.path") -> Path:
    """`path` after checking it holds config.json and tokenizer files (those may be in `tokenizer` instead); errors
    name the recipe `key` that gave it."""
    if not str(path).strip():
        raise LLMLoadError(f"{key}: not set; the LLM directory (a Hugging Face model directory) is required")
    path = Path(path)
    if not path.is_dir():
        # ORG/NAME, as from_pretrained takes a hub id, where no folder ORG is there
        hub = re.fullmatch(r"\w[\w.-]*/[\w.-]+", str(path)) and not path.parent.exists()
        fetch = (f"; llmasr reads a local folder and downloads nothing: `huggingface-cli download {path} --local-dir "
                 "DIR` fetches it") if hub else ""  # fmt: skip
        raise LLMLoadError(not_found(key, "LLM directory", path) + fetch)
    if not (path / "config.json").is_file():
        raise LLMLoadError(
            f"{path}: no config.json; expected a Hugging Face model directory (save_pretrained)"
            f"{_snapshot(path) or nested_hint(path, 'config.json', key)}"
        )
    read_config_json(path / "config.json")
    tok_dir = Path(tokenizer) if tokenizer is not None else path
    if not any((tok_dir / name).is_file() for name in TOKENIZER_FILES):
        raise LLMLoadError(f"{tok_dir}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})")
    return path


def _snapshot(path: Path) -> str:
    """Where `path` is a Hugging Face cache folder (models--ORG--NAME: snapshots/HASH and refs/main), the snapshot
    to give instead."""
    snapshots = sorted(p for p in (path / "snapshots").glob("*") if (p / "config.json").is_file())
    if not snapshots:
        return ""
    main = path / "refs" / "main"
    named = main.read_text(encoding="utf-8").strip() if main.is_file() else ""
    chosen = next((p for p in snapshots if p.name == named), snapshots[-1])
    return f"; {path} is a Hugging Face cache folder: give its snapshot, {chosen}"


def read_config_json(file: Path) -> dict:
    """config.json as a JSON object, else LLMLoadError naming the file and where it breaks (transformers' own error
    had said only "not a valid JSON file", as an internal error)."""
    try:
        config = json.loads(file.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise LLMLoadError(f"{file}: {not_utf8(err, file)}") from None
    except json.JSONDecodeError as err:
        raise LLMLoadError(f"{file}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if not isinstance(config, dict):
        raise LLMLoadError(f"{file}: a JSON {type(config).__name__}, not the object of a model's settings")
    return config


def warn_remote_code(path: str | Path, source: str) -> None:
    """trust_remote_code is only ever on because the user said so (`source`); say what it allows."""
    log.warning(
        "trust_remote_code is on (%s): transformers may import and run the Python files in %s; "
        "use it only for a directory you trust", source, path, extra=EVERY_RANK,
    )  # fmt: skip


def load_llm(
    path: str | Path,
    *,
    lora: LoraConfig | None = None,
    freeze: bool = True,
    dtype: str | torch.dtype = "float32",
    gradient_checkpointing: bool = False,
    checkpoint_every: int = 1,
    trust_remote_code: bool = False,
    adapter: str | Path | None = None,
    tokenizer: str | Path | None = None,
    pretrained: bool = True,
    shapes_only: bool = False,
):
    """Load (model, tokenizer) from a local HF directory; the model is a peft PeftModel when `lora` or `adapter` is
    given. `pretrained=False` builds the architecture from config.json with fresh weights and reads no weight file
    (under a meta device context this costs no memory); `shapes_only` then checks the weight files' tensor names and
    shapes against it (llmasr.models.llm_files), reading no tensor data."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = check_llm_dir(path, tokenizer=tokenizer_dir(path, tokenizer, adapter))
    dtype = dtype_name(dtype, error=LLMLoadError)
    if lora is not None:  # a LoraConfig made in Python, or a dict of its keys, checked as a recipe's before the load
        lora = checked(LoraConfig, lora, "model.llm.lora")
    if trust_remote_code:
        warn_remote_code(path, "model.llm.trust_remote_code")
    model = _causal_lm(path, DTYPES[dtype], trust_remote_code, pretrained=pretrained, shapes_only=shapes_only)
    tok = load_tokenizer(tokenizer_dir(path, tokenizer, adapter), trust_remote_code=trust_remote_code)
    vocab_rows = embedding_shape(model)[0]
    if len(tok) > vocab_rows:
        raise LLMLoadError(
            f"{path}: the tokenizer has {len(tok)} tokens but the embedding matrix only {vocab_rows} rows"
        )
    if freeze:
        model.requires_grad_(False)
    if gradient_checkpointing:
        set_activation_checkpointing(model, checkpoint_every)
    if adapter is not None:
        model = load_adapter(model, Path(adapter), pretrained=pretrained)
        if shapes_only or pretrained:  # peft leaves a tensor its file lacks at the fresh value and only warns
            check_adapter_weights(Path(adapter), model)
    if lora is not None:
        model = apply_lora(model, lora, what="model.llm", hf_model=True, freeze=freeze)
    return model, tok


def dtype_argument(dtype: torch.dtype) -> dict:
    """The dtype keyword of transformers' model loaders: `dtype`, or `torch_dtype` for a transformers from before the
    rename, which hands `dtype` on to the model's constructor, where it is refused as an unexpected argument."""
    import transformers
    from packaging.version import Version

    return {"dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype": dtype}


def _causal_lm(path: Path, dtype: torch.dtype, trust_remote_code: bool, *, pretrained: bool, shapes_only: bool):
    """The causal LM of `path`: its weights read (`pretrained`), or fresh ones from config.json with the weight
    files' names and shapes checked against it (`shapes_only`), or fresh ones alone."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except ValueError as err:  # no model_type, or one this transformers does not know: the folder's fault
        raise LLMLoadError(f"{path / 'config.json'}: transformers cannot build a model from it: {err}") from None
    # The weight files there, not Git LFS pointers, not cut short (transformers' own errors do not name the file):
    # check_llm_weights reads their headers below; a model with its own code may not build on the meta device, so
    # for one the headers are read alone.
    if pretrained and trust_remote_code:
        stored_shapes(weight_files(path))
    info = {}  # what the load found missing or of another shape (ignore_mismatched_sizes: listed there, not raised)
    try:
        with _BUILDING:
            model, info = _built(path, config, dtype, trust_remote_code, pretrained=pretrained)
    except ConfigError:
        raise  # the weight files' own refusal (check_llm_weights)
    except ValueError as err:
        raise LLMLoadError(f"{path}: not loadable as a causal LM ({config.model_type}): {err}") from err
    refuse_misfit(path, info.get("missing_keys"), info.get("mismatched_keys"))
    if pretrained and dtype == torch.float16:
        refuse_non_finite(path, model, "float16")
    if shapes_only:
        check_llm_weights(path, model, remote_code=trust_remote_code)
    return model


def _built(path: Path, config, dtype: torch.dtype, trust_remote_code: bool, *, pretrained: bool) -> tuple:
    """(model, loading info) as transformers builds them (_causal_lm's checks around it; under _BUILDING)."""
    from transformers import AutoModelForCausalLM

    info = {}
    if pretrained and not trust_remote_code:
        # the files' names and shapes first, as `llmasr check` checks them: ZeRO-3's partitioned load raises its
        # own size-mismatch error, which names no directory
        with torch.device("meta"), _outside_zero3():
            check_llm_weights(path, AutoModelForCausalLM.from_config(config))
    if pretrained:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), config=config, local_files_only=True, trust_remote_code=trust_remote_code,
            output_loading_info=True, ignore_mismatched_sizes=True, **dtype_argument(dtype),
        )  # fmt: skip
    else:
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, **dtype_argument(dtype))
    return model, info


def _outside_zero3():
    """A context in which transformers builds a model whole even while an HfDeepSpeedConfig of ZeRO-3 is live (its
    zero.Init would partition a meta-device model built only for its shapes)."""
    from contextlib import nullcontext

    from transformers import modeling_utils

    return getattr(modeling_utils, "set_zero3_state", nullcontext)()


def load_adapter(model: nn.Module, adapter: Path, *, pretrained: bool) -> nn.Module:
    """A saved peft adapter on `model`, frozen (its fresh-weight twin when `pretrained` is false)."""
    import peft

    if not (adapter / "adapter_config.json").is_file():
        raise LLMLoadError(f"{adapter}: no adapter_config.json; model.llm.adapter must be a saved peft adapter")
    with peft_wrapping():
        if pretrained:
            try:
                model = peft.PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
            except KeyError as err:  # peft indexes a modules_to_save tensor the file lacks
                raise LLMWeightsError(
                    f"{adapter}: the adapter's weights lack {err.args[0]}, which its adapter_config.json needs"
                ) from err
        else:
            model = peft.get_peft_model(model, peft.PeftConfig.from_pretrained(str(adapter)))
    model.requires_grad_(False)
    return model


def text_setting(config):
    """A getter of the LLM's text settings (None for one it lacks): `config` is its transformers config, or its
    config.json as a dict; a multimodal one's text_config."""
    if isinstance(config, dict):
        return (config.get("text_config") or config).get
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return lambda key: getattr(config, key, None)


def logit_transform(config):
    """What a causal LM's own forward does to its output head's logits, which llmasr's labels-only loss must do too
    (generation and beam scores go through that forward): Gemma 2's soft cap cap * tanh(x / cap)
    (final_logit_softcapping), Granite's division by logits_scaling, Cohere's multiplication by logit_scale; None
    for the rest (Qwen, Llama). `config`: the LLM's transformers config, or its config.json as a dict."""
    get = text_setting(config)
    cap, divide, multiply = get("final_logit_softcapping"), get("logits_scaling"), get("logit_scale")
    steps = []
    if cap:
        steps.append(lambda x, c=float(cap): c * torch.tanh(x / c))
    if divide is not None and float(divide) != 1.0:
        steps.append(lambda x, d=float(divide): x / d)
    if multiply is not None and float(multiply) != 1.0:
        steps.append(lambda x, m=float(multiply): x * m)
    if not steps:
        return None

    def transform(x):
        for step in steps:
            x = step(x)
        return x

    return transform


def base_lm(llm: nn.Module) -> nn.Module:
    """The Hugging Face model itself: under a peft wrapper (LoRA), the model it wraps; else `llm`."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def causal_lm_parts(llm: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(input embeddings, decoder stack returning hidden states, output head) of a HF or peft-wrapped LM."""
    base = base_lm(llm)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    return base.get_input_embeddings(), decoder, base.get_output_embeddings()
