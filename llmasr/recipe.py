"""A recipe: one YAML file with `model`, `data`, `optim`, `train` and `decode` sections, plus dotted overrides.

    recipe = load_recipe("recipes/paraformer-large_qwen2.5-1.5b_lora_zero2.yaml",
                         ["optim.branches.llm.lr=2e-5", "train.epochs=3"])

Everything is typed and validated here, once, before any model or data is touched.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmasr.config_io import ConfigError, UnsetError, dump_yaml, from_dict, load_yaml, to_dict
from llmasr.config_overrides import apply_overrides
from llmasr.config_paths import override_not_found, resolve_paths
from llmasr.data.augment import SpecAugmentConfig
from llmasr.data.config import DataConfig, ValidManifestSpec
from llmasr.models.config import AdaptorConfig, EncoderConfig, ModelConfig
from llmasr.models.ctc_config import CTCConfig, CTCDecoderConfig
from llmasr.models.decoding import DecodeConfig
from llmasr.train.config import OptimConfig, SchedulerConfig, TrainConfig, refuse_untyped_branch_schedulers
from llmasr.unread_fields import drop_unread_at

log = logging.getLogger(__name__)

# The sections whose class lists fields that nothing reads (llmasr.unread_fields), where a recipe holds them ("*":
# each item of a list).
UNREAD_PLACES = (
    (("model", "encoder"), EncoderConfig),
    (("model", "adaptor"), AdaptorConfig),
    (("model", "ctc"), CTCConfig),
    (("model", "ctc", "decoder"), CTCDecoderConfig),
    (("data", "valid", "*"), ValidManifestSpec),
    (("optim", "scheduler"), SchedulerConfig),
    (("optim", "branches", "*", "scheduler"), SchedulerConfig),
)


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def validate(self, path: str) -> None:
        """Checks across sections: the decode section must suit the model the recipe trains (CTC guidance and word
        timestamps need its CTC head; guidance by a head of its own vocabulary rescores a beam's n-best), or every
        decode of the export would be refused."""
        ctc, weight = self.model.ctc, self.decode.ctc_weight
        if weight is not None and weight > 0:
            try:
                self.decode.guidance(ctc.weight > 0, ctc.vocab == "llm")
            except ConfigError as err:
                raise ConfigError(f"{err} (model.ctc.weight {ctc.weight}, model.ctc.vocab {ctc.vocab!r})") from err
        if self.decode.timestamps and ctc.weight <= 0:
            raise ConfigError(
                "decode.timestamps: word times come from the CTC head, and this recipe trains none (model.ctc.weight "
                f"{ctc.weight}); set model.ctc.weight > 0 or decode.timestamps false"
            )
        if self.decode.ctc_gate and ctc.weight <= 0:
            raise ConfigError(
                "decode.ctc_gate: the gate reads the CTC head's best path, and this recipe trains none "
                f"(model.ctc.weight {ctc.weight}); set model.ctc.weight > 0 or decode.ctc_gate false"
            )

    @staticmethod
    def saved_data(data: dict, where) -> dict:
        """A run's saved recipe (RUN_DIR/recipe.yaml) as read now: what an older llmasr let a run keep and a new
        run is refused is turned off, with a warning, so that its run still resumes, exports and decodes
        (decode.timestamps without a CTC head: nothing could time its words; data.hotwords.true_phrases past
        list_size, _lists_within_size)."""
        decode = data.get("decode") if isinstance(data.get("decode"), dict) else {}
        ctc = ((data.get("model") or {}).get("ctc") or {}) if isinstance(data.get("model"), dict) else {}
        weight = ctc.get("weight", 0.0) if isinstance(ctc, dict) else 0.0
        if decode.get("timestamps") and isinstance(weight, (int, float)) and weight <= 0:
            log.warning("%s: decode.timestamps is true but the model has no CTC head to time words: read as false",
                        where)  # fmt: skip
            data = {**data, "decode": {**decode, "timestamps": False}}
        for keys, cls in UNREAD_PLACES:  # fields nothing reads (llmasr.unread_fields), dropped with a warning
            data = drop_unread_at(data, keys, cls, where)
        return _lists_within_size(_trained_without_cap(data), where)


def _lists_within_size(data: dict, where) -> dict:
    """data.hotwords.true_phrases whose maximum is past list_size's, which an older llmasr drew (lists longer than
    list_size) and this one refuses, read as list_size's maximum, with a warning: the run still exports and decodes
    (neither draws lists), and a resume, from a recipe the same refusal has led to that value, draws within it."""
    hot = (data.get("data") or {}).get("hotwords") if isinstance(data.get("data"), dict) else None
    true, size = (hot.get("true_phrases"), hot.get("list_size")) if isinstance(hot, dict) else (None, None)
    pairs = all(isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p) for p in (true, size))
    if not pairs or true[1] <= size[1]:
        return data  # (any other value: the recipe's own check names it)
    lowered = [min(true[0], size[1]), size[1]]
    log.warning("%s: data.hotwords.true_phrases %s goes past list_size %s, which an older llmasr let a run keep (its "
                "lists held up to %d phrases): read as true_phrases %s; a resume draws lists within list_size",
                where, true, size, true[1], lowered)  # fmt: skip
    return {**data, "data": {**data["data"], "hotwords": {**hot, "true_phrases": lowered}}}


def _trained_without_cap(data: dict) -> dict:
    """A saved recipe written before data.augment.spec_augment.max_time_fraction existed (every llmasr since writes
    each key) trained its SpecAugment time masks uncapped: read as 1 where the default cap would draw other masks, so
    a resume is compared with what it trained with. Where it draws the same (no time mask, or each at most a share
    of the utterance within the cap's), the default stands."""
    augment = (data.get("data") or {}).get("augment") if isinstance(data.get("data"), dict) else None
    sa = augment.get("spec_augment") if isinstance(augment, dict) else None
    if not isinstance(sa, dict) or not sa.get("enable") or "max_time_fraction" in sa:
        return data
    masks, width = sa.get("num_time_masks", 1), sa.get("max_time_width", 12)
    if not isinstance(masks, int) or not isinstance(width, (int, float)):
        return data  # (the recipe's own check names them)
    if masks <= 0 or width < 1 and width <= SpecAugmentConfig.max_time_fraction / masks:
        return data
    augment = {**augment, "spec_augment": {**sa, "max_time_fraction": 1.0}}
    return {**data, "data": {**data["data"], "augment": augment}}


def load_recipe(
    path: str | Path | None = None, overrides: list[str] | None = None, *, data: dict | None = None,
    saved: bool = False,
):  # fmt: skip
    """Recipe from a YAML file (or a dict), with `key.path=value` overrides applied before validation. `saved`: the
    file is a run's RUN_DIR/recipe.yaml (Recipe.saved_data)."""
    if data is None:
        if path is None:
            raise ConfigError("load_recipe needs a recipe path or a dict")
        data = load_yaml(path)
        data = Recipe.saved_data(data, path) if saved else data
        # paths are relative to the recipe file, so recipes can be moved with their assets
        try:
            resolve_paths(Recipe, data, Path(path).resolve().parent, cwd=None if saved else Path.cwd())
        except ConfigError as err:
            raise located(err, path, overrides) from None
    data = apply_overrides(data, list(overrides or []))
    # the rest (overrides among them) from the working directory, named absolutely: RUN_DIR/recipe.yaml is read
    # again by export, decode and resume, started from anywhere
    resolve_paths(Recipe, data, Path.cwd())
    try:
        refuse_untyped_branch_schedulers(data.get("optim"))  # before from_dict fills in the default type
        return from_dict(Recipe, data)
    except ConfigError as err:
        raise located(ConfigError(str(err)), path, overrides) from err


def located(err: Exception, path, overrides: list[str] | None) -> Exception:
    """`err` (its own type kept) with where its key was set (where_set) on its first line: for refusals made once
    the recipe is loaded, by the model's builder or the run's checks (model.encoder.frontend's keys). An error
    located once (by another recipe's load: a resumed run's saved one) is left as it is."""
    if getattr(err, "located", False):
        return err
    err.located = True
    first, *rest = str(err).split("\n", 1)
    colon = ":" if first.endswith(":") else ""  # (a list of reasons follows)
    at = where_set(first, path, overrides or [])
    if not at.startswith(" (set by"):  # another key the line names, set by an override: the likelier change
        at = next(filter(None, (where_set(f"{k}:", None, overrides or []) for k in _keys_named(first))), at)
    if not at and path is not None and isinstance(err, UnsetError):  # the key is nowhere: the recipe that lacks it
        at = f" ({path} sets none)"
    if at.startswith(" (set by the override"):
        first = override_not_found(first)
    if at:
        err.args = ("\n".join([first.removesuffix(":") + at + colon, *rest]), *err.args[1:])
    return err


def _keys_named(line: str) -> list[str]:
    """The dotted recipe keys a message's line names after its leading one ("... but model.encoder.conf.input_size
    is 80"), in what it says is wrong: not in the advice after a ";" (a DeepSpeed key's refusal that says why,
    naming train.output_dir, is not that key's fault)."""
    said = line.split(":", 1)[-1].split(";")[0]
    return re.findall(r"(?<![\w./])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?![\w/])", said)


def _by_override(item: str, message: str) -> str:
    """ " (set by the override 'KEY=VALUE')", and where a text field got a mapping from a value holding ": " or
    ending in ":" (YAML's mapping: "Transcribe: the audio" is {Transcribe: the audio}), how to quote it."""
    key, _, value = item.partition("=")
    mapping = "expected a string, got {" in message and (": " in value or value.rstrip().endswith(":"))
    quote = (
        f"; YAML reads a ': ' or a closing ':' as a mapping: quote the value, {key}='\"{value}\"'" if mapping else ""
    )
    if "the quotes make it text" in message:  # (a number quoted: config_io._Quoted)
        quote = f"; write {key.strip()}={value.strip().strip(chr(34) + chr(39))}"
    return f" (set by the override {item!r}{quote})"


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def where_set(message: str, path, overrides: list[str]) -> str:
    """Where the value an error names by its dotted key came from: " (set by the override 'KEY=VALUE')", or
    " (RECIPE, line N)"; "" when the message names no key, or the key is nowhere (a default)."""
    key = message.split(":", 1)[0]
    top = key == "top level"  # (from_dict's name for the recipe's own keys: an unknown section)
    if not top and not re.fullmatch(r"[A-Za-z_]\w*(?:\.\w+|\[\d+\])*", key):
        return ""
    section = "" if top else key + "."
    head = message.split(";")[0]
    itself_unknown = head.startswith(f"{key}: unknown ") and "unknown key(s)" not in head  # not one of its keys
    for item in reversed(overrides):
        given = item.split("=", 1)[0].strip().lstrip("-")
        given = re.sub(r"\.(\d+)(?=[.\[]|$)", r"[\1]", given)  # a list item as errors name it: a.0.b is a[0].b
        if key == given or key.startswith((given + ".", given + "[")):
            return _by_override(item, message)
        if given.startswith((key + ".", key + "[")) and itself_unknown:
            return _by_override(item, message)  # a key unknown as a whole (optim.branches.enc), set by one inside it
        # a section's error about a key in it ("unknown key(s) ['x']; known keys are ..."): the override's if it
        # set that key
        inner = given.removeprefix(section).split(".")[0] if given.startswith(section) else None
        if inner and repr(inner) in message.split(";")[0]:
            return _by_override(item, message)
        # a key inside it whose value the error quotes (data.train[1].path=x.jsonl, "data.train[1]: ... x.jsonl")
        value = item.split("=", 1)[1].strip() if "=" in item else ""
        if inner and len(value) > 2 and not _is_number_text(value) and f" {value}" in head:
            return _by_override(item, message)
    if path is None:
        return ""
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, yaml.YAMLError):
        return ""
    mark = None  # where the key (or the list item) is written
    # an unknown key is named by its own line (the first of them; the section's where a merge `<<:` brought it)
    unknown = re.findall(r"'([^']+)'", head)[:1] if "unknown key(s)" in head else []
    parts = [] if top else re.findall(r"\w+|\[\d+\]", key)
    for part in parts:
        if isinstance(node, yaml.MappingNode) and not part.startswith("["):
            pair = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
            mark, node = (pair[0].start_mark, pair[1]) if pair else (None, None)
        elif isinstance(node, yaml.SequenceNode) and part.startswith("[") and int(part[1:-1]) < len(node.value):
            node = node.value[int(part[1:-1])]
            mark = node.start_mark
        else:
            node = None
        if node is None:
            return ""  # not written in the file: a default
    pairs = node.value if isinstance(node, yaml.MappingNode) else []
    own = [k for k, _ in pairs if isinstance(k, yaml.ScalarNode) and [k.value] == unknown]
    mark = own[0].start_mark if own else mark
    if top and mark is None:
        return ""
    return f" ({path}, line {mark.line + 1})" if mark else f" ({path})"


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    dump_yaml(recipe, path)


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_dict(recipe)
