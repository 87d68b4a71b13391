#!/usr/bin/env bash
# The GPU suite (bench/gpu_suite.py): real-shape training under ZeRO-2 and ZeRO-3 in bf16, fp16 once, decoding RTF,
# device features, and the liger fused-kernel variant when it imports; results under $OUT (summary.md,
# summary.json, logs.txt). On the lent GPU machine, from the project root, after `bash ../shared/gpu/make-carry.sh`
# here (its .gpudeps/ travels with the tree; the copy there may lack .git, so name the commit sent):
#   LLMASR_BENCH_COMMIT=<git rev-parse --short HEAD here> bash bench/gpu_suite.sh
# CPU smoke run (tiny shapes, 3 updates a run): LLMASR_GPU_SUITE_SMOKE=1 bash bench/gpu_suite.sh --out DIR
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .gpudeps ]; then
  export PYTHONPATH="$PWD/.gpudeps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export TOKENIZERS_PARALLELISM=false
python3 -c "import deepspeed, soundfile, kaldi_native_fbank" 2>/dev/null || {
  echo "gpu_suite: deepspeed, soundfile or kaldi-native-fbank does not import; on the GPU machine build" \
       ".gpudeps first (bash ../shared/gpu/make-carry.sh here; it travels with the tree)" >&2
  exit 2
}
exec python3 bench/gpu_suite.py "$@"
