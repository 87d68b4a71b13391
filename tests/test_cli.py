"""The console command: verb dispatch, launcher arguments, and the data tools end to end."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from llmasr.cli import main, strip_local_rank
from llmasr.data.frontend import read_kaldi_cmvn


def test_help_and_unknown_verb(capsys):
    assert main([]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown verb 'frobnicate'" in capsys.readouterr().err
    assert main(["data", "--help"]) == 0  # the usage promises VERB --help
    assert "llmasr data {check|cmvn|kaldi|pseudo-label|cache}" in capsys.readouterr().out
    assert main(["data", "frob"]) == 2 and "llmasr data {check|" in capsys.readouterr().err


def test_check_says_what_its_run_options_do(capsys):
    """check takes train's command line but deletes nothing: its --overwrite help had said "(deletes them)"."""
    for verb, deletes in (("check", False), ("train", True)):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert ("(deletes them)" in text) == deletes and ("deletes nothing" in text) != deletes
        assert "or auto (the newest checkpoint when there is one" in text


def test_deepspeed_local_rank_argument_is_removed(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert strip_local_rank(["--local_rank=1", "train", "--config", "r.yaml"]) == ["train", "--config", "r.yaml"]
    assert os.environ["LOCAL_RANK"] == "1"


def make_kaldi_dir(tmp_path, n=4):
    d = tmp_path / "kaldi"
    d.mkdir()
    rng = np.random.default_rng(0)
    wav_lines, text_lines = [], []
    for i in range(n):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(16000 + 1600 * i)).astype(np.float32), 16000)
        wav_lines.append(f"u{i} {path}")
        text_lines.append(f"u{i} word {i}")
    wav_lines.append("orphan /nowhere.wav")  # in wav.scp only: reported, not silently dropped
    (d / "wav.scp").write_text("\n".join(wav_lines) + "\n")
    (d / "text").write_text("\n".join(text_lines) + "\n")
    return d


def test_data_kaldi_then_cmvn_then_check(tmp_path, capsys):
    d = make_kaldi_dir(tmp_path)
    out = tmp_path / "train.jsonl"
    assert main(["data", "kaldi", str(d), str(out)]) == 0
    report = capsys.readouterr().out
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["key"] for x in lines] == ["u0", "u1", "u2", "u3"] and lines[2]["target"] == "word 2"
    assert "orphan" in report  # the skipped key is named in the report

    mvn = tmp_path / "am.mvn"
    assert main(["data", "cmvn", str(out), "--out", str(mvn), "--lfr-m", "7", "--lfr-n", "6"]) == 0
    shift, scale = read_kaldi_cmvn(mvn)
    assert shift.shape == (560,) and np.all(scale > 0)

    assert main(["data", "check", str(out)]) == 0
    assert "result: OK" in capsys.readouterr().out

    (d / "text").unlink()  # audio alone: a manifest to transcribe
    assert main(["data", "kaldi", str(d), str(tmp_path / "decode.jsonl")]) == 0
    assert "has no transcripts (llmasr decode transcribes it; training refuses it)" in capsys.readouterr().out
    lines = [json.loads(x) for x in (tmp_path / "decode.jsonl").read_text().splitlines()]
    assert [x["key"] for x in lines] == ["u0", "u1", "u2", "u3", "orphan"] and not any("target" in x for x in lines)
    assert main(["data", "check", str(tmp_path / "decode.jsonl")]) == 1  # not training data
    assert "missing field 'target'" in capsys.readouterr().out
    assert main(["data", "check", "--decode", str(tmp_path / "decode.jsonl")]) == 1  # the orphan has no audio
    out = capsys.readouterr().out
    assert "lines: 5, usable: 4, bad: 1 " in out and "key=orphan: audio /nowhere.wav: file not found" in out
    assert out.rstrip().endswith("result: TOO MUCH BAD DATA: llmasr decode would fail (after writing its outputs)")
    (d / "wav.scp").write_text("u0 sox u0.flac -t wav - |\n")  # nothing convertible: a failure, not an empty success
    assert main(["data", "kaldi", str(d), str(tmp_path / "none.jsonl")]) == 2  # bad input, as a KaldiError
    assert "no utterance of" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["text", "segments", "utt2dur"])
def test_data_kaldi_refuses_a_table_that_is_no_file(tmp_path, capsys, name):
    """A `text` (or segments, utt2dur) that is a folder had been read as absent: a manifest without transcripts (or
    of whole recordings), written with exit status 0."""
    d = make_kaldi_dir(tmp_path)
    if name == "text":
        (d / "text").unlink()
    (d / name).mkdir()
    out = tmp_path / "out.jsonl"
    assert main(["data", "kaldi", str(d), str(out)]) == 2
    assert f"llmasr data kaldi: error: {d / name}: a directory, not a Kaldi table" in capsys.readouterr().err
    assert not out.exists()


SRUN_TASK = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_TASKS_PER_NODE": "8",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip


def refused_on_each(monkeypatch, capsys, tmp_path, argv, rank_key: str, ranks: tuple[str, str], said: str) -> None:
    """`llmasr ARGV` on the first of `ranks` (set as `rank_key`) and on another: each stops before the verb runs
    (exit 2, nothing written), the first alone printing `PROG: error: ` + `said` ({prog}: the verb's name)."""
    prog = "llmasr " + " ".join(argv[:2] if argv[0] == "data" else argv[:1])
    want = f"{prog}: error: " + said.format(prog=prog)
    for rank, speaks in zip(ranks, (True, False)):
        monkeypatch.setenv(rank_key, rank)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert (want in err) == speaks and (err == "") != speaks, err
        assert not list(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize("argv", [["export", "--checkpoint", "run", "--output", "out"], ["check", "--config", "r.yaml"],
                                  ["demo"], ["data", "check", "m.jsonl"]])  # fmt: skip
def test_a_one_process_verb_refuses_to_start_as_one_of_several_srun_tasks(monkeypatch, capsys, tmp_path, argv):
    """A batch script's plain `srun llmasr export ...` starts one a task of the job: 8 exports into one folder. Each
    task stops before the verb runs; task 0 alone says why and how to run it once."""
    monkeypatch.chdir(tmp_path)
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in SRUN_TASK.items():
        monkeypatch.setenv(key, value)
    said = ("started as one of an srun step of 8 tasks: `{prog}` runs as one process, and each task would run it "
            "whole, into the same files. Run it once (`srun -n 1`, or without srun)")  # fmt: skip
    refused_on_each(monkeypatch, capsys, tmp_path, argv, "SLURM_PROCID", ("0", "5"), said)


@pytest.mark.parametrize("argv", [["data", "cmvn", "m.jsonl", "--out", "am.mvn"], ["data", "check", "m.jsonl"],
                                  ["export", "--checkpoint", "run", "--output", "out"]])  # fmt: skip
def test_a_one_process_verb_refuses_to_start_as_one_of_a_launchers_ranks(monkeypatch, capsys, tmp_path, argv):
    """`deepspeed --num_gpus 2` (or torchrun) starting `llmasr data cmvn` ran it whole on each rank, both writing
    am.mvn; each rank stops before the verb runs, rank 0 alone saying why. `check` plans for WORLD_SIZE ranks."""
    monkeypatch.chdir(tmp_path)
    for key in SRUN_TASK:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    # the ranks a launcher started (left over in a shell, the same variables are refused: test_launched_ranks)
    monkeypatch.setattr("llmasr.launched_ranks.parent_launcher", lambda: "deepspeed.launcher.launch")
    said = ("started as one of a launcher's 2 ranks (WORLD_SIZE): `{prog}` runs as one process, and each rank would "
            "run it whole, into the same files. Run it once, without a launcher")  # fmt: skip
    refused_on_each(monkeypatch, capsys, tmp_path, argv, "RANK", ("0", "1"), said)
    monkeypatch.setenv("RANK", "0")
    assert main(["check", "--config", "missing.yaml", "--deepspeed", "zero2"]) == 2  # it ran, and refused its recipe
    assert "started as one of" not in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1: one process
    assert main(["data", "check", "missing.jsonl"]) == 2
    assert "started as one of" not in capsys.readouterr().err


def test_a_one_process_verb_runs_in_a_batch_script_and_in_a_step_of_one_task(monkeypatch, capsys):
    """The batch script's own process (no SLURM_STEP_ID) and `srun -n 1` are one process: the verb runs."""
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert main(["data", "check", "missing.jsonl"]) == 2  # the verb ran, and refused its manifest
    assert "started as one of" not in capsys.readouterr().err
    for key, value in {**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "1", "SLURM_STEP_TASKS_PER_NODE": "1"}.items():
        monkeypatch.setenv(key, value)
    assert main(["data", "check", "missing.jsonl"]) == 2  # the verb ran, and refused its manifest
    assert "started as one of" not in capsys.readouterr().err


@pytest.mark.parametrize("broken", [{"SLURM_STEP_TASKS_PER_NODE": None}, {"SLURM_STEP_TASKS_PER_NODE": "8(x"},
                                    {"SLURM_LOCALID": "9"}, {"SLURM_NODEID": None}])  # fmt: skip
def test_a_one_process_verb_refuses_in_a_step_of_several_tasks_whose_other_variables_are_broken(
    monkeypatch, capsys, tmp_path, broken
):
    """`train` and `decode` refuse a task whose SLURM variables are missing or contradict each other; `export` had
    then taken it for no step at all and run whole in each task, racing for its output folder. The step's task
    count alone says it is one of several."""
    monkeypatch.chdir(tmp_path)
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**SRUN_TASK, "SLURM_PROCID": "0", **broken}.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    assert main(["export", "--checkpoint", "run", "--output", "out"]) == 2
    err = capsys.readouterr().err
    assert "llmasr export: error: started as one of an srun step of 8 tasks: `llmasr export` runs as one" in err, err
    assert not list(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize("verb", ["train", "decode"])
def test_a_ranked_verbs_help_prints_in_an_srun_step_without_master_addr(monkeypatch, capsys, verb):
    """`srun llmasr train --help` had stopped with the MASTER_ADDR / MASTER_PORT refusal: help needs no ranks."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "CROSS_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)  # and restored at the end, whatever the verb wrote
    for key, value in {**SRUN_TASK, "SLURM_PROCID": "0"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as raised:
        main([verb, "--help"])
    assert raised.value.code == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"usage: llmasr {verb} ") and "MASTER_ADDR" not in out.err, out.err
