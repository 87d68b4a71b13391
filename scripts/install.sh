#!/usr/bin/env bash
# Set-up for a fresh machine: torch first (pinned, so pip never pulls a multi-GB CUDA build where a CPU build is
# wanted), then llmasr with its test tools, then espeak-ng + sox for the embedded demo's speech synthesis.
# Every other package comes at the version in constraints.txt, the versions the test suite last passed with
# (scripts/freeze_constraints.py writes it). LLMASR_NO_CONSTRAINTS=1 installs the newest releases instead (torch
# stays pinned), to check the suite on them. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${LLMASR_TORCH_VERSION:-2.13.0}"
pins="$(mktemp)"
trap 'rm -f "$pins"' EXIT
echo "torch==${TORCH_VERSION}" >"$pins"
upgrade=()
if [ "${LLMASR_NO_CONSTRAINTS:-0}" = "1" ]; then
    upgrade=(--upgrade --upgrade-strategy eager)
else
    cat constraints.txt >>"$pins"
fi
python3 -m pip install -q -c "$pins" "torch==${TORCH_VERSION}"
python3 -m pip install -q -c "$pins" ${upgrade[@]+"${upgrade[@]}"} -e ".[dev]"
if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get install -y -q espeak-ng sox >/dev/null 2>&1 ||
            (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q espeak-ng sox >/dev/null 2>&1)) ||
            echo "install.sh: could not install espeak-ng/sox; the demo needs them: sudo apt-get install espeak-ng sox" >&2
    else
        echo "install.sh: the demo needs espeak-ng and sox: sudo apt-get install espeak-ng sox" >&2
    fi
fi
