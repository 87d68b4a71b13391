"""Print constraints.txt: the installed version of every package llmasr[dev] needs, directly or not.

Run it in the environment the test suite has just passed in, and commit the result:

    python3 scripts/freeze_constraints.py > constraints.txt

torch is left out (scripts/install.sh pins it from LLMASR_TORCH_VERSION), and so is what it alone pulls in that
differs between its CPU and CUDA builds; its other requirements are pinned like the rest. Requirements whose
environment markers do not hold here (another Python, another platform) are not followed.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

from packaging.requirements import Requirement

ROOT = "llmasr"
EXTRAS = ("dev",)
LEFT_TO_INSTALL_SH = {"torch"}
BUILD_SPECIFIC = re.compile(r"^(nvidia-|triton$|cuda-|pytorch-triton)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(dist: metadata.Distribution, extras: tuple[str, ...]) -> list[Requirement]:
    out = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            out.append(req)
    return out


def closure() -> dict[str, str]:
    """canonical name -> installed version, over the requirement graph from llmasr[dev]."""
    pins: dict[str, str] = {}
    todo = [(ROOT, EXTRAS)]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, extras = todo.pop()
        if (canonical(name), extras) in seen:
            continue
        seen.add((canonical(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"freeze_constraints: {name} is required but not installed; install it and rerun the suite")
        if canonical(name) != ROOT and canonical(name) not in LEFT_TO_INSTALL_SH:
            pins[canonical(name)] = dist.version
        for req in requirements(dist, extras):
            if canonical(req.name) == ROOT or BUILD_SPECIFIC.match(canonical(req.name)):
                continue
            todo.append((req.name, tuple(sorted(req.extras))))
    return pins


def main() -> int:
    pins = closure()
    print("# The versions the test suite last passed with; scripts/install.sh installs these (LLMASR_NO_CONSTRAINTS=1:")
    print("# the newest releases instead). Regenerate after a passing run: python3 scripts/freeze_constraints.py")
    print(f"# Frozen on Python {sys.version_info.major}.{sys.version_info.minor}; torch comes from the install line.")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
