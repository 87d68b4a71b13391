"""The folders a decode writes (llmasr.export.decode_folders): two decodes given one --output at once. The second is
refused at once by the first's lock on it (llmasr.export.staged_dir.writing); one the lock does not reach, finished
first, has the other refused before it writes, so that the folder holds one decode's files, never a mix of both."""

from __future__ import annotations

import contextlib
import json

import pytest

from llmasr.commands.decode import main
from llmasr.export.decode_options import DecodeError
from llmasr.models.speech_llm import SpeechLLM
from llmasr.testing.run_dirs import TEXTS, write_corpus


def decode_meanwhile(monkeypatch, status: int = 0) -> list:
    """Patches decoding so that `llmasr decode ARGS` (set through the returned list) runs to its end, exiting with
    `status`, while the first batch of the next decode is decoded: a second job started into the same folder."""
    real, meanwhile = SpeechLLM.transcribe, []

    def transcribe(self, batch, *args, **kwargs):
        if meanwhile:
            other = meanwhile.pop()
            assert main(other) == status
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(SpeechLLM, "transcribe", transcribe)
    return meanwhile


@pytest.fixture
def another_decode_meanwhile(monkeypatch):
    """decode_meanwhile, with a second decode the first one's lock does not reach (another node, a filesystem
    whose locks do not exclude across nodes): it runs and finishes first."""
    import llmasr.commands.decode as decode_cmd

    monkeypatch.setattr(decode_cmd, "writing", lambda out, **kwargs: contextlib.nullcontext())
    return decode_meanwhile(monkeypatch)


def common(exported_dir, out):
    return ["--model", str(exported_dir), "--max-new-tokens", "2", "--num-workers", "0", "--output", str(out)]


def test_a_decode_another_wrote_into_meanwhile_writes_nothing(exported_dir, tmp_path, another_decode_meanwhile):
    """Decode A of test.jsonl, then B of other.jsonl with --ctc into A's folder, finished first: A wrote its hyp.txt,
    results.jsonl and wer.txt over B's and left B's ctc/ beside them, both exiting 0; a folder of one manifest's
    transcripts and another's CTC scores, read as one decode."""
    a = write_corpus(tmp_path / "a", TEXTS[:3])
    b = write_corpus(tmp_path / "b", TEXTS[3:], name="other")
    out = tmp_path / "out"
    another_decode_meanwhile.append([*common(exported_dir, out), "--data", str(b), "--ctc"])
    with pytest.raises(DecodeError) as raised:  # `llmasr decode: error: ...`, exit status 2
        main([*common(exported_dir, out), "--data", str(a)])
    assert str(raised.value) == (
        f"{out}: another decode wrote bad.jsonl, hyp.txt, ref.txt, results.jsonl ... there while this one ran (two "
        "decodes given one --output); this decode's files would mix with its, so none are written: give each decode "
        "an --output of its own"
    )
    assert json.loads((out / "wer.json").read_text())["manifest"] == str(b)  # B's files, whole
    assert json.loads((out / "ctc" / "wer.json").read_text())["manifest"] == str(b)
    assert [line.split()[0] for line in (out / "hyp.txt").read_text().splitlines()] == [
        "other000",
        "other001",
        "other002",
    ]


def test_several_manifests_into_a_folder_another_wrote_meanwhile_write_no_index(
    exported_dir, tmp_path, another_decode_meanwhile
):
    """A decode of dev and test into OUT, while a decode of one manifest wrote its files into OUT itself: the
    manifests' folders are its own, its wer.txt and manifests.json over the other's would not be."""
    dev = write_corpus(tmp_path / "a", TEXTS[:2], name="dev")
    test = write_corpus(tmp_path / "b", TEXTS[2:4], name="test")
    out = tmp_path / "out"
    another_decode_meanwhile.append([*common(exported_dir, out), "--data", str(test)])
    with pytest.raises(DecodeError, match="another decode wrote bad.jsonl, hyp.txt, ref.txt, results.jsonl ..."):
        main([*common(exported_dir, out), "--data", str(dev), "--data", str(test)])
    assert (out / "dev" / "hyp.txt").is_file() and (out / "test" / "hyp.txt").is_file()  # its own folders
    assert not (out / "manifests.json").exists()
    assert json.loads((out / "wer.json").read_text())["manifest"] == str(test)


def test_a_decode_into_a_folder_an_earlier_decode_wrote_replaces_its_files(exported_dir, tmp_path):
    """Decoding again into a finished decode's folder is not two decodes at once: its files go at the start."""
    a = write_corpus(tmp_path / "a", TEXTS[:2])
    out = tmp_path / "out"
    assert main([*common(exported_dir, out), "--data", str(a), "--ctc"]) == 0
    assert main([*common(exported_dir, out), "--data", str(a)]) == 0
    assert (out / "results.jsonl").is_file() and not (out / "ctc").exists()


def test_a_second_decode_into_a_folder_being_decoded_into_is_refused_at_once(exported_dir, tmp_path, monkeypatch,
                                                                            capsys):  # fmt: skip
    """The first decode holds a lock beside --output from its start to its last write: the second stops before
    decoding, naming it, and the first writes its files."""
    a = write_corpus(tmp_path / "a", TEXTS[:3])
    out = tmp_path / "out"
    decode_meanwhile(monkeypatch, status=2).append([*common(exported_dir, out), "--data", str(a), "--ctc"])
    assert main([*common(exported_dir, out), "--data", str(a)]) == 0
    assert (f"llmasr decode: error: --output {out}: another decode is writing it now (it holds {tmp_path}/.out.lock); "
            "wait for it to finish or choose another --output") in capsys.readouterr().err  # fmt: skip
    assert (out / "results.jsonl").is_file() and not (out / "ctc").exists()
    assert not (tmp_path / ".out.lock").exists()  # gone with the decode


def test_a_decode_onto_a_filesystem_without_locks_runs_unlocked(exported_dir, tmp_path, monkeypatch, caplog):
    """A Lustre scratch mounted without flock answers ENOSYS: the decode stopped there, at the lock alone."""
    import errno

    from llmasr.export import staged_dir

    def no_locks(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(staged_dir.fcntl, "flock", no_locks)
    a = write_corpus(tmp_path / "a", TEXTS[:2])
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="llmasr"):
        assert main([*common(exported_dir, out), "--data", str(a)]) == 0
    assert (out / "results.jsonl").is_file() and not (tmp_path / ".out.lock").exists()
    assert (f"--output {out}: no file lock on this filesystem (Function not implemented): another decode into it is "
            "not refused at its start") in caplog.text  # fmt: skip
