"""scripts/install.sh installs the versions in constraints.txt (the suite's last passing set) unless told not to."""

import importlib.util
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
        assert m, f"constraints.txt: {raw!r} is not NAME==VERSION"
        assert canonical(m[1]) not in out, f"constraints.txt: {m[1]} pinned twice"
        out[canonical(m[1])] = m[2]
    return out


def direct_requirements() -> set[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {canonical(Requirement(r).name) for r in reqs}


def test_every_direct_dependency_is_pinned_and_torch_is_left_to_the_install_line():
    pinned = pins()
    assert "torch" not in pinned  # LLMASR_TORCH_VERSION decides it
    missing = direct_requirements() - {"torch"} - set(pinned)
    assert not missing, f"not in constraints.txt (run scripts/freeze_constraints.py): {sorted(missing)}"


def test_install_script_applies_the_constraints_unless_told_not_to():
    script = (ROOT / "scripts" / "install.sh").read_text()
    assert 'cat constraints.txt >>"$pins"' in script and 'LLMASR_NO_CONSTRAINTS:-0}" = "1"' in script
    installs = [line for line in script.splitlines() if "pip install" in line]
    assert len(installs) == 2 and all('-c "$pins"' in line for line in installs)


def test_freeze_script_covers_the_direct_dependencies():
    try:
        metadata.distribution("llmasr")
    except metadata.PackageNotFoundError:
        pytest.skip("llmasr is not installed (scripts/install.sh installs it)")
    spec = importlib.util.spec_from_file_location("freeze_constraints", ROOT / "scripts" / "freeze_constraints.py")
    freeze = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(freeze)
    frozen = freeze.closure()
    assert "torch" not in frozen and direct_requirements() - {"torch"} <= set(frozen)
    assert all(v == metadata.version(name) for name, v in frozen.items())
