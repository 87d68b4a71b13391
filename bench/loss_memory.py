"""Peak memory of the labels-only loss against the full-logits loss (forward + backward of the output head).

    python bench/loss_memory.py                       # Qwen2.5-1.5B head (hidden 1536), vocab 151,936
    python bench/loss_memory.py --hidden 3584         # Qwen2.5-7B head

The batch is 8 utterances of 300 audio + 40 text positions, of which the 40 text positions carry labels (a real
speech-LLM batch labels only the transcript). The output head is frozen, as under LoRA; the gradient flows to the
hidden states. Each variant runs in a fresh process and reports its peak memory above what is resident once the head
and the inputs exist (CPU: the resident-set high-water mark reset there; GPU: torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_commit  # noqa: E402


def run_variant(variant: str, args) -> dict:
    import torch
    from torch import nn

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling helpers when run from elsewhere
    from _speech_model import PeakMemory

    from llmasr.models.losses import IGNORE_INDEX, full_logits_cross_entropy, labels_only_cross_entropy

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    head = nn.Linear(args.hidden, args.vocab, bias=False, device=device, dtype=dtype).requires_grad_(False)
    seq = args.audio + args.text
    hidden = torch.randn(args.batch, seq, args.hidden, device=device, dtype=dtype, requires_grad=True)
    labels = torch.full((args.batch, seq), IGNORE_INDEX, device=device)
    labels[:, args.audio :] = torch.randint(0, args.vocab, (args.batch, args.text), device=device)

    # Above what is resident when the region starts (the high-water mark reset to it: a peak of the set-up, or
    # memory freed before, is not the loss's)
    with PeakMemory(device) as mem:
        if variant == "full":
            loss = full_logits_cross_entropy(head(hidden), labels)
        else:
            loss = labels_only_cross_entropy(hidden, labels, head).loss_sum
        loss.backward()
    return {"variant": variant, "device": str(device), "peak_bytes": mem.peak, "loss": float(loss)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--audio", type=int, default=300)
    p.add_argument("--text", type=int, default=40)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--cpu", action="store_true", help="measure on CPU even when a GPU is present")
    p.add_argument("--variant", choices=["full", "labels"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return 0
    results = {}
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for variant in ("full", "labels"):
        out = subprocess.run(
            [sys.executable, __file__, "--variant", variant, *passthrough], capture_output=True, text=True, check=True
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    full, lab = results["full"], results["labels"]
    ratio = lab["peak_bytes"] / full["peak_bytes"]
    print(f"command: python bench/loss_memory.py {' '.join(passthrough)}".rstrip())
    print(
        f"batch {args.batch} x ({args.audio} audio + {args.text} text), vocab {args.vocab}, hidden {args.hidden}, "
        f"{args.dtype}, {full['device']}"
    )
    print("| loss | peak memory above baseline (MiB) | loss value |")
    print("|---|---|---|")
    for name, r in (("full logits + CrossEntropy", full), ("labels-only (llmasr)", lab)):
        print(f"| {name} | {r['peak_bytes'] / 2**20:.0f} | {r['loss']:.4f} |")
    print(f"ratio labels-only / full: {ratio:.3f} (goal <= 0.20)")
    print_commit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
