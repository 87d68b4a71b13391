"""README's reference claims stay true of the code: every `--flag` a section names is a flag of the commands that
section documents, every `llmasr ...` command line in a code block parses with its verb's own parser, every dotted
recipe key it names is a key of the Recipe, the key tables' defaults and the defaults its prose states are the
dataclasses', and the files and log fields it lists are the ones the code writes. ("Coming from FunASR" has its own
test, tests/test_readme_funasr.py; the resume table, tests/train/test_resume_recipe.py.)"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from llmasr.cli import DATA_TOOLS, VERBS
from llmasr.config_io import from_dict, to_dict
from llmasr.data.augment import SpecAugmentConfig
from llmasr.data.config import DataConfig
from llmasr.data.hotwords import HotwordsConfig
from llmasr.export.decode_folders import MANIFEST_INDEX, OUTPUT_FILES
from llmasr.models.config import LLMConfig, ModelConfig, PromptConfig
from llmasr.models.decoding import AUTO_CTC_WEIGHT, AUTO_HOTWORD_BOOST, DecodeConfig
from llmasr.models.speech_llm import SpeechLLM
from llmasr.recipe import Recipe
from llmasr.run_dir import layout as ck
from llmasr.run_dir.meta import CheckpointMeta
from llmasr.train.config import BRANCHES, DEFAULT_LRS, TrainConfig
from llmasr.train.efficiency import Interval
from llmasr.train.progress import memory_gb

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "README.md").read_text(encoding="utf-8")
REFERENCE = TEXT[: TEXT.index("\n## Benchmarks")]  # the benchmark tables are measurements, checked by tests/bench
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")

# Flags of other programs the README shows beside llmasr's: the launchers, TensorBoard, Kaldi's extract-segments,
# SLURM's sbatch and scancel, and the global --debug and --version that llmasr.cli takes before any verb.
OTHER_PROGRAMS = {
    "--num_gpus",
    "--module",
    "--hostfile",
    "--nproc_per_node",
    "--logdir",
    "--max-overshoot",
    "--debug",
    "--version",
    "--signal",
    "--autotuning",
    "--nodes",
    "--ntasks-per-node",
    "--gpus-per-node",
    "--cpus-per-task",
    "--gpus-per-task",
    "--kill-on-bad-exit",
    "--skip",
    "--until",
}  # fmt: skip (--skip/--until: flac's, in a wav.scp pipe)

# The commands whose flags each section may name (a section may also name the flags of a bench/ script it names).
SECTION_VERBS = {
    "## The embedded demo": ("demo", "train", "decode", "transcribe"),
    "## What it gets right": ("decode", "export"),
    "## Coming from FunASR": ("train", "export"),
    "### Fun-ASR-Nano: `llmasr convert funasr`": ("convert", "decode"),
    "## Python API": ("transcribe", "decode"),
    "### 1. Prepare data": (
        "data check",
        "data cmvn",
        "data kaldi",
        "data pseudo-label",
        "data cache",
        "decode",
        "check",
        "transcribe",
    ),
    "### 2. Check, then launch": ("check", "train"),
    "### 3. Resume": ("train", "check"),
    "### 4. Export": ("export", "decode", "train"),
    "### 5. Decode": ("decode", "transcribe", "data pseudo-label", "data check", "score", "train"),
    "### 6. Read the logs": ("train",),
    "## Hotwords": ("decode", "transcribe"),
    "### Scoring": ("decode",),
}


class _Parsed(BaseException):  # past command_run.command, which reports an Exception as the command's own error
    def __init__(self, parser):
        self.parser = parser


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    """Each verb's parser, as its main builds it (caught at the parse, before the command does anything)."""

    def caught(self, *args, **kwargs):
        raise _Parsed(self)

    out = {}
    modules = {verb: module for verb, (module, _) in VERBS.items() if module}
    modules |= {f"data {tool}": module for tool, module in DATA_TOOLS.items()}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("parse_args", "parse_intermixed_args", "parse_known_args"):
            mp.setattr(argparse.ArgumentParser, name, caught)
        for verb, module in modules.items():
            with pytest.raises(_Parsed) as got:
                importlib.import_module(module).main([])
            out[verb] = got.value.parser
    return out


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    out = set()
    for action in parser._actions:
        out |= {o for o in action.option_strings if o.startswith("--")}
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= flags_of(sub)
    return out


def sections() -> dict[str, str]:
    heads = [(m.start(), m.group(0)) for m in re.finditer(r"^#{2,3} .*$", REFERENCE, re.M)]
    return {head: REFERENCE[start:end] for (start, head), (end, _) in zip(heads, heads[1:] + [(len(REFERENCE), "")])}


def bench_flags(text: str) -> set[str]:
    """The flags the bench/ and scripts/ scripts named in `text` define (as argparse string literals in their
    source)."""
    out = set()
    for script in set(re.findall(r"(?:bench|scripts)/\w+\.py", text)):
        out |= set(re.findall(r"[\"'](--[a-z][\w-]*)[\"']", (ROOT / script).read_text(encoding="utf-8")))
    return out


def command_lines(text: str) -> list[tuple[str, list[str]]]:
    """(verb, argv) of each `llmasr VERB ...` in the text's bash code blocks (launcher prefixes and comments cut)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            m = re.search(r"(?:^|-m |--module )llmasr (data [\w-]+|\w+)(.*)", line.split(" #")[0].strip())
            if m:
                out.append((m.group(1), shlex.split(m.group(2))))
    return out


def command_spans(text: str) -> list[tuple[str, str]]:
    """(verb, rest) of each inline `llmasr VERB ...` span."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"`[^`\n]*?llmasr (data [\w-]+|\w+)([^`\n]*)`", text)]


def test_each_section_names_only_flags_of_its_commands(parsers):
    found = sections()
    assert set(SECTION_VERBS) <= set(found), sorted(set(SECTION_VERBS) - set(found))  # a renamed heading
    for head, body in found.items():
        allowed = set(OTHER_PROGRAMS) | bench_flags(body)
        for verb in SECTION_VERBS.get(head, ()):
            allowed |= flags_of(parsers[verb])
        named = set(FLAG.findall(body))
        assert named <= allowed, f"{head}: {sorted(named - allowed)} are not flags of {SECTION_VERBS.get(head)}"


def test_an_inline_command_names_its_own_verb_s_flags(parsers):
    spans = command_spans(REFERENCE)
    assert len(spans) > 20
    for verb, rest in spans:
        if verb not in parsers:
            continue  # `llmasr marks every ...`: prose, not a command
        unknown = set(FLAG.findall(rest.split(" llmasr ")[0])) - flags_of(parsers[verb])
        assert not unknown, f"`llmasr {verb}{rest}`: {sorted(unknown)} are not flags of llmasr {verb}"


def test_command_lines_in_code_blocks_parse(parsers):
    lines = command_lines(REFERENCE)
    verbs = {verb for verb, _ in lines}
    assert {"train", "check", "export", "decode", "data check", "data cmvn", "data kaldi", "data pseudo-label"} <= verbs
    for verb, argv in lines:
        parser = parsers[verb]
        parse = parser.parse_intermixed_args if verb in ("train", "check") else parser.parse_args
        try:
            parse(argv)
        except SystemExit:
            pytest.fail(f"README's `llmasr {verb} {shlex.join(argv)}` does not parse")


def dotted(value, prefix: str = "") -> set[str]:
    """The dotted keys of nested sections, each section's own key included; a list of sections is read through
    (data.train.weight stands for data.train[i].weight)."""
    out = {prefix} if prefix else set()
    if isinstance(value, list):
        return out.union(*(dotted(item, prefix) for item in value if isinstance(item, dict)))
    if isinstance(value, dict):
        return out.union(*(dotted(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in value.items()))
    return out


def recipe_keys() -> set[str]:
    """Every dotted key of a recipe whose optional sections are all present."""
    branches = {b: {"lr": 1e-4, "weight_decay": 0.0, "scheduler": {"type": "constant"}} for b in BRANCHES}
    model = {"llm": {"path": "x", "lora": {}}, "encoder": {"lora": {}}, "ctc": {"decoder": {}}}
    data = {"model": model, "optim": {"branches": branches}, "data": {"train": [{"path": "a"}], "valid": ["b"]}}
    return dotted(to_dict(from_dict(Recipe, data)))


# Sections whose keys are another library's (FunASR's encoder_conf, the frontend, the chat template's variables).
FREE_MAPPINGS = ("model.encoder.conf", "model.encoder.frontend", "model.prompt.template_kwargs")
SPEECH_LLM_METHODS = {"train", "transcribe", "generate"}


def test_every_recipe_key_named_is_a_key():
    known = recipe_keys()
    named = set()
    for span in re.findall(r"`([^`\n]+)`", REFERENCE):
        for key in re.findall(r"(?<![\w/.])((?:model|data|optim|train|decode)\.[\w.<>*\[\]]+)", span):
            if key.endswith((".jsonl", ".yaml", ".log")) or key.split(".")[1] in SPEECH_LLM_METHODS:
                continue  # a file name; the Python API's `model.transcribe`, `model.train()`
            named.add(key.rstrip("."))
    assert len(named) > 80
    for key in sorted(named):
        plain = re.sub(r"\[\d+\]|\.\d+(?=\.)", "", key).replace("<branch>", "llm").replace(".*", ".llm")
        if plain.startswith(tuple(f"{k}." for k in FREE_MAPPINGS)):
            continue  # `model.encoder.conf.queries`: a key of FunASR's encoder_conf, checked by the builder
        assert plain in known or plain.removesuffix(".llm") in known, f"README names `{key}`: not a recipe key"
    assert all(callable(getattr(SpeechLLM, name)) for name in SPEECH_LLM_METHODS)
    assert not SPEECH_LLM_METHODS & {f.name for f in dataclasses.fields(ModelConfig)}
    recipe = to_dict(Recipe())
    for key in FREE_MAPPINGS:  # they are mappings the recipe passes on
        section, *path = key.split(".")
        value = recipe[section]
        for part in path:
            value = value[part]
        assert value == {}, key


def key_tables() -> list[dict[str, object]]:
    """{key: default, read as YAML} of each `| key | default | meaning |` table."""
    lines = REFERENCE.splitlines()
    tables = []
    for i in (i for i, line in enumerate(lines) if line.startswith("| key | default |")):
        rows = {}
        for line in lines[i + 2 :]:
            if not line.startswith("|"):
                break
            key, default, _ = (cell.strip() for cell in line.strip().strip("|").split("|"))
            rows[key.strip("`")] = yaml.safe_load(default.strip("`"))
        tables.append(rows)
    return tables


def test_key_table_defaults_are_the_dataclasses():
    tables = key_tables()
    assert len(tables) == 2 and all(len(rows) >= 3 for rows in tables)
    for rows in tables:
        cls = HotwordsConfig if "enable" in rows else PromptConfig
        defaults = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
        for key, value in rows.items():
            assert key in defaults, f"{cls.__name__}: README's table names {key!r}, which it does not have"
            assert value == defaults[key], f"{cls.__name__}.{key}: README says {value!r}, the code {defaults[key]!r}"


# A default the prose states: (a pattern whose group is the value as written, the code's value; on/off for a bool).
STATED_DEFAULTS = [
    (r"`train\.grad_clip` \| default ([\d.]+)", TrainConfig.grad_clip),
    (r"passes `data\.max_bad_fraction` \(default ([\d.]+)%", DataConfig.max_bad_fraction * 100),
    (r"or `(\w+)` \(the default: device on a GPU", DataConfig.features_on),
    (r"`decode\.vad_gate`, (on|off) by\s+default", DecodeConfig.vad_gate),
    (r"`max_time_fraction`, default ([\d.]+)", SpecAugmentConfig.max_time_fraction),
    (r"`model\.llm\.checkpoint_every: 2` \(default (\d+)\)", LLMConfig.checkpoint_every),
    (r"`model\.llm\.fused_kernels: liger` \(default `(\w+)`\)", LLMConfig.fused_kernels),
    (r"`train\.min_delta` \(default ([\d.]+)\)", TrainConfig.min_delta),
    (r"`train\.progress_every_s` seconds \(default ([\d.]+)\)", TrainConfig.progress_every_s),
    (r"`--ctc-weight` \(default ([\d.]+);", AUTO_CTC_WEIGHT),
    (r"`--repeat-limit N` \(default (\d+)\)", DecodeConfig.repeat_limit),
    (r"`--window-split-pause`, default ([\d.]+);", DecodeConfig.window_split_pause),
    (r"`--window-overlap`, default ([\d.]+)\)", DecodeConfig.window_overlap),
    (r"The default is therefore `([\d.]+)` when the search is CTC-guided", AUTO_HOTWORD_BOOST),
]


def test_defaults_the_prose_states_are_the_code_s():
    for pattern, value in STATED_DEFAULTS:
        m = re.search(pattern, REFERENCE, re.S)
        assert m, f"README no longer says {pattern!r}: update this test with what it says now"
        said = m.group(1)
        if isinstance(value, bool):
            assert said == ("on" if value else "off"), (pattern, value)
        elif isinstance(value, str):
            assert said == value, (pattern, value)
        else:
            assert float(said) == float(value), (pattern, value)
    lrs = re.search(r"unset branches take ([\de.-]+), ([\de.-]+), ([\de.-]+), ([\de.-]+)", REFERENCE)
    assert lrs and [float(x) for x in lrs.groups()] == [DEFAULT_LRS[b] for b in BRANCHES]


def layout_block() -> str:
    start = REFERENCE.index("The run directory's format has one owner")
    return REFERENCE[start : REFERENCE.index("```\n", REFERENCE.index("```\n", start) + 4)]


def test_run_dir_layout_names_the_files_the_run_writes():
    block = layout_block()
    names = [ck.RECIPE_FILE, ck.DS_CONFIG_FILE, ck.TRAIN_LOG, ck.TENSORBOARD + "/", ck.LR_CSV, ck.LR_PNG, ck.LOCK_FILE,
             f"{ck.CHECKPOINTS}/{ck.tag_for(1200)}/", ck.META, f"{ck.CHECKPOINTS}/{ck.LATEST}", ck.BEST,
             f"{ck.tag_for(1200)}{ck.UNIVERSAL_SUFFIX}/", f"{ck.ABANDONED_PREFIX}N"]  # fmt: skip
    for name in names:
        assert name in block, f"README's RUN_DIR layout lacks {name}"
    # every field of a checkpoint's meta is described (in words: the field names joined by spaces)
    described = block.replace("\n", " ")
    for f in dataclasses.fields(CheckpointMeta):
        words = {"zero_stage": "ZeRO stage", "base_fingerprint": "base fingerprint", "trainable": "trainable names",
                 "files": "sha256", "batches_per_epoch": "batches per epoch", "training": "longest audio trained on",
                 "world_size": "world size", "manifests": "training manifests"}.get(f.name, f.name)  # fmt: skip
        assert re.search(re.escape(words).replace(r"\ ", r"\s+"), described), f"llmasr_meta.json's {f.name}"


def test_decode_section_names_every_file_decode_writes():
    decode = sections()["### 5. Decode"]
    for name in (*OUTPUT_FILES, MANIFEST_INDEX, "ctc/"):
        assert f"`{name}`" in decode or f"`OUTPUT/{name}`" in decode, f"### 5. Decode does not name {name}"


def test_log_section_names_every_logged_field():
    logs = sections()["### 6. Read the logs"]
    named = set(re.findall(r"`([^`\s]+)`", logs))
    interval = Interval(hotword_lists=1, hotwords_dropped=1, ctc_unaligned=1)
    fields = {
        *interval.figures(None),
        *memory_gb(None),
        "mem/device_peak_gb",
        "eta_s",
        "eta_untimed_valid",
        "skipped_steps",
    }
    assert fields <= named, sorted(fields - named)


def test_help_on_the_python_apis_objects_says_what_each_is():
    """help(model) had shown nn.Module's "Base class for all neural network modules.", help(DecodeConfig) and
    help(DataConfig) only their generated signatures, help(build_dataloader) began mid-sentence at `manifests`."""
    import inspect

    from llmasr.data.loader import build_dataloader

    own = {SpeechLLM: "Audio encoder -> adaptor -> causal LM", DecodeConfig: "How a model decodes",
           DataConfig: "A recipe's `data:` section", build_dataloader: "(loader of collated Batches"}  # fmt: skip
    for obj, start in own.items():
        assert inspect.getdoc(obj).startswith(start), obj


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but hyphens and underscores dropped, spaces hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_within_the_readme_names_a_heading():
    """The contents list and the cross-references ([5. Decode](#5-decode)) lead somewhere: a renamed heading had
    left its links pointing at nothing, silently."""
    in_code, headings = False, set()
    for line in TEXT.splitlines():
        in_code ^= line.startswith("```")
        if not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            headings.add(_anchor(m[1]))
    links = re.findall(r"\]\(#([^)]+)\)", TEXT)
    assert "5-decode" in links and "fun-asr-nano-llmasr-convert-funasr" in headings
    assert sorted({a for a in links if a not in headings}) == [], sorted(headings)
