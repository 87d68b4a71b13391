"""The fine-tuning recipe `llmasr convert funasr SRC OUT` writes into OUT (RECIPE_NAME), ready for `llmasr check` /
`llmasr train` once the manifests are given (data.train=[...] data.valid=[...]).

Its `model` section is the model OUT's llmasr_model.yaml describes, as decode and the start-folder check
(llmasr.models.start_from) read it (llmasr.models.exported.exported_model_section): the encoder's sizes and
frontend, the adaptor, the CTC head where the branch converted, the prompt; so a Nano release of other sizes (or
a fine-tuned one) fits without copying a number. Its files are named relative to OUT, which a recipe's paths are
(they resolve against the recipe's folder), so the folder can be moved whole. The fine-tuning choices (frozen
encoder, LoRA, lrs and schedules, precision, batching, validation) are those of the one template shipped in the
package (TEMPLATE), which recipes/fun-asr-nano_lora_zero2.yaml states too.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from llmasr.export.finetune_recipe import dump_recipe, relative
from llmasr.models.exported import exported_model_section

RECIPE_NAME = "finetune_lora_zero2.yaml"
TEMPLATE = Path(__file__).resolve().with_name("nano_finetune.yaml")


def _set_over(base: dict, choices: dict) -> dict:
    """`base` with `choices` set over it, mapping into mapping; a whole mapping (a LoRA setting) replaces."""
    out = dict(base)
    for key, value in choices.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _set_over(out[key], value)
        else:
            out[key] = value
    return out


def finetune_recipe(model_dir: Path, run_name: str) -> dict:
    """The recipe (a dict) that fine-tunes the model whose description `model_dir` holds; its paths relative to
    `model_dir`, its run folder exp/<run_name>_lora (from the working directory the run is started in)."""
    model_dir = Path(model_dir).resolve()
    template = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))  # plain values: dumped again as read
    model = relative(exported_model_section(model_dir, read_llm=False), model_dir)
    if not model.get("ctc", {}).get("weight"):  # no CTC head (the branch was left out): no model.ctc at all
        model.pop("ctc", None)
    for part, choices in template.pop("model").items():  # only over parts the folder has
        if isinstance(model.get(part), dict):
            model[part] = _set_over(model[part], choices)
    recipe = {"model": model, **template}
    recipe["train"] = {**recipe.get("train", {}), "output_dir": f"exp/{run_name}_lora"}
    return recipe


def header(out: str) -> str:
    config = f"{out.rstrip('/')}/{RECIPE_NAME}"
    data = "data.train=[data/train.jsonl] data.valid=[data/dev.jsonl]"
    return "\n".join(
        [
            "# Fine-tunes the model in this folder: written by `llmasr convert funasr` beside llmasr_model.yaml, whose",
            "# sizes, frontend, prompt and CTC head the model section states; encoder frozen, adaptor and CTC head",
            "# trained, LoRA on the LLM, DeepSpeed ZeRO-2, bf16 (the choices of recipes/fun-asr-nano_lora_zero2.yaml).",
            "# Paths are relative to this file's folder: move the folder whole. The run goes to train.output_dir, from",
            "# the folder the run is started in. Give your manifests (llmasr JSONL or Nano's ChatML jsonl) on the",
            "# command line; check first (no GPU needed), then launch:",
            f"#   llmasr check --config {config} --deepspeed zero2 --world-size 8 \\",
            f"#       {data}",
            f"#   deepspeed --num_gpus 8 --module llmasr train --config {config} --deepspeed zero2 \\",
            f"#       {data}",
            "",
        ]
    )


def write_finetune_recipe(model_dir: Path, out: Path, named: str | Path) -> Path:
    """Write RECIPE_NAME into `model_dir`, the staged folder that becomes `out` (named `named` on the command
    line); returns the path it will have in `out`."""
    recipe = finetune_recipe(model_dir, Path(out).name)
    body = dump_recipe(recipe)
    (Path(model_dir) / RECIPE_NAME).write_text(header(str(named)) + body, encoding="utf-8")
    return Path(named).expanduser() / RECIPE_NAME
