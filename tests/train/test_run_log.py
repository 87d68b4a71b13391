"""The loggers of a training process: the console's records beside a terminal's progress bar, and the warnings every
rank logs alike said once."""

import io
import json
import logging
import re
import string
import sys

import pytest

from llmasr.models.ctc import build_ctc_tokenizer
from llmasr.models.ctc_config import CTCConfig
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.progress import Progress, logged_updates, parse_log_line
from llmasr.train.run_log import setup_logging
from llmasr.train.trainer import train
from llmasr.written_by import software

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def rank_0_after():
    yield
    setup_logging(None, 0)  # the console handler is the process's: as the other tests find it


def test_a_record_logged_under_the_bar_has_a_line_of_its_own(tmp_path, monkeypatch, rank_0_after):
    """On a terminal a record had been written after the bar's last character, on the bar's line ("... ctc
    1.2026-12-07 08:57:12 INFO llmasr.train: train update=1 ..."), and the bar drawn again under it."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    setup_logging(None, 0)
    progress = Progress(tmp_path, 0, total_updates=3)
    assert progress.bar is not None
    progress.bar.update(1)
    progress.bar.set_postfix_str("loss 21.463 llm 1.0e-03")
    logging.getLogger("llmasr.train").info("train update=1 loss=21.4631")
    progress.bar.update(1)
    progress.close()
    out = terminal.getvalue()
    assert re.search(rf"(^|[\r\n]){STAMP} INFO llmasr.train: train update=1 loss=21.4631\n", out), repr(out)
    after = out.split("train update=1 loss=21.4631\n", 1)[1]
    assert " 1/3 " in after and " 2/3 " in after  # the bar drawn again below the record, and on from there


def test_a_note_every_rank_logs_alike_is_said_by_rank_0_alone(tmp_path, capsys, rank_0_after):
    """build_ctc_tokenizer does not know its rank: under a launcher its note on a letter list without a word
    separator came once per rank. A rank's warning of its own still shows on every rank."""
    said = {}
    for rank in (1, 0):
        tokens = tmp_path / f"rank{rank}" / "tokens.json"  # one list a rank: the note is said once a process
        tokens.parent.mkdir()
        tokens.write_text(json.dumps(["<blank>", *string.ascii_lowercase, "<unk>"]))
        setup_logging(None, rank)
        build_ctc_tokenizer(CTCConfig(weight=0.3, vocab=str(tokens)))
        logging.getLogger("llmasr.data").warning("skipping bad item train.jsonl:3 of this rank")
        said[rank] = capsys.readouterr().err
    assert "has no word separator" not in said[1] and "has no word separator" in said[0]
    assert all("skipping bad item train.jsonl:3 of this rank" in err for err in said.values())


def test_train_log_s_update_lines_read_back_as_progress_writes_them(tmp_path, rank_0_after):
    """A resume reads train.log's train lines back (progress.relogged): the reader follows the writer's label and
    run_log's record format, so that a change to either cannot leave it finding none; the valid lines are not read."""
    handler = setup_logging(tmp_path, 0)
    try:
        progress = Progress(tmp_path, 0, 3, log_every=1, stream=io.StringIO())
        for update in (1, 2, 3):
            progress.update(update, 0, {"loss": 1.0, "n_utts": 2, "audio_seconds": 3.0}, {"llm": 1e-4}, {})
        progress.validation(3, {"loss": 1.0})
        progress.close()
    finally:
        logging.getLogger("llmasr").removeHandler(handler)
        handler.close()
    assert logged_updates((tmp_path / "train.log").read_text()) == [1, 2, 3]


def test_a_resume_says_which_updates_train_log_holds_twice(tiny_llm_dir, tmp_path, caplog):
    """A run killed after its last checkpoint had logged updates the resume trains again: train.log held them twice,
    the stopped run's above the resume's, and said nothing of it."""
    corpus = write_tiny_corpus(tmp_path / "train", n=16)
    run = tmp_path / "run"
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=run, grad_accum=1, epochs=2, save_every_updates=2)
    train(load_recipe(data=data), "zero0", stop_after_updates=5)  # as a kill would end it: no save after update 4
    with caplog.at_level(logging.WARNING, logger="llmasr"):
        train(load_recipe(data=data), "zero0", resume="latest")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train.log above holds")]
    assert said == [
        "train.log above holds update 5 from before this resume at update 4 (a run that ended after its last "
        "checkpoint, or a resume from an earlier one): the run trains from update 5 again below, and the lines below "
        "are its own; TensorBoard drops its events of the earlier ones"
    ]
    lines = (run / "train.log").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if said[0] in line)
    assert [parse_log_line(x)["update"] for x in lines[at:] if " train update=" in x][0] == 5
    # each start names the software it ran with (a resume may run on other versions than the run it continues)
    assert [x.endswith(f"software: {software()}") for x in lines if "software: " in x] == [True, True]


def noted_encoder(tmp_path):
    """A FunASR encoder directory whose frontend_conf gives a note (NOTE) each time it is read."""
    from llmasr.testing.tiny_funasr import paraformer_frontend_conf, tiny_sanm_conf, write_funasr_dir

    frontend = {**paraformer_frontend_conf(), "filter_length_max": 3000}
    return write_funasr_dir(tmp_path / "paraformer", encoder_conf=tiny_sanm_conf(), frontend_conf=frontend)


NOTE = "frontend_conf.filter_length_max=3000 is ignored"


def test_a_funasr_directory_s_notes_come_once_a_run(tiny_llm_dir, tmp_path):
    """The start-up reads an encoder's FunASR directory three times (the text side, the model, the start checks): each
    note on its frontend_conf came three times a rank, in train.log as on stderr."""
    encoder = noted_encoder(tmp_path)
    corpus = write_tiny_corpus(tmp_path / "train", n=4)
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run", encoder_dir=encoder,
                            dropout=None, max_updates=1)  # fmt: skip
    for _ in range(2):  # a second run of the process says it again, in its own log
        train(load_recipe(data=data), "zero0", overwrite=True)
        log = (tmp_path / "run" / "train.log").read_text()
        assert log.count(NOTE) == 1


@pytest.mark.slow
def test_a_two_rank_run_says_each_start_up_line_once(tiny_llm_dir, tmp_path):
    """The start-up output of `deepspeed --num_gpus 2 ... llmasr train` (stderr): a FunASR directory's frontend notes
    had come six times (three reads a rank), the CTC letter list's note and torch's deprecation of the collective
    DeepSpeed's ZeRO-2 calls once per rank."""
    import yaml

    from llmasr.testing.launcher import launch_train

    encoder = noted_encoder(tmp_path)
    letters = tmp_path / "tokens.json"
    letters.write_text(json.dumps(["<blank>", *string.ascii_lowercase, "<unk>"]))
    corpus = write_tiny_corpus(tmp_path / "train", n=12)
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run", encoder_dir=encoder,
                            dropout=None, ctc_weight=0.3, max_updates=2)  # fmt: skip
    data["model"]["ctc"]["vocab"] = str(letters)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    err = launch_train(recipe, "zero2", tmp_path / "run").stderr
    said = [re.sub(rf"^{STAMP} ", "", line) for line in err.splitlines() if "llmasr" in line or "Warning" in line]
    twice = sorted({line for line in said if said.count(line) > 1})
    assert not twice, twice
    assert sum(NOTE in line for line in said) == 1
    assert sum("has no word separator" in line for line in said) == 1


def test_llmasr_check_says_a_funasr_directory_s_notes_once(tiny_llm_dir, tmp_path):
    """`llmasr check` (as export and decode, one process) reads an encoder's FunASR directory three times: each note
    on its frontend_conf had come three times on stderr (run as a user runs it: pytest's own log capture would
    hold them otherwise)."""
    import subprocess

    import yaml

    encoder = noted_encoder(tmp_path)
    corpus = write_tiny_corpus(tmp_path / "train", n=4)
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run", encoder_dir=encoder,
                            dropout=None, max_updates=1)  # fmt: skip
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "llmasr", "check", "--config", str(recipe), "--deepspeed", "zero2", "--out",
           str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(NOTE) == 1, done.stderr


def test_llmasr_check_gives_its_report_s_warnings_once(tmp_path, recipe_file):
    """A one-process check printed the padding-duplicates warning and max_updates past the epochs on stderr as well as
    in its report (as a user runs it: pytest's own log capture would hold them otherwise)."""
    import subprocess

    cmd = [sys.executable, "-m", "llmasr", "check", "--config", str(recipe_file), "--deepspeed", "zero2",
           "--world-size", "3", "--out", str(tmp_path / "out"), "train.max_updates=100"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "padding duplicates" not in done.stderr and "max_updates" not in done.stderr, done.stderr
    assert done.stdout.count("are padding duplicates") == 1 and done.stdout.count("train.max_updates 100 sizes") == 1
