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


def run_install(tmp_path, python_info: str, **env) -> tuple[int, list[str], str]:
    """scripts/install.sh against a stub python3 (answering the interpreter check with `python_info`, logging each
    pip call) and a stub espeak-ng: (exit status, the pip calls, stderr). Nothing is installed."""
    import os
    import stat
    import subprocess

    bin_dir, log = tmp_path / "bin", tmp_path / "pip.log"
    bin_dir.mkdir(parents=True)
    stubs = {
        "python3": f'if [ "$1" = "-c" ]; then echo "{python_info}"; else echo "$*" >> "{log}"; fi\n',
        "espeak-ng": "exit 0\n",
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "LLMASR_NO_CONSTRAINTS": "0", **env}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], env=env, capture_output=True, text=True)
    calls = log.read_text().splitlines() if log.exists() else []
    return done.returncode, calls, done.stderr


def test_install_script_refuses_an_externally_managed_python_before_installing(tmp_path):
    rc, calls, err = run_install(tmp_path, "1 3 11")
    assert rc == 2 and calls == []
    assert "PEP 668" in err and "python3 -m venv .venv && . .venv/bin/activate && bash scripts/install.sh" in err


def test_install_script_pins_on_3_11_and_installs_the_newest_on_older_pythons(tmp_path):
    rc, calls, err = run_install(tmp_path / "a", "0 3 11")
    assert rc == 0 and len(calls) == 2 and err == ""
    assert calls[0].endswith("torch==2.13.0") and "--index-url" not in calls[0]
    assert "--upgrade" not in calls[1] and calls[1].endswith("-e .[dev]")
    rc, calls, err = run_install(tmp_path / "b", "0 3 10")  # the pins need 3.11
    assert rc == 0 and "--upgrade --upgrade-strategy eager" in calls[1]
    assert "on Python 3.10 the newest releases that support it are installed instead" in err
    index = "https://download.pytorch.org/whl/cpu"
    rc, calls, _ = run_install(tmp_path / "c", "0 3 12", LLMASR_TORCH_INDEX=index)
    assert rc == 0 and calls[0].endswith(f"--index-url {index} torch==2.13.0") and index not in calls[1]


def test_ci_runs_the_readme_test_command_and_its_plugins_are_dev_dependencies():
    """.ci/run runs exactly the README's test command; the `-n` it passes needs pytest-xdist, which `.[dev]` (what
    install.sh installs) must bring, else a fresh clone's CI stops on "unrecognized arguments: -n"."""
    readme = (ROOT / "README.md").read_text().splitlines()
    block = readme[readme.index("```bash") + 1 : readme.index("```", 1)]
    test_line = next(line for line in block if "pytest" in line).split("#")[0].strip()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert ci == [test_line], (ci, test_line)
    if " -n " in f"{test_line} ":
        assert "pytest-xdist" in direct_requirements()
