"""What `llmasr check`'s model build costs on real-size files: the model on the meta device alone, with every
pretrained file's tensor names and shapes checked against it (`weights="shapes"`, what check runs), and the real load
training does, each in its own process (wall time and peak RSS).

    python bench/check_cost.py [--quick] [--json-out F]

Files, written once under --work: a FunASR Paraformer-large directory (SAN-M encoder, 50 blocks, and the decoder and
predictor tensors a real model.pt carries beside it) and a Qwen2.5-1.5B-shape LLM directory (bf16 safetensors; its
values are left uninitialised, which no measurement here reads as numbers). --quick: the tiny stand-ins.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import emit, reproduce_command  # noqa: E402

MODES = ("meta", "shapes", "pretrained")
# Peak RSS from VmHWM, which starts afresh with the process image: getrusage's ru_maxrss can carry the high-water mark
# of the parent the child was forked from (this script's, after writing the files).
_CHILD = """
import json, sys, time
from llmasr.models.builder import build_model
t0 = time.perf_counter()
build_model(json.loads(sys.argv[1]), weights=sys.argv[2])
took = time.perf_counter() - t0
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": took, "peak_rss_mb": int(hwm.split()[1]) / 1024}))
"""


def write_llm(path: Path, quick: bool) -> Path:
    """Qwen2.5-1.5B's shape (tiny with --quick), saved by transformers, values not initialised (fast to make)."""
    import torch
    from _gpu_suite_prepare import QWEN25_15B
    from transformers import AutoModelForCausalLM, Qwen2Config

    from llmasr.testing.tiny_llm import train_bpe_tokenizer, write_tiny_llm_dir

    if quick:
        return write_tiny_llm_dir(path)
    tok = train_bpe_tokenizer(["transcribe the audio", "you are a helpful assistant"], 300)
    config = Qwen2Config(**QWEN25_15B, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = model.to_empty(device="cpu")
    return write_tiny_llm_dir(path, tokenizer=tok, model=model)


def prepare(work: Path, quick: bool) -> dict:
    from _gpu_suite_prepare import write_encoder_dir

    work.mkdir(parents=True, exist_ok=True)
    enc, llm = work / "paraformer", work / "llm"
    if not (enc / "model.pt").is_file():
        write_encoder_dir(enc, quick)
    if not (llm / "config.json").is_file():
        write_llm(llm, quick)
    lora = {"r": 16, "alpha": 32, "target_modules": "all-linear"}
    return {"encoder": {"path": str(enc)}, "llm": {"path": str(llm), "lora": lora}, "adaptor": {"type": "linear"}}


def measure(section: dict, mode: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(section), mode], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"build_model(weights={mode!r}) failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def file_sizes(section: dict) -> dict:
    enc = Path(section["encoder"]["path"]) / "model.pt"
    llm = sum(f.stat().st_size for f in Path(section["llm"]["path"]).glob("*.safetensors"))
    return {"encoder_model_pt_mb": enc.stat().st_size / 2**20, "llm_safetensors_mb": llm / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny stand-ins (the suite's smoke run)")
    p.add_argument("--work", default="/tmp/llmasr_check_cost", help="where the model directories are written")
    p.add_argument("--repeats", type=int, default=2, help="runs per mode (the fastest is reported)")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    work = Path(args.work) / ("quick" if args.quick else "real")
    t0 = time.perf_counter()
    section = prepare(work, args.quick)
    res = {"command": reproduce_command("bench/check_cost.py", list(argv if argv is not None else sys.argv[1:]))}
    res.update(files=file_sizes(section), prepare_seconds=time.perf_counter() - t0, modes={})
    for mode in MODES:
        runs = [measure(section, mode) for _ in range(max(args.repeats, 1))]
        res["modes"][mode] = min(runs, key=lambda r: r["seconds"])
    f = res["files"]
    lines = [
        f"model.pt {f['encoder_model_pt_mb']:.0f} MiB, LLM safetensors {f['llm_safetensors_mb']:.0f} MiB",
        "| build_model weights= | seconds | peak RSS (MiB) |",
        "|---|---:|---:|",
        *(f"| {m} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} |" for m, r in res["modes"].items()),
        f"Reproduce: `{res['command']}`",
    ]
    emit(res, lines, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
