"""`llmasr export`: turn a training checkpoint into a self-contained model directory.

    llmasr export --checkpoint RUN_DIR[/checkpoints/TAG] --output DIR [--dtype bf16|fp16|fp32]
                  [--average N [--average-by last|best]] [--adapter-only]

Steps: locate the checkpoint(s); reload the run's recipe; refuse if the pretrained base directories the recipe
names are not the ones the run was trained on (fingerprints); read the trained tensors offline (any ZeRO stage,
CPU only); optionally average N checkpoints (the mean of their models: LoRA's deltas B @ A averaged, not its factors,
llmasr.export.lora_average); rebuild the model from the recipe and load the trained tensors strictly, refusing a
frozen branch whose weights were random (llmasr.export.trained_model); merge LoRA; write

    DIR/llm/                   the LLM with LoRA merged (HF format, safetensors, sharded when large), its tokenizer
                               with the chat template (defaulting the prompt's template_kwargs), generation_config.
                               eos_token_id = the prompt's end token, then the LLM's other end tokens
    DIR/encoder.safetensors    the encoder, encoder LoRA merged into plain weights
    DIR/adaptor.safetensors
    DIR/ctc_head.safetensors   (+ the CTC vocabulary file) when the model has a CTC head
    DIR/am.mvn                 the CMVN of an fbank frontend, when it has one
    DIR/llmasr_model.yaml      architecture, frontend, prompt, decode settings, the longest audio trained on
                               (training.longest_seconds: longer audio is decoded in windows), source checkpoints
                               (see llmasr.models.exported)

`--adapter-only` writes DIR/adapter/ (a peft adapter: adapter_config.json + adapter_model.safetensors, plus the
tokenizer) instead of DIR/llm/; it is applied to the base LLM at load time (`PeftModel.from_pretrained`). It is
refused when the run trained more of the LLM than LoRA (model.llm.freeze: false): the adapter could not carry that.
Averaged, the adapter is the best rank-r approximation of the mean of the checkpoints' deltas (exact when they span
rank r); the description's source.average.adapter_residual says how much of the worst layer's it leaves out.

The directory is written under a hidden sibling and put in place at the end (llmasr.export.staged_dir), so an
interrupted export never looks complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from llmasr.config_io import to_dict
from llmasr.config_paths import input_paths
from llmasr.export.finetune_recipe import FINETUNE_NAME, write_next_round
from llmasr.export.merge import (  # noqa: F401
    ADAPTER_FILE,
    ExportError,
    cast_llm,
    check_adapter_only,
    exported_llm,
    merge_llm,
    merge_lora_modules,
    refuse_adapter_only_of,
)
from llmasr.export.staged_dir import discarded_on_error, output_dir, publish, staging_dir, writing
from llmasr.export.trained_model import load_checkpoint_model, load_trained, run_recipe  # noqa: F401  (public API)
from llmasr.models.builder import output_dim
from llmasr.models.decode_guards import other_end_ids
from llmasr.models.encoder_spec import encoder_spec
from llmasr.models.exported import MODEL_FILE
from llmasr.models.fingerprint import dir_fingerprint
from llmasr.models.fsmn_vad import FsmnVad
from llmasr.models.llm import DTYPES, base_lm, dtype_name
from llmasr.models.rotary import plain_transformers_line
from llmasr.models.shipped_generation import SAMPLING_ONLY, SET_ASIDE, left_out_line
from llmasr.run_dir import CHECKPOINTS, read_meta, resolve_checkpoint
from llmasr.written_by import written_by

log = logging.getLogger(__name__)

# generation_config.json's settings for sampling (and penalties), and those llmasr's search sets aside (another search,
# or one generate cannot run), that an export leaves unset: greedy by default
SAMPLING_KEYS = (*SAMPLING_ONLY, "repetition_penalty", "no_repeat_ngram_size", *SET_ASIDE)

FORMAT = "llmasr-exported-1"


# ------------------------------------------------------------------------------------------------ describing
def encoder_description(cfg) -> dict:
    """What the exported-model loader needs to rebuild the encoder: {"type", "class", "conf"}, from the registry."""
    spec = encoder_spec(cfg)
    return {"type": spec.entry.type, "class": spec.entry.class_name, "conf": spec.conf}


def _save_tensors(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    # one metadata key, as save_pretrained writes: safetensors orders several at random, and the same checkpoint
    # exported twice gave files of different bytes (checksums, caches)
    save_file(state, str(path), metadata={"format": "pt"})


def _plain(value):
    """yaml.safe_dump-able copy (tuples -> lists, dataclasses -> dicts)."""
    return json.loads(json.dumps(to_dict(value), default=str))


# ------------------------------------------------------------------------------------------------ writing
def export_model(
    checkpoint: str | Path,
    output: str | Path,
    *,
    tag: str | None = None,
    dtype: str | torch.dtype | None = None,
    average: int = 1,
    average_by: str | None = None,
    adapter_only: bool = False,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> Path:
    """Export a checkpoint (see the module docstring). Returns the output directory. `trust_remote_code` allows
    a run whose recipe sets model.llm.trust_remote_code to load its LLM's Python files."""

    with writing(output, flag="--output", error=ExportError):  # held from the emptiness check to the last rename
        out = output_dir(output, overwrite=overwrite, flag="--output", error=ExportError)
        max_shard_size = shard_bytes(max_shard_size)
        asked = None if dtype is None else dtype_name(dtype, error=ExportError)
        run = _refuse_the_run_itself(out, checkpoint, tag)
        recipe_read = run_recipe(run, trust_remote_code=trust_remote_code)
        _refuse_what_the_run_reads(out, recipe_read)  # before any weight is read
        if adapter_only:  # a run that trained the base LLM: refused before its checkpoints are read and averaged
            refuse_adapter_only_of(recipe_read, read_meta(resolve_checkpoint(checkpoint, tag).path).trainable)

        model, info = load_checkpoint_model(
            checkpoint, tag=tag, average=average, average_by=average_by, trust_remote_code=trust_remote_code
        )
        recipe, longest = info.pop("recipe"), info.pop("longest_seconds")
        residuals = info.pop("lora_residuals")
        if adapter_only:
            check_adapter_only(model, recipe)
            _record_adapter_residual(info, residuals)
        llm_dtype = asked or recipe.model.llm.dtype

        tmp = staging_dir(out)
        tmp.mkdir(parents=True)
        with discarded_on_error(tmp):
            write_model_dir(
                model, info, recipe, tmp, llm_dtype, adapter_only=adapter_only, max_shard_size=max_shard_size,
                training_max_duration=longest,
            )  # fmt: skip
            if not adapter_only:  # a saved adapter loads frozen: LoRA cannot train on over it
                write_next_round(tmp, recipe, info["run_dir"])  # the next round's recipe, beside the model
            output_dir(output, overwrite=overwrite, flag="--output", error=ExportError)  # filled meanwhile: kept
            publish(tmp, out, MODEL_FILE)
        log.info("exported %s (tags %s) to %s", info["run_dir"], ", ".join(info["tags"]), out)
        if adapter_only:
            log.info("no %s in %s: a saved adapter is loaded frozen, so LoRA cannot train on over it; export without "
                     "--adapter-only for a folder to train on from", FINETUNE_NAME, out)  # fmt: skip
        return Path(output).expanduser()


def _record_adapter_residual(info: dict, residuals: dict[str, float]) -> None:
    """An adapter of rank r holds the best rank-r part of the averaged LoRA deltas: record in the description (and
    say) how much of the averaged model the LLM's adapter leaves out, the relative Frobenius norm of its worst
    layer's remainder (0: the checkpoints' deltas spanned rank r; the encoder is merged, whole)."""
    llm = {path: rel for path, rel in residuals.items() if path.startswith("llm.")}
    if not llm:
        return
    worst = max(llm, key=llm.get)
    info["average"]["adapter_residual"] = llm[worst]
    (log.warning if llm[worst] > 1e-6 else log.info)(
        "--adapter-only --average %d: the adapter holds the best rank-r approximation of the averaged LoRA; it leaves "
        "out %.3g of %s's averaged delta (relative Frobenius norm; the merged export holds all of it)",
        info["average"]["n"], llm[worst], worst,
    )  # fmt: skip


_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}  # decimal, as save_pretrained counts


def shard_bytes(size: str | int) -> int:
    """--max-shard-size as bytes: a whole number of bytes, or a number with KB, MB, GB or TB (5GB, 1.5GB)."""
    text = str(size).strip()
    number, unit = (text[:-2].strip(), text[-2:].upper()) if text[-2:].upper() in _SIZE_UNITS else (text, "")
    try:
        value = float(number) * _SIZE_UNITS.get(unit, 1)
    except ValueError:
        value = float("nan")
    if not (value >= 1 and value < float("inf")) or (not unit and not number.isdigit()):
        raise ExportError(f"--max-shard-size {size!r}: give bytes (200000000) or a size with KB, MB, GB or TB (5GB)")
    return int(value)


def _refuse_what_the_run_reads(out: Path, recipe) -> None:
    """An --output that is or holds a base model, a file or the data the run's recipe names would be deleted by
    --overwrite (an adapter-only export even points at its base LLM): refused before anything is written."""
    for key, path in input_paths(recipe):
        where = Path(path).expanduser().resolve()
        if where.is_relative_to(out):
            raise ExportError(
                f"--output {out}: {'is' if where == out else 'holds'} {where} ({key} of the run's recipe), which "
                "writing the export would replace; choose another folder"
            )


def _refuse_the_run_itself(out: Path, checkpoint, tag: str | None) -> Path:
    """An --output that is the run directory, holds it or lies in its checkpoints would be deleted with them
    (--overwrite replaces the whole folder): refused before anything is read. RUN_DIR/export is fine. Returns the
    run directory."""
    run = resolve_checkpoint(checkpoint, tag).run_dir.resolve()
    where, ckpts = out.resolve(), (run / CHECKPOINTS).resolve()
    if where == run or run.is_relative_to(where) or where.is_relative_to(ckpts):
        raise ExportError(
            f"--output {out}: {'is' if where == run else 'holds' if run.is_relative_to(where) else 'lies in'} the "
            f"training run {run} being exported, which writing the export would replace; choose another folder "
            f"(e.g. {run / 'export'})"
        )
    return run


def _write_vad(decode, tmp: Path) -> dict:
    """The description's `decode` entry; a decode.vad directory is copied into DIR/vad and named relative to DIR."""
    entry = _plain(decode)
    if decode.vad is not None:
        FsmnVad.from_dir(decode.vad).copy_to(tmp / "vad")
        entry["vad"] = "vad"
    return entry


def _write_ctc(model, recipe, tmp: Path, encoder_dim: int) -> dict | None:
    """DIR/ctc_head.safetensors and its vocabulary file; the description's `ctc` entry (None without a head)."""
    if model.ctc_head is None:
        return None
    _save_tensors(model.ctc_head, tmp / "ctc_head.safetensors")
    vocab, seg_dict = recipe.model.ctc.vocab, recipe.model.ctc.seg_dict
    if vocab != "llm":
        src = Path(vocab)
        name = "ctc_vocab" + "".join(src.suffixes[-1:])
        shutil.copyfile(src, tmp / name)
        vocab = name
    if seg_dict is not None:
        shutil.copyfile(seg_dict, tmp / "ctc_seg_dict")
        seg_dict = "ctc_seg_dict"
    return {
        "file": "ctc_head.safetensors",
        "vocab": vocab,
        "vocab_size": int(model.ctc_tokenizer.vocab_size),
        "encoder_dim": encoder_dim,
        "weight": recipe.model.ctc.weight,
        "label_smoothing": recipe.model.ctc.label_smoothing,
        "decoder": None if recipe.model.ctc.decoder is None else to_dict(recipe.model.ctc.decoder),
        "detach_encoder": recipe.model.ctc.detach_encoder,
        "blank": recipe.model.ctc.blank,
        "seg_dict": seg_dict,
    }


def _save_tokenizer(prompt, where: Path) -> None:
    """The prompt's tokenizer, its chat template rendering llmasr's prompt without the variables llmasr passes
    (PromptBuilder.standalone_template): plain transformers then writes the prompt the model was trained on."""
    tokenizer, own = prompt.tokenizer, prompt.tokenizer.chat_template
    tokenizer.chat_template = prompt.standalone_template()
    try:
        tokenizer.save_pretrained(str(where))
    finally:
        tokenizer.chat_template = own


def _write_llm(model, recipe, tmp: Path, dtype_name: str, *, adapter_only: bool, max_shard_size) -> dict:
    """DIR/llm (merged), DIR/adapter or DIR/tokenizer; the description's `llm` entry."""
    if adapter_only:
        from peft import PeftModel

        if isinstance(model.llm, PeftModel):
            model.llm.save_pretrained(str(tmp / "adapter"), **ADAPTER_FILE)
            _save_tokenizer(model.prompt, tmp / "adapter")
            llm_entry = {"kind": "adapter", "dir": "adapter"}
        else:
            if any(p.requires_grad for p in model.llm.parameters()):
                raise ExportError(
                    "--adapter-only: the LLM was fine-tuned without LoRA, so there is no adapter; export the full model"
                )
            _save_tokenizer(model.prompt, tmp / "tokenizer")
            llm_entry = {"kind": "base", "dir": "tokenizer"}

        base_path = str(Path(recipe.model.llm.path).resolve())
        llm_entry.update(base=base_path, base_fingerprint=dir_fingerprint(base_path))
    else:
        merged = exported_llm(model.llm, DTYPES[dtype_name])
        merged.config.use_cache = True
        if getattr(merged.config, "output_router_logits", False):  # a training setting of an MoE
            merged.config.output_router_logits = False
            log.warning(
                "the export's llm/config.json sets output_router_logits false: with it on, transformers' generate "
                "over a batch with an attention mask fails (each cached step's router logits against the whole "
                "mask); a round trained on from OUT/finetune.yaml has no router load-balancing loss unless "
                "OUT/llm/config.json sets it true again"
            )
        gen = merged.generation_config
        end = int(model.prompt.end_id)  # first: the answer's end; the LLM's other ends stop generate as well
        others = other_end_ids(gen, model.prompt.tokenizer, end)
        gen.eos_token_id = [end, *others] if others else end
        gen.pad_token_id = int(model.prompt.pad_id)
        # a transcriber writes the likeliest text, as llmasr decodes: a chat model's published sampling settings
        # (Qwen2.5-Instruct's do_sample, temperature 0.7, top_p 0.8, repetition_penalty 1.05) had made a plain
        # `generate` on the export sample its transcripts
        if line := left_out_line(gen, SAMPLING_KEYS, "the export's llm/generation_config.json"):
            log.info("%s", line)
        unset = type(gen)()
        for key in (k for k in SAMPLING_KEYS if hasattr(unset, k)):  # top_h: a key of transformers 5 only
            setattr(gen, key, getattr(unset, key))  # the version's default: use_diff then leaves it out
        gen.do_sample = False
        # save_pretrained refuses a changed generation config its validation warns about, as many published ones do
        # (sampling flags beside do_sample: false, which generate ignores): written as the LLM's was, end tokens set
        merged.generation_config = type(gen)()
        try:
            merged.save_pretrained(str(tmp / "llm"), max_shard_size=max_shard_size)
        finally:
            merged.generation_config = gen
        gen.to_json_file(str(tmp / "llm" / "generation_config.json"), use_diff=True)
        _save_tokenizer(model.prompt, tmp / "llm")
        llm_entry = {"kind": "merged", "dir": "llm"}
    llm_entry.update(dtype=dtype_name, trust_remote_code=bool(recipe.model.llm.trust_remote_code))
    rotary = recipe.model.llm.rotary_dtype
    if rotary is not None:
        llm_entry["rotary_dtype"] = rotary
        log.info(
            "the exported LLM (%s/) computes with its rotary frequencies rounded to %s (model.llm.rotary_dtype, "
            "recorded in %s and applied by llmasr decode); transformers' from_pretrained recomputes them exactly, so "
            "for the same outputs with plain transformers run after loading it (model: the AutoModelForCausalLM): %s",
            llm_entry["dir"], rotary, MODEL_FILE, plain_transformers_line(base_lm(model.llm), rotary),
        )  # fmt: skip
    return llm_entry


def write_model_dir(
    model, info: dict, recipe, tmp: Path, dtype_name: str, *, adapter_only: bool = False, max_shard_size="5GB",
    training_max_duration: float | None = None,
) -> None:  # fmt: skip
    """Write the exported layout of `model` into the existing directory `tmp`; `recipe` (its `model` and `decode`
    sections) describes the architecture, `info` is recorded as the model's `source`, `training_max_duration` (the
    longest audio it was trained on, None: unknown) as `training.longest_seconds`: decoding cuts longer utterances
    into windows. Also used by `llmasr convert`."""
    import yaml

    # Speech branches: plain modules, float32 (small; the LLM dtype is what matters for memory).
    enc_spec = encoder_description(recipe.model.encoder)
    encoder = merge_lora_modules(model.encoder)
    _save_tensors(encoder, tmp / "encoder.safetensors")
    _save_tensors(model.adaptor, tmp / "adaptor.safetensors")
    llm_base = base_lm(model.llm)
    llm_dim = int(llm_base.get_input_embeddings().weight.shape[-1])
    adaptor_conf = _plain(recipe.model.adaptor)
    adaptor_conf.update(init_from=None, init_prefix="", freeze=False)
    ctc = _write_ctc(model, recipe, tmp, output_dim(encoder))

    frontend = _plain(model.frontend)
    if frontend.get("cmvn_file"):
        shutil.copyfile(frontend["cmvn_file"], tmp / "am.mvn")
        frontend["cmvn_file"] = "am.mvn"
    llm_entry = _write_llm(model, recipe, tmp, dtype_name, adapter_only=adapter_only, max_shard_size=max_shard_size)

    description = {
        "format": FORMAT,
        "written_by": written_by(),
        "encoder": {**enc_spec, "file": "encoder.safetensors"},
        "adaptor": {
            "conf": adaptor_conf,
            "input_dim": output_dim(encoder),
            "llm_dim": llm_dim,
            "file": "adaptor.safetensors",
        },
        "ctc": ctc,
        "frontend": frontend,
        "prompt": {
            "task": model.prompt.task,
            "system": model.prompt.system,
            # named templates (a dict): the one the prompt renders with, as the recipe key holds one template
            "chat_template": model.prompt.tokenizer.get_chat_template(),
            "audio_separator": model.prompt.audio_separator,
            "hotwords_template": model.prompt.hotwords_template,
            "hotwords_separator": model.prompt.hotwords_separator,
            "hotwords_max_tokens": model.prompt.hotwords_max_tokens,
            "template_kwargs": dict(model.prompt.template_kwargs),
        },
        "llm": llm_entry,
        "decode": _write_vad(recipe.decode, tmp),
        "training": {"longest_seconds": training_max_duration},
        "source": _plain(info),
    }
    (tmp / MODEL_FILE).write_text(yaml.safe_dump(description, sort_keys=False, allow_unicode=True), encoding="utf-8")
