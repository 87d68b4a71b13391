"""Export's --output folder: new or --overwrite, refused before the model is built when it cannot or must not be
written (permissions, another export, the run's own files), staged and published whole, and a full disk named."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from llmasr.commands.export import main
from llmasr.export import staged_dir
from llmasr.export.export import ExportError, shard_bytes
from llmasr.models.exported import load_exported
from llmasr.run_dir import list_tags


def test_output_must_be_new(runs, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    assert main(["--checkpoint", str(runs[0]), "--output", str(tmp_path / "busy")]) == 2
    assert main(["--checkpoint", str(runs[0]), "--output", str(tmp_path / "busy"), "--overwrite"]) == 0
    assert (tmp_path / "busy" / "llmasr_model.yaml").is_file() and not (tmp_path / "busy" / "f").exists()
    # --overwrite replaces a folder, never a file (a file had been replaced by the model folder)
    (tmp_path / "precious.txt").write_text("important")
    assert main(["--checkpoint", str(runs[0]), "--output", str(tmp_path / "precious.txt"), "--overwrite"]) == 2
    assert (tmp_path / "precious.txt").read_text() == "important"


@contextlib.contextmanager
def made_unwritable(path, mode: int):
    """`path` (a folder or a file) this process cannot write: `mode` (555, 444), and immutable (chattr +i) where that
    alone does not stop it (root); the test is skipped where neither does. Writable again afterwards."""
    path.chmod(mode)
    immutable = os.access(path, os.W_OK)
    try:
        if immutable and (subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0
                          or os.access(path, os.W_OK)):  # fmt: skip
            pytest.skip(f"no way to make a {'folder' if path.is_dir() else 'file'} unwritable for this user here")
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot write in."""
    (tmp_path / "unwritable").mkdir()
    with made_unwritable(tmp_path / "unwritable", 0o555) as folder:
        yield folder


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_folder_without_write_permission_is_refused_before_the_model_is_built(
    runs, unwritable, monkeypatch, capsys, overwrite
):
    """An existing --output the user may not write in had failed at the last rename, after the whole model was
    rebuilt, merged and written (minutes at real size); it is refused before any weight is read."""
    import llmasr.export.export as export_module

    def no_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the refusal")

    monkeypatch.setattr(export_module, "load_checkpoint_model", no_load)
    args = ["--checkpoint", str(runs[0]), "--output", str(unwritable)] + (["--overwrite"] if overwrite else [])
    assert main(args) == 2
    assert f"--output {unwritable}: no permission to write in this folder" in capsys.readouterr().err
    assert sorted(p.name for p in unwritable.parent.iterdir()) == ["unwritable"]


def test_a_second_export_to_the_same_output_is_refused_while_the_first_writes(runs, tmp_path, capsys):
    """Two exports to one --output had cleared and filled the same staging folder, each deleting the other's files.
    The second is refused at once, naming the output; a lock file a killed export left does not block the next."""
    out = tmp_path / "shared_out"
    with staged_dir.writing(out, flag="--output"):  # the first export, still writing
        assert main(["--checkpoint", str(runs[0]), "--output", str(out)]) == 2
        assert f"--output {out}: another export or conversion is writing it now" in capsys.readouterr().err
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the lock went with its holder
    (tmp_path / ".shared_out.lock").write_text("")  # left by a killed export: no process holds it
    assert main(["--checkpoint", str(runs[0]), "--output", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared_out"]
    load_exported(out)


def test_shard_size_in_bytes_or_with_a_unit_and_refused_before_loading(runs, tmp_path, capsys):
    """--max-shard-size 200000 (bytes) had reached save_pretrained as the string "200000" and failed there, after
    the model was loaded and merged, naming no flag."""
    assert [shard_bytes(v) for v in ("200000", 200000, "5GB", "1.5gb", " 500 MB")] == [
        200000, 200000, 5 * 10**9, 15 * 10**8, 5 * 10**8,
    ]  # fmt: skip
    for bad in ("5GiB", "lots", "0", "-3MB", "1e400"):
        with pytest.raises(ExportError, match=f"--max-shard-size '{bad}': give bytes"):
            shard_bytes(bad)
    out = tmp_path / "sharded"
    assert main(["--checkpoint", str(runs[0]), "--output", str(out), "--max-shard-size", "5GiB"]) == 2
    assert "--max-shard-size '5GiB'" in capsys.readouterr().err and not out.exists()
    nested = tmp_path / "np" / "a" / "out"  # a refused export leaves no folders of its output behind
    assert main(["--checkpoint", str(runs[0]), "--output", str(nested), "--max-shard-size", "5GiB"]) == 2
    assert not (tmp_path / "np").exists()
    assert main(["--checkpoint", str(runs[0]), "--output", str(out), "--max-shard-size", "20000"]) == 0
    assert len(list((out / "llm").glob("model-*.safetensors"))) > 1
    load_exported(out)


def test_an_output_under_home_is_checked_where_it_is_written(runs, tmp_path, monkeypatch, capsys):
    """--output=~/m (a shell leaves `~` after `=`): the checks had looked at ./~/m while the export replaced
    $HOME/m, and with --overwrite a run under $HOME could replace itself."""
    home = tmp_path / "home"
    (home / "m").mkdir(parents=True)
    (home / "m" / "precious.txt").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert main(["--checkpoint", str(runs[0]), "--output=~/m"]) == 2
    assert "--output ~/m: exists and is not empty" in capsys.readouterr().err
    assert (home / "m" / "precious.txt").is_file() and not (tmp_path / "~").exists()
    shutil.copytree(runs[0], home / "run")
    assert main(["--checkpoint", str(home / "run"), "--output=~/run", "--overwrite"]) == 2
    assert "is the training run" in capsys.readouterr().err and (home / "run" / "recipe.yaml").is_file()


def test_an_output_that_is_a_mount_point_is_staged_inside_it(runs, tmp_path, monkeypatch):
    """A mount point's sibling lies on another filesystem, where renaming the staged files into it fails after its
    old files are gone: the export is staged inside it instead, and an export that fails leaves nothing behind."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    (mount / "old.txt").write_text("x")
    monkeypatch.setattr(staged_dir, "_mount_point", lambda where: where == mount.resolve())
    rename = Path.rename

    def across_devices(self, target):  # what the kernel says to a rename into the mount from outside, or out of it
        if Path(target).resolve().is_relative_to(mount) != self.resolve().is_relative_to(mount):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(self))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", across_devices)
    assert main(["--checkpoint", str(runs[0]), "--output", str(mount), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnt"] and not (mount / "old.txt").exists()
    assert not (mount / ".partial").exists()
    load_exported(mount)
    monkeypatch.setattr(staged_dir, "_mount_point", lambda where: False)  # staged beside it: the rename fails
    with pytest.raises(OSError, match="cross-device"):
        main(["--checkpoint", str(runs[0]), "--output", str(mount), "--overwrite"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnt"]  # no .mnt.partial left
    load_exported(mount)  # the export before it, still whole


def test_output_as_the_current_folder_is_written_in_place(runs, tmp_path, monkeypatch):
    """--output . : the export lands in the current folder, which stays (it had been deleted with the export)."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["--checkpoint", str(runs[0]), "--output", "."]) == 0
    assert (here / "llmasr_model.yaml").is_file() and Path.cwd() == here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]
    load_exported(here)


def test_output_over_what_the_run_reads_is_refused(runs, base_dirs, capsys, monkeypatch):
    """--overwrite onto the base LLM (which an --adapter-only export points at) or what holds the encoder would have
    deleted them; refused, naming the recipe key, before any weight is read (a real-size load takes minutes)."""

    def no_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the refusal")

    monkeypatch.setattr("llmasr.export.export.load_checkpoint_model", no_load)
    llm, enc = base_dirs
    for out, key in ((llm, "model.llm.path"), (enc.parent, "model.encoder.path")):
        assert main(["--checkpoint", str(runs[0]), "--output", str(out), "--overwrite", "--adapter-only"]) == 2
        assert f"({key} of the run's recipe), which writing the export would replace" in capsys.readouterr().err
    assert (llm / "config.json").is_file() and (enc / "config.yaml").is_file()


def test_output_over_the_run_itself_is_refused(runs, capsys):
    """--overwrite replaces the output folder whole: the run being exported (or what holds it, or its checkpoints)
    is never that folder."""
    run = runs[0]
    for out, why in ((run, "is"), (run.parent, "holds"), (run / "checkpoints" / "x", "lies in")):
        assert main(["--checkpoint", str(run), "--output", str(out), "--overwrite"]) == 2
        assert f"--output {out}: {why} the training run {run.resolve()} being exported" in capsys.readouterr().err
    assert list_tags(run / "checkpoints") and (run / "recipe.yaml").is_file()


def test_an_overwrite_cut_short_leaves_the_old_export_whole(runs, tmp_path, monkeypatch):
    """Publishing into an existing OUT had deleted the old export, then moved the new files in one by one, the
    completion marker (llmasr_model.yaml) among the first: cut short, OUT held a marker and a part of a model, the old
    export gone. Now the old files wait aside until the new ones are in, the marker moves last, and a move that fails
    puts the old export back."""
    out = tmp_path / "m"
    assert main(["--checkpoint", str(runs[0]), "--output", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    rename, moved = Path.rename, []

    def cut_short(self, target):
        if self.parent.name == ".m.partial":  # a new file going into OUT
            moved.append(self.name)
            if len(moved) == 2:
                raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", cut_short)
    with pytest.raises(KeyboardInterrupt):
        main(["--checkpoint", str(runs[2]), "--output", str(out), "--overwrite"])
    monkeypatch.setattr(Path, "rename", rename)
    assert "llmasr_model.yaml" not in moved  # the marker had not gone in: it goes last
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging or aside folder left
    load_exported(out)
    moved.clear()
    monkeypatch.setattr(Path, "rename", lambda self, target: (moved.append(self.name), rename(self, target))[1])
    assert main(["--checkpoint", str(runs[2]), "--output", str(out), "--overwrite"]) == 0
    new = [name for name in moved if (out / name).exists()]
    assert new[-1] == "llmasr_model.yaml" and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_full_disk_during_export_names_the_folder_and_its_free_space(runs, tmp_path, monkeypatch, capsys):
    """safetensors reports a full disk as "I/O error: No space left on device (os error 28)", not an OSError: the
    export had printed that line alone, naming no folder and no free space."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    from llmasr.cli import main as cli

    monkeypatch.setattr("safetensors.torch.save_file", full)
    out = tmp_path / "m"
    assert cli(["export", "--checkpoint", str(runs[0]), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / '.m.partial'}: No space left on device while writing it (" in err
    assert "MiB free there" in err and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_during_export_leaves_no_staging_folder(runs, tmp_path, name):
    """SIGTERM (a scheduler's time limit, `kill`) ended the process at once: the hidden staging folder, a whole model
    in size, and the lock file stayed beside OUT. Now it stops the export as Ctrl-C does: nothing is left, exit 143.
    SIGUSR1 (SLURM's `--signal=USR1@SECONDS` notice, which a training job's batch script sends to an export too) did
    the same with no word at all (exit 138): now it stops the export as SIGTERM does."""
    import signal
    import sys

    from llmasr.testing.launcher import launcher_env

    script = (
        "import os, signal, sys\n"
        "import llmasr.export.export as ex\n"
        "write = ex.write_model_dir\n"
        "def write_then_stopped(*args, **kwargs):\n"
        "    write(*args, **kwargs)\n"
        f"    os.kill(os.getpid(), signal.{name})\n"
        "ex.write_model_dir = write_then_stopped\n"
        "from llmasr.cli import main\n"
        "sys.exit(main(['export', '--checkpoint', sys.argv[1], '--output', sys.argv[2]]))\n"
    )
    out = tmp_path / "m"
    done = subprocess.run([sys.executable, "-c", script, str(runs[0]), str(out)], capture_output=True, text=True,
                          env=launcher_env(), timeout=300)  # fmt: skip
    assert done.returncode == 128 + getattr(signal, name), done.stderr[-2000:]
    assert f"llmasr export: stopped by {name} while writing {out}" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_files_that_reach_an_empty_output_during_the_export_are_kept(runs, tmp_path, monkeypatch, capsys):
    """OUT was checked empty at the start only: a file that reached it while the model was written was deleted with
    the folder's old contents when the export was put in place, though --overwrite was not given."""
    import llmasr.export.export as export
    from llmasr.testing.run_dirs import file_arrives_after

    out = tmp_path / "m"
    out.mkdir()
    file_arrives_after(monkeypatch, export, "write_model_dir", out / "notes.txt")
    assert main(["--checkpoint", str(runs[0]), "--output", str(out)]) == 2
    assert f"--output {out}: exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging folder left
    assert main(["--checkpoint", str(runs[0]), "--output", str(out), "--overwrite"]) == 0
    assert not (out / "notes.txt").exists()


def test_exported_files_are_readable_as_the_umask_says(runs, tmp_path):
    """safetensors writes 0600 whatever the umask; an export is meant for others (a team, a serving user) too."""
    import stat

    assert main(["--checkpoint", str(runs[0]), "--output", str(tmp_path / "out")]) == 0
    (tmp_path / "plain").write_text("x")
    expected = oct(stat.S_IMODE((tmp_path / "plain").stat().st_mode))
    modes = {str(p.relative_to(tmp_path / "out")): oct(stat.S_IMODE(p.stat().st_mode))
             for p in (tmp_path / "out").rglob("*") if p.is_file()}  # fmt: skip
    assert "encoder.safetensors" in modes and modes == dict.fromkeys(modes, expected)


def test_a_writable_output_folder_in_a_folder_the_user_may_not_write_in_is_written(runs, tmp_path, capsys):
    """A folder of one's own inside a shared one (/shared/models/alice, /shared/models not writable) had been
    refused, naming a lock file beside it, since the lock and the staging folder were made in its parent: they go
    inside it, as for a mount point, and a second export with --overwrite replaces the first there."""
    shared = tmp_path / "shared"
    (shared / "mine").mkdir(parents=True)
    with made_unwritable(shared, 0o555):
        out = shared / "mine"
        assert main(["--checkpoint", str(runs[0]), "--output", str(out)]) == 0, capsys.readouterr().err
        load_exported(out)
        assert main(["--checkpoint", str(runs[0]), "--output", str(out), "--overwrite"]) == 0
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging, lock or old files left
        assert sorted(p.name for p in shared.iterdir()) == ["mine"]
        load_exported(out)
        # a new folder there cannot be made: refused, naming --output
        assert main(["--checkpoint", str(runs[0]), "--output", str(shared / "new")]) == 2
        assert f"--output {shared / 'new'}" in capsys.readouterr().err


def test_an_output_under_a_file_is_refused_naming_the_file(runs, tmp_path, capsys):
    """`--output FILE/sub` had ended with a bare "FILE: File exists" naming neither --output nor what was wrong."""
    (tmp_path / "notes.txt").write_text("a file\n")
    for out in (tmp_path / "notes.txt" / "export", tmp_path / "notes.txt" / "a" / "export"):
        assert main(["--checkpoint", str(runs[0]), "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--output {out}: {tmp_path / 'notes.txt'} is a file, not a folder; choose another --output" in err
    assert (tmp_path / "notes.txt").read_text() == "a file\n"


def test_a_lock_file_the_user_may_not_open_is_named_not_its_writable_folder(tmp_path, capsys):
    """Another user's export killed while writing leaves its lock file (0644, theirs) beside OUT: opening it was
    refused as "no permission to write in FOLDER", a folder this user can write in, naming neither the lock file nor
    what to do about it. Refused before the checkpoint is read."""
    lock = tmp_path / ".mine.lock"
    lock.touch()
    with made_unwritable(lock, 0o444):
        assert main(["--checkpoint", str(tmp_path / "run"), "--output", str(tmp_path / "mine")]) == 2
        err = capsys.readouterr().err
        assert f"--output {tmp_path / 'mine'}: its lock file {lock} is not this user's to open" in err
        assert "remove it if none is running, or choose another --output" in err and "permission to write" not in err
