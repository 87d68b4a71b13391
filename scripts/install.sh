#!/usr/bin/env bash
# Set-up for a fresh machine: torch first (pinned, so that no other package's requirement picks a torch of its own),
# then llmasr with its test tools, then espeak-ng for the embedded demo's speech synthesis.
# Every other package comes at the version in constraints.txt, the versions the test suite last passed with
# (scripts/freeze_constraints.py writes it). LLMASR_NO_CONSTRAINTS=1 installs the newest releases instead (torch
# stays pinned), to check the suite on them. LLMASR_TORCH_VERSION picks another torch; LLMASR_TORCH_INDEX the index
# it comes from (PyPI's Linux torch is a CUDA build: https://download.pytorch.org/whl/cpu has the CPU one).
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${LLMASR_TORCH_VERSION:-2.13.0}"
# "<externally managed: 0/1> <major> <minor>" of the python3 that pip puts packages into
read -r managed major minor < <(python3 -c 'import os, sys, sysconfig
managed = sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
print(int(managed), *sys.version_info[:2])')
if [ "$managed" = "1" ]; then  # PEP 668 (Debian 12, Ubuntu 24.04): pip refuses the system Python
    echo "install.sh: $(command -v python3) is a system Python that pip may not install into (PEP 668); make a" \
        "virtual environment first: python3 -m venv .venv && . .venv/bin/activate && bash scripts/install.sh" >&2
    exit 2
fi
pins="$(mktemp)"
trap 'rm -f "$pins"' EXIT
echo "torch==${TORCH_VERSION}" >"$pins"
upgrade=()
if [ "${LLMASR_NO_CONSTRAINTS:-0}" = "1" ]; then
    upgrade=(--upgrade --upgrade-strategy eager)
elif [ "$major" -eq 3 ] && [ "$minor" -lt 11 ]; then  # several of the pinned releases need 3.11
    echo "install.sh: constraints.txt holds versions for Python 3.11 and newer; on Python $major.$minor the newest" \
        "releases that support it are installed instead" >&2
    upgrade=(--upgrade --upgrade-strategy eager)
else
    cat constraints.txt >>"$pins"
fi
index=()
if [ -n "${LLMASR_TORCH_INDEX:-}" ]; then
    index=(--index-url "$LLMASR_TORCH_INDEX")
fi
python3 -m pip install -q -c "$pins" ${index[@]+"${index[@]}"} "torch==${TORCH_VERSION}"
python3 -m pip install -q -c "$pins" ${upgrade[@]+"${upgrade[@]}"} -e ".[dev]"
if ! command -v espeak-ng >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get install -y -q espeak-ng >/dev/null 2>&1 ||
            (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q espeak-ng >/dev/null 2>&1)) ||
            echo "install.sh: could not install espeak-ng; the demo needs it: sudo apt-get install espeak-ng" >&2
    else
        echo "install.sh: the demo needs espeak-ng: sudo apt-get install espeak-ng" >&2
    fi
fi
