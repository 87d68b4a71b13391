#!/usr/bin/env bash
# Set-up for a fresh machine: torch first (pinned, so pip never pulls a multi-GB CUDA build where a CPU build is
# wanted), then llmasr with its test tools, then espeak-ng + sox for the embedded demo's speech synthesis.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${LLMASR_TORCH_VERSION:-2.13.0}"
python3 -m pip install -q "torch==${TORCH_VERSION}"
python3 -m pip install -q -e ".[dev]"
if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get install -y -q espeak-ng sox >/dev/null 2>&1 ||
            (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q espeak-ng sox >/dev/null 2>&1)) ||
            echo "install.sh: could not install espeak-ng/sox; the demo needs them: sudo apt-get install espeak-ng sox" >&2
    else
        echo "install.sh: the demo needs espeak-ng and sox: sudo apt-get install espeak-ng sox" >&2
    fi
fi
