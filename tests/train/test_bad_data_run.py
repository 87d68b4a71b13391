"""data.max_bad_fraction in real tiny training runs: refused at start where the manifest alone decides, checked at
every epoch end (also when the epoch's batches divide into whole windows), and what the batching filters skip is in
train.log from its start."""

import json

import pytest
import yaml

from llmasr.commands.train import main
from llmasr.data.bad_data import TooMuchBadData
from llmasr.recipe import load_recipe
from llmasr.testing.run_dirs import write_wav
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train.trainer import train


def corpus_with(tmp_path, extra: list[dict]) -> str:
    manifest = write_tiny_corpus(tmp_path / "corpus", n=20)
    lines = manifest.read_text().splitlines() + [json.dumps(r) for r in extra]
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest)


def test_items_found_bad_while_loading_stop_the_run_at_epoch_end(tiny_llm_dir, tmp_path):
    """A corrupt file (its duration given, so no header probe finds it) and a 10 ms clip the manifest says is 1 s
    long (batching would skip a clip known that short from the start), 2 of 22 items, fewer than the 1,000 the
    in-epoch check waits for. With grad_accum 1 the epoch's batches divide into whole windows, so
    the training loop stops iterating right after the last batch: the epoch-end check must still run."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_wav(corpus / "vad.wav", 0.01, seed=0)
    write_wav(corpus / "long.wav", 7.0, seed=1)
    (corpus / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)  # a missing one is found at start
    manifest = corpus_with(
        tmp_path,
        [
            {"key": "corrupt", "source": "corrupt.wav", "target": "one", "duration": 0.5},
            {"key": "vad", "source": "vad.wav", "target": "two", "duration": 1.0},
            {"key": "long", "source": "long.wav", "target": "three", "duration": 7.0},  # over max_duration
        ],
    )
    run = tmp_path / "run"
    data = tiny_recipe_dict(tiny_llm_dir, train=[manifest], output_dir=run, grad_accum=1)
    data["data"]["batching"]["max_duration"] = 5.0
    with pytest.raises(TooMuchBadData, match=r"2 of 22 items \(9.09%\) are unusable.* at epoch end") as err:
        train(load_recipe(data=data), "zero0")
    assert f"{manifest}:22 key=vad: manifest duration 1.000 s, but its audio holds 0.010 s" in str(err.value)
    assert (
        f"{manifest}:21 key=corrupt: audio {tmp_path / 'corpus' / 'corrupt.wav'}: unreadable or corrupt audio ("
        in str(err.value)
    )
    log = (run / "train.log").read_text()
    first_update = log.index(" train update=")  # updates ran: the check came at the epoch's end
    skipped = log.index("train: 1 of 23 lines are skipped every epoch: 1 longer than data.batching.max_duration")
    assert skipped < first_update and f"(first: {manifest}:23)" in log


def test_manifest_faults_refuse_the_run_before_it_starts(tiny_llm_dir, tmp_path, capsys):
    manifest = corpus_with(tmp_path, [{"key": "blank", "source": "wav/utt00_0000.wav", "target": " ", "duration": 1}])
    run = tmp_path / "run"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_llm_dir, train=[manifest], output_dir=run)))
    assert main(["--config", str(path), "--deepspeed", "zero0"]) == 2  # 1 of 21 = 4.8% > 1%
    err = capsys.readouterr().err
    assert "1 of 21 items (4.76%) are unusable before training starts, above data.max_bad_fraction = 0.01" in err
    assert f"{manifest}:21 key=blank: field 'target' is empty" in err
    assert not list((run / "checkpoints").glob("update_*"))  # nothing ran
    assert not (run / ".lock").exists()  # the run folder is free again
    assert "unusable before training starts" in (run / "train.log").read_text()  # the refusal is in the run's log
    # Under the limit the line is skipped and counted: the run trains on the other 20.
    overrides = ["data.max_bad_fraction=0.05", "train.max_updates=1"]
    assert main(["--config", str(path), "--deepspeed", "zero0", *overrides]) == 0
    assert "train: 1 of 21 manifest lines are unusable before loading" in (run / "train.log").read_text()


def test_a_clip_too_short_for_a_conformers_subsampling_is_skipped_from_the_start_and_named(tiny_llm_dir, tmp_path):
    """A Conformer's conv2d subsampling takes 7 LFR frames at least (0.385 s at LFR 7/6). A 0.3 s clip batched with
    longer ones gave the adaptor an empty utterance and stopped training mid-run; it was then a bad item found as it
    loaded, each epoch. Batching now skips it from the start as too short, named in train.log's start-up warning."""
    from llmasr.testing.tiny_whisper import tiny_conformer_conf

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_wav(corpus / "clip.wav", 0.3, seed=0)
    manifest = corpus_with(tmp_path, [{"key": "clip", "source": "clip.wav", "target": "two"}])
    run = tmp_path / "run"
    data = tiny_recipe_dict(tiny_llm_dir, train=[manifest], output_dir=run, grad_accum=1, max_seconds=6.0)
    data["model"]["encoder"] = {**data["model"]["encoder"], "type": "conformer", "conf": tiny_conformer_conf(560)}
    data["data"]["max_bad_fraction"] = 0.5  # the tiny corpus has clips of 0.2-0.3 s too
    result = train(load_recipe(data=data), "zero0")
    assert len(result["history"]) > 0
    log = (run / "train.log").read_text()
    skipped = log.index("shorter than 0.385 s, the least audio the encoder takes (its frontend and subsampling; ")
    assert skipped < log.index(" train update=") and f"{manifest}:" in log[skipped : log.index("\n", skipped) + 200]
    assert "audio too short for the encoder" not in log  # not loaded to be found bad
