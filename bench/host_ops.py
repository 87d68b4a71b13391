"""Host-side work per training update: how many aten ops one optimizer update issues, through the real `llmasr
train` path, and which branch issues them.

    python bench/host_ops.py                  # 2 updates warm, 1 counted (about a minute on 2 cores)
    python bench/host_ops.py --json-out F     # also the counts as JSON

On a GPU every op costs microseconds of host time (Python, dispatch, a kernel launch), so the op count of an update
is a CPU-measurable proxy for how host-bound a step is. The model has the shipped recipe's depth at small widths:
Paraformer-large's SAN-M (50 blocks, 32 wide) and Qwen2.5-1.5B's 28 layers (64 wide), LoRA r16 on the 7
projections, gradient checkpointing on both sides, ZeRO-2, accumulation 2, as
recipes/paraformer-large_qwen2.5-1.5b_lora_zero2.yaml (bench/_gpu_suite_prepare.py writes the files). The op count
depends on depth and the code path, not on widths (bf16 here, the GPU's dtype).

Counted: every aten op torch.profiler records in one update (nested ones included, as its tables count them) and
the top-level ones (no aten op above them: one dispatch from Python or autograd each). Branches: module hooks open
a profiler range per module of the encoder, adaptor and LLM (the recomputation of a checkpointed layer included),
the loss and audio insertion are wrapped, and a backward op is charged to the branch of the forward op that made
its autograd node (the profiler's sequence numbers). Gradient accumulation nodes (AccumulateGrad, with ZeRO's
gradient hooks) and the optimizer step (engine.step: clipping, ZeRO's overflow check, AdamW, copies) are their own
rows; "trainer" is the rest of the update (batch to device, the window's all-reduces, statistics).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import emit, train_probed  # noqa: E402

ENCODER = {"output_size": 32, "attention_heads": 4, "linear_units": 64, "num_blocks": 50}  # over PARAFORMER_LARGE
LLM = {"hidden_size": 64, "num_layers": 28, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128}
BRANCHES = ("encoder", "adaptor", "insert_audio", "llm", "loss", "model (other)")
ROWS = (*BRANCHES, "grad accumulation + ZeRO hooks", "backward (other)", "optimizer step", "trainer")
GRAD_NODE = "torch::autograd::AccumulateGrad"


def prepare(work: Path) -> str:
    """The model, audio and recipe files (the GPU suite's smoke corpus, real depth); returns the recipe's path."""
    import _gpu_suite_prepare as gp

    from llmasr.testing.tiny_funasr import write_funasr_dir
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    conf = {**gp.PARAFORMER_LARGE, **ENCODER}
    encoder = write_funasr_dir(work / "paraformer", model="Paraformer", encoder_conf=conf, seed=0)
    llm = write_tiny_llm_dir(work / "qwen2", texts=[" ".join(gp.WORDS), "transcribe the audio"], **LLM)
    gp.write_corpus(work / "corpus", gp.Sizes.make(True))
    return str(gp.write_recipe(work, encoder, llm, smoke=True))


class Ranges:
    """Profiler ranges named after the branch around each module's forward (hooks) and around wrapped functions."""

    def __init__(self):
        self.handles = []

    def hook(self, module, name: str) -> None:
        import torch

        def pre(mod, args):
            mod._host_ops_range = torch.ops.profiler._record_function_enter_new(name, None)

        def post(mod, args, out):
            handle = getattr(mod, "_host_ops_range", None)
            if handle is not None:
                torch.ops.profiler._record_function_exit._RecordFunction(handle)
                mod._host_ops_range = None

        for sub in module.modules():
            # always_call: a checkpointed layer's recomputation stops early by raising once it has what backward needs
            self.handles += [sub.register_forward_pre_hook(pre), sub.register_forward_hook(post, always_call=True)]

    @staticmethod
    def wrap(fn, name: str):
        from torch.profiler import record_function

        def wrapped(*args, **kwargs):
            with record_function(name):
                return fn(*args, **kwargs)

        return wrapped


class Probe:
    """Wraps the trainer's run_window: the first call installs the ranges, update `at` runs under torch.profiler."""

    def __init__(self, inner, at: int):
        self.inner, self.at, self.n, self.prof = inner, at, 0, None
        self.ranges = Ranges()

    def install(self, engine) -> None:
        import llmasr.models.speech_llm as sl
        from llmasr.models.llm import causal_lm_parts

        model = engine.module
        for name in ("encoder", "adaptor", "llm"):
            self.ranges.hook(getattr(model, name), name)
        self.ranges.hook(causal_lm_parts(model.llm)[2], "loss")  # the output head runs on the labelled rows
        sl.labels_only_cross_entropy = Ranges.wrap(sl.labels_only_cross_entropy, "loss")
        sl.merge_audio_into_text = Ranges.wrap(sl.merge_audio_into_text, "insert_audio")
        ds = engine.engine
        ds.backward = Ranges.wrap(ds.backward, "backward (other)")
        ds.step = Ranges.wrap(ds.step, "optimizer step")
        model.forward = Ranges.wrap(model.forward, "model (other)")

    def __call__(self, engine, window, *args, **kwargs):
        from torch.profiler import ProfilerActivity, profile

        self.n += 1
        if self.n == 1:
            self.install(engine)
        if self.n != self.at:
            return self.inner(engine, window, *args, **kwargs)
        self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False)
        with self.prof:
            return self.inner(engine, window, *args, **kwargs)


def attribute(events) -> tuple[Counter, Counter, Counter, dict[str, Counter], dict[str, Counter]]:
    """(all aten ops by name, all aten ops by row, top-level aten ops by row, all and top-level ops by name in each
    row) of one profiled update."""
    by_name, by_row, top_row = Counter(), Counter(), Counter()
    all_ops, top_ops = {r: Counter() for r in ROWS}, {r: Counter() for r in ROWS}
    seq_row: dict[int, str] = {}
    rows = {}

    def row_of(e) -> str:
        if e.id in rows:
            return rows[e.id]
        up, found = e, "trainer"
        while up is not None:
            if up.name in ROWS:
                found = up.name
                break
            if up.name.startswith("autograd::engine::evaluate_function: "):
                if GRAD_NODE in up.name:
                    found = "grad accumulation + ZeRO hooks"
                    break
                if up.sequence_nr >= 0 and up.sequence_nr in seq_row:
                    found = seq_row[up.sequence_nr]
                    break
            up = up.cpu_parent
        rows[e.id] = found
        return found

    ordered = sorted(events, key=lambda e: e.time_range.start)
    for e in ordered:  # forward ops first: their rows give their autograd nodes' rows
        if e.name.startswith("aten::") and e.sequence_nr >= 0 and e.sequence_nr not in seq_row:
            seq_row[e.sequence_nr] = row_of(e)
    for e in ordered:
        if not e.name.startswith("aten::"):
            continue
        row = row_of(e)
        by_name[e.name] += 1
        by_row[row] += 1
        all_ops[row][e.name] += 1
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            top_row[row] += 1
            top_ops[row][e.name] += 1
    return by_name, by_row, top_row, all_ops, top_ops


def most(ops: Counter, n: int = 4) -> str:
    return ", ".join(f"{name.removeprefix('aten::')} {c:,}" for name, c in ops.most_common(n))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="where the model and audio go (kept; reused when already there)")
    p.add_argument("--warm", type=int, default=2, help="updates before the counted one")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--deepspeed", default="zero2", help="preset name or DeepSpeed JSON")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--json-out", default=None)
    p.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    args = p.parse_args(argv)

    import torch

    torch.manual_seed(0)
    work = Path(args.work or tempfile.mkdtemp(prefix="host_ops_"))
    recipe = work / "recipe.yaml"
    t0 = time.perf_counter()
    recipe = prepare(work) if not recipe.is_file() else str(recipe)
    prep_s = time.perf_counter() - t0
    rc, run_s, probe = train_probed(
        lambda inner: Probe(inner, args.warm + 1), recipe, work / "run", deepspeed=args.deepspeed,
        updates=args.warm + 1, precision=args.precision, overrides=args.overrides,
    )  # fmt: skip
    if rc != 0 or probe.prof is None:
        print(f"llmasr train exited {rc}; no update was profiled", file=sys.stderr)
        return rc or 1
    by_name, by_row, top_row, all_ops, top_ops = attribute(probe.prof.events())
    total, top = sum(by_name.values()), sum(top_row.values())
    lines = [
        f"# aten ops per training update (SAN-M 50 blocks + Qwen2 28 layers, LoRA r16 x 7, checkpointing, "
        f"{args.deepspeed}, {args.precision}, accumulation 2)",
        "",
        f"prepare {prep_s:.0f} s, train command {run_s:.0f} s; overrides: {' '.join(args.overrides) or '(none)'}",
        "",
        f"**{total:,} aten ops** per update, {top:,} of them top-level (one dispatch each)",
        "",
        "| branch | aten ops | top-level | most frequent top-level ops |",
        "|---|---:|---:|---|",
        *(f"| {r} | {by_row[r]:,} | {top_row[r]:,} | {most(top_ops[r])} |" for r in ROWS if by_row[r]),
        "",
        "| op | calls |",
        "|---|---:|",
        *(f"| {n} | {c:,} |" for n, c in by_name.most_common(args.top)),
        "",
    ]
    res = {
        "aten_ops": total,
        "top_level": top,
        "by_branch": dict(by_row),
        "top_level_by_branch": dict(top_row),
        "by_op": dict(by_name.most_common()),
        "by_branch_op": {r: dict(c.most_common()) for r, c in all_ops.items() if c},
        "precision": args.precision,
        "deepspeed": args.deepspeed,
        "overrides": args.overrides,
    }
    emit(res, lines, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
