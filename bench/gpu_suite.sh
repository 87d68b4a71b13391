#!/usr/bin/env bash
# The GPU suite (bench/gpu_suite.py): real-shape training under ZeRO-2 and ZeRO-3 in bf16, fp16 once, decoding RTF,
# device features, and the liger fused-kernel variant when it imports; results under $OUT (summary.md,
# summary.json, logs.txt). On the lent GPU machine, from the project root, after `bash ../shared/gpu/make-carry.sh`
# here (its .gpudeps/ travels with the tree; the copy there may lack .git, so name the commit sent):
#   LLMASR_BENCH_COMMIT=<git rev-parse --short HEAD here> bash bench/gpu_suite.sh
# CPU smoke run (tiny shapes, 3 updates a run): LLMASR_GPU_SUITE_SMOKE=1 bash bench/gpu_suite.sh --out DIR
set -euo pipefail
cd "$(dirname "$0")/.."
# .gpudeps/ holds wheels built for the GPU machine's Python: used only where its compiled modules are this Python's
# (a checkout that has built it for the GPU machine still runs the CPU smoke run with its own packages).
abi=$(python3 -c 'import sys; print(f"cpython-{sys.version_info[0]}{sys.version_info[1]}")')
if [ -d .gpudeps ] && find .gpudeps -name "*.${abi}-*.so" -print -quit | grep -q .; then
  export PYTHONPATH="$PWD/.gpudeps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  [ -d .gpudeps ] && echo "gpu_suite: .gpudeps/ was built for another Python than $abi; not used" >&2
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export TOKENIZERS_PARALLELISM=false
# Each module that fails is named with its error: a dependency of one (pydantic, cffi) may be what is missing.
python3 - <<'EOF' || exit 2
import importlib
import sys

failed = []
for name in ("deepspeed", "soundfile", "kaldi_native_fbank"):
    try:
        importlib.import_module(name)
    except Exception as err:
        failed.append(f"  {name}: {type(err).__name__}: {err}")
if failed:
    sys.exit("gpu_suite: these do not import (on the GPU machine: build .gpudeps here with "
             "bash ../shared/gpu/make-carry.sh, adding what it lacks; it travels with the tree):\n" + "\n".join(failed))
EOF
exec python3 bench/gpu_suite.py "$@"
