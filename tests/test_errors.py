"""llmasr.errors: the one message a failing command prints (llmasr.command_run's tests run it as a command), the
full-disk diagnosis, and recipe errors inside optional sections naming their key."""

import errno
from dataclasses import dataclass

import pytest

from llmasr import errors
from llmasr.config_io import ConfigError, from_dict


def raised(fn):
    try:
        fn()
    except Exception as err:  # noqa: BLE001 (the error under test)
        return err
    raise AssertionError("nothing raised")


def test_describe_names_the_file_the_context_and_where_a_foreign_error_was_raised():
    err = raised(lambda: open("/nonexistent/dir/x.yaml"))
    assert errors.describe(err) == "/nonexistent/dir/x.yaml: No such file or directory"
    assert errors.exit_status(err) == 2

    full = OSError(errno.ENOSPC, "No space left on device", "/run/checkpoints/best.json")
    assert errors.describe(full) == "/run/checkpoints/best.json: No space left on device (the disk is full)"

    def load():
        with errors.context("loading checkpoint /run/checkpoints/update_00000002"):
            {}["module"]

    text = errors.describe(raised(load))
    assert text.startswith("while loading checkpoint /run/checkpoints/update_00000002:\n  KeyError: 'module'")
    assert "raised at " in text and "test_errors.py" in text
    assert errors.exit_status(raised(load)) == 1

    from llmasr.models.state_dict import CheckpointMismatchError

    assert errors.exit_status(CheckpointMismatchError("model.pt does not match the SANMEncoder")) == 2
    from llmasr.data.audio import AudioError
    from llmasr.export.export import ExportError

    assert errors.exit_status(ExportError("--output x: exists")) == errors.exit_status(AudioError("a.wav", "cut")) == 2
    config = ConfigError("train.epochs: must be >= 1, got 0")
    assert errors.describe(config) == "train.epochs: must be >= 1, got 0" and errors.exit_status(config) == 2


def test_a_builtin_error_at_an_llmasr_line_is_shown_as_the_bug_it_is():
    """Only an llmasr `raise` writes a message to be read as it is: a builtin's error at an llmasr line (a bug) had
    been printed as its bare text, "'<' not supported between instances of 'str' and 'int'", naming nothing."""
    from llmasr.data.long_audio import plan_windows
    from llmasr.train.progress import parse_log_line

    bug = errors.describe(raised(lambda: parse_log_line(123)))
    assert (
        bug.startswith("AttributeError: 'int' object has no attribute 'split'\n  raised at ") and "progress.py" in bug
    )
    written = raised(lambda: plan_windows(__import__("numpy").zeros(100), 16000, 1.0, 0.5))
    assert errors.describe(written) == str(written) and "longer than twice the overlap" in str(written)
    mixed = raised(lambda: from_dict(Inner, {1: 2, "lr": 1.0}, "train"))  # a YAML key that is a number
    assert isinstance(mixed, ConfigError) and "train: unknown key(s) ['1', 'lr']" in str(mixed)


def test_write_error_recognises_a_full_disk(tmp_path, monkeypatch):
    tag = tmp_path / "checkpoints" / "update_00000003"
    chained = RuntimeError("saving failed")
    chained.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    got = errors.write_error(tag, chained)
    assert got.errno == errno.ENOSPC and got.filename == str(tag) and "MiB free there" in got.strerror

    short = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 8576 vs 8468")
    monkeypatch.setattr(errors, "free_bytes", lambda path: 10 * 2**20)
    got = errors.write_error(tag, short)
    assert got.errno == errno.ENOSPC and "No space left on device" in errors.describe(got)
    assert "(the disk is full)" in errors.describe(got) and str(tag) in errors.describe(got)
    monkeypatch.setattr(errors, "free_bytes", lambda path: 50 * 2**30)  # plenty left: a quota or a size limit
    got = errors.write_error(tag, short)
    assert got.errno == errno.EIO and "cut short" in got.strerror
    assert errors.write_error(tag, ValueError("unrelated")) is None


@dataclass
class Inner:
    warmup_steps: int = 0


@dataclass
class Outer:
    scheduler: Inner | None = None
    either: int | str | None = None


def test_an_error_inside_an_optional_section_names_its_key():
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, {"scheduler": {"warmup_step": 10}}, "optim.branches.llm")
    assert str(err.value).startswith("optim.branches.llm.scheduler: unknown key(s) ['warmup_step']")
    with pytest.raises(ConfigError, match=r"optim.branches.llm.scheduler.warmup_steps: expected an integer, got 'x'"):
        from_dict(Outer, {"scheduler": {"warmup_steps": "x"}}, "optim.branches.llm")
    with pytest.raises(ConfigError) as err:  # several types: each one's complaint
        from_dict(Outer, {"either": [1]}, "a")
    assert str(err.value).startswith("a.either: [1] fits none of int | str | NoneType:\n  a.either: expected an")


def test_a_directory_given_for_a_file_is_named_as_one(tmp_path):
    """A recipe, a manifest or a hotword list given as a directory: said so (it had been "not found")."""
    from llmasr.config_io import ConfigError, load_yaml
    from llmasr.data.hotwords import PhraseFileError, read_phrase_file
    from llmasr.data.manifest import Manifest

    with pytest.raises(ConfigError, match=f"{tmp_path}: a directory, not a recipe file"):
        load_yaml(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: a directory, not a manifest file"):
        Manifest.open(tmp_path)
    with pytest.raises(PhraseFileError, match=f"{tmp_path}: a directory, not a hotword file"):
        read_phrase_file(tmp_path)
