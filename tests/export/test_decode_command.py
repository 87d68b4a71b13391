"""`llmasr decode`: an exported model and its checkpoint agree, bad data and a missing model fail clearly, each
manifest gets its folder and an earlier decode's files go, and settings come from the flags, then the model's own."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from llmasr.commands.decode import DECODE_FLAGS, main
from llmasr.config_io import ConfigError
from llmasr.export import decode_results
from llmasr.export.decode import DecodeError, DecodeOptions, decode_manifest, load_decode_model
from llmasr.export.export import export_model
from llmasr.models.decoding import DecodeConfig, decode_config
from llmasr.models.exported import load_exported
from llmasr.models.llm import base_lm
from llmasr.testing.run_dirs import TARGETS, TEXTS, model_section, train_run, write_corpus
from llmasr.testing.run_dirs import read_lines as _read
from llmasr.testing.tiny_recipe import random_batch, speech_logits


def test_cli_with_exported_model_and_checkpoint_agree(runs, exported_dir, corpus, tmp_path, capsys):
    common = ["--data", str(corpus), "--max-new-tokens", "5", "--num-workers", "0", "--batch-seconds", "3"]
    assert main(["--model", str(exported_dir), "--output", str(tmp_path / "m"), *common]) == 0
    assert "WER" in capsys.readouterr().out
    assert main(["--checkpoint", str(runs[2]), "--output", str(tmp_path / "c"), *common]) == 0
    assert _read(tmp_path / "m" / "hyp.txt") == _read(tmp_path / "c" / "hyp.txt")


def test_too_much_bad_data_fails_after_writing(exported_dir, tmp_path, capsys):
    manifest = write_corpus(tmp_path / "d", TEXTS[:2], extra_lines=["{bad", "{worse"])
    rc = main(
        [
            "--model",
            str(exported_dir),
            "--data",
            str(manifest),
            "--output",
            str(tmp_path / "o"),
            "--max-new-tokens",
            "2",
            "--num-workers",
            "0",
        ]
    )
    assert rc == 2  # bad input (README: "exits with 2 for bad input, 1 otherwise"), as train's TooMuchBadData exits
    err = capsys.readouterr().err
    assert "too much bad data: 2 of 4" in err and "above --max-bad-fraction = " in err  # decode's own flag
    assert "or raise --max-bad-fraction." in err and "data.max_bad_fraction" not in err and "epoch" not in err
    assert len(_read(tmp_path / "o" / "hyp.txt")) == 2


def test_several_manifests_get_their_own_directories(exported_dir, tmp_path):
    a = write_corpus(tmp_path / "a", TEXTS[:2], name="dev")
    b = write_corpus(tmp_path / "b", TEXTS[2:4], name="test")
    rc = main(
        [
            "--model",
            str(exported_dir),
            "--data",
            str(a),
            "--data",
            str(b),
            "--output",
            str(tmp_path / "o"),
            "--max-new-tokens",
            "2",
            "--num-workers",
            "0",
        ]
    )
    assert rc == 0
    assert len(_read(tmp_path / "o" / "dev" / "hyp.txt")) == 2 and len(_read(tmp_path / "o" / "test" / "hyp.txt")) == 2
    assert len(_read(tmp_path / "o" / "wer.txt")) == 2 * 5  # five summary lines each


def test_manifests_of_one_file_name_get_the_folders_training_names_them_by(exported_dir, tmp_path, capsys):
    """clean/test.jsonl and other/test.list: training logs them as valid[clean/test] and valid[other/test]; decode
    had written them to test/ and test.list/ (test/ and test_2/ for two .jsonl), and both wer.txt summaries began
    "test...:". Now each folder is its set name, nested as the manifests' folders are, and its summary says so."""
    a = write_corpus(tmp_path / "data" / "clean", TEXTS[:2])
    b = write_corpus(tmp_path / "data" / "other", TEXTS[2:4]).rename(tmp_path / "data" / "other" / "test.list")
    out = tmp_path / "o"
    common = ["--model", str(exported_dir), "--output", str(out), "--max-new-tokens", "2", "--num-workers", "0"]
    assert main([*common, "--data", str(a), "--data", str(b)]) == 0
    names = ["clean/test", "other/test"]  # their valid[NAME] in train.log, valid/NAME/* in TensorBoard
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("hyp.txt")) == [f"{n}/hyp.txt" for n in names]
    assert json.loads((out / "manifests.json").read_text()) == {"clean/test": str(a), "other/test": str(b)}
    firsts = [line.split(":")[0] for line in _read(out / "wer.txt") if " WER " in line]
    assert firsts == names and firsts == [line.split(":")[0] for line in capsys.readouterr().out.splitlines()[::5]]
    assert [json.loads((out / n / "wer.json").read_text())["name"] for n in names] == names
    assert main([*common, "--data", str(a), "--data", str(b)]) == 0  # decoded into again: its own folders
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "clean").write_text("mine")  # the folder clean/test/ needs
    capsys.readouterr()
    assert main([*common[:2], "--output", str(tmp_path / "o2"), *common[4:], "--data", str(a), "--data", str(b)]) == 2
    assert f"{tmp_path / 'o2' / 'clean'} is a file, not a folder" in capsys.readouterr().err


def test_a_manifest_s_folder_may_hold_another_s(exported_dir, tmp_path):
    """a/clean.jsonl, b/clean/test.jsonl and c/test.jsonl are clean/, clean/test/ and c/test/: decoding them again is
    not refused for the clean/test/ inside clean/, and a decode that no longer writes clean/test/ clears it and the
    emptied clean/ with it; a manifests.json name leading out of OUTPUT is left alone."""
    a = write_corpus(tmp_path / "a", TEXTS[:1], name="clean")
    b = write_corpus(tmp_path / "b" / "clean", TEXTS[1:2])
    c = write_corpus(tmp_path / "c", TEXTS[2:3])
    out = tmp_path / "o"
    common = ["--model", str(exported_dir), "--output", str(out), "--max-new-tokens", "2", "--num-workers", "0"]
    assert main([*common, "--data", str(b), "--data", str(c), "--data", str(a)]) == 0
    assert sorted(json.loads((out / "manifests.json").read_text())) == ["c/test", "clean", "clean/test"]
    assert (out / "clean" / "hyp.txt").is_file() and (out / "clean" / "test" / "hyp.txt").is_file()
    assert main([*common, "--data", str(a), "--data", str(b), "--data", str(c)]) == 0
    assert main([*common, "--data", str(a), "--data", str(c)]) == 0  # clean and test now
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_dir()) == ["clean", "test"]
    assert main([*common, "--data", str(b), "--data", str(c)]) == 0  # clean/test and c/test: clean/ a parent only
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("hyp.txt")) == ["c/test/hyp.txt",
                                                                                  "clean/test/hyp.txt"]  # fmt: skip
    (tmp_path / "hyp.txt").write_text("mine")
    (out / "manifests.json").write_text(json.dumps({"..": "x", "/tmp": "y", "c/test": str(c)}))
    assert main([*common, "--data", str(a)]) == 0
    assert (tmp_path / "hyp.txt").read_text() == "mine" and not (out / "c").exists() and (out / "clean").is_dir()


def test_a_second_decode_into_the_same_folder_leaves_nothing_stale(exported_dir, tmp_path, capsys):
    """One manifest decoded into OUT, then two: OUT's own hyp.txt, results.jsonl and wer.json from the first run are
    gone (they had stayed beside the new combined wer.txt); a missing manifest is an input error (exit 2), and so
    is --tag beside --model (it had been ignored)."""
    a = write_corpus(tmp_path / "a", TEXTS[:2], name="dev")
    b = write_corpus(tmp_path / "b", TEXTS[2:4], name="test")
    out = tmp_path / "o"
    common = ["--model", str(exported_dir), "--output", str(out), "--max-new-tokens", "2", "--num-workers", "0"]
    assert main([*common, "--data", str(a), "--ctc"]) == 0 and (out / "ctc" / "hyp.txt").is_file()
    assert main([*common, "--data", str(a)]) == 0
    assert (out / "hyp.txt").is_file() and (out / "wer.json").is_file()
    assert not (out / "ctc").exists()  # its files had gone, the empty folder had stayed, as if --ctc had run
    assert main([*common, "--data", str(a), "--data", str(b)]) == 0
    assert not any((out / name).exists() for name in ("hyp.txt", "ref.txt", "results.jsonl", "wer.json", "bad.jsonl"))
    assert (out / "wer.txt").is_file() and (out / "dev" / "hyp.txt").is_file()
    assert main([*common, "--data", str(tmp_path / "nope.jsonl")]) == 2
    (tmp_path / "afile").write_text("x")  # an output folder that cannot be made: named as such, not as the manifest's
    bad_out = ["--model", str(exported_dir), "--data", str(a), "--output", str(tmp_path / "afile" / "o")]
    assert (
        main(bad_out) == 2
        and f"--output {tmp_path / 'afile' / 'o'}: cannot create the folder" in capsys.readouterr().err
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main([*common, "--data", str(a), "--tag", "update_00000002"])
    assert err.value.code == 2 and "--tag picks a checkpoint of --checkpoint RUN_DIR" in capsys.readouterr().err


def test_subfolders_of_an_earlier_decode_of_several_manifests_are_removed(exported_dir, tmp_path):
    """Three manifests decoded into OUT, then two, then one: the subfolder of a manifest no longer decoded loses the
    earlier decode's files (it had stayed, read as this decode's results), files of the user's own stay with their
    folder, and manifests.json says which manifest each subfolder holds."""
    a, b, c = (write_corpus(tmp_path / n, TEXTS[i : i + 1], name=n) for i, n in enumerate(("dev", "test", "other")))
    out = tmp_path / "o"
    common = ["--model", str(exported_dir), "--output", str(out), "--max-new-tokens", "2", "--num-workers", "0"]
    assert main([*common, "--data", str(a), "--data", str(b), "--data", str(c)]) == 0
    assert json.loads((out / "manifests.json").read_text()) == {"dev": str(a), "test": str(b), "other": str(c)}
    (out / "test" / "notes.txt").write_text("mine")
    assert main([*common, "--data", str(a), "--data", str(c)]) == 0
    assert not (out / "test" / "hyp.txt").exists() and (out / "test" / "notes.txt").read_text() == "mine"
    assert (out / "other" / "hyp.txt").is_file()
    assert json.loads((out / "manifests.json").read_text()) == {"dev": str(a), "other": str(c)}
    assert main([*common, "--data", str(a)]) == 0
    assert not (out / "dev").exists() and not (out / "other").exists() and not (out / "manifests.json").exists()
    assert (out / "hyp.txt").is_file() and (out / "test" / "notes.txt").is_file()


def test_a_decode_stopped_part_way_leaves_no_earlier_decode_s_files(exported_dir, tmp_path, monkeypatch, caplog):
    """A decode stopped while decoding (Ctrl-C, a preempted job, a crash) had left the previous decode's complete
    hyp.txt, wer.txt, ctc/ ... in OUTPUT, read as its own results. Once its start-up checks pass, decode removes
    the files it writes, in every folder it writes, and says so; the user's own files stay."""
    from llmasr.models.speech_llm import SpeechLLM

    a = write_corpus(tmp_path / "a", TEXTS[:2], name="dev")
    b = write_corpus(tmp_path / "b", TEXTS[2:4], name="test")
    out, out2 = tmp_path / "o", tmp_path / "o2"
    common = ["--model", str(exported_dir), "--max-new-tokens", "2", "--num-workers", "0"]
    assert main([*common, "--output", str(out), "--data", str(a), "--ctc"]) == 0
    assert main([*common, "--output", str(out2), "--data", str(a), "--data", str(b)]) == 0
    (out / "notes.txt").write_text("mine")
    real = SpeechLLM.transcribe

    def stopped_at_test(self, batch, *args, **kwargs):  # Ctrl-C while the manifest test.jsonl is decoded
        if any(str(key).startswith("test") for key in batch.keys):
            raise KeyboardInterrupt
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(SpeechLLM, "transcribe", stopped_at_test)
    with caplog.at_level("INFO", logger="llmasr"), pytest.raises(KeyboardInterrupt):
        main([*common, "--output", str(out), "--data", str(b)])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (
        f"removed an earlier decode's bad.jsonl, hyp.txt, ref.txt, results.jsonl, wer.json, wer.txt, ctc/hyp.txt, "
        f"ctc/results.jsonl, ctc/wer.json, ctc/wer.txt from {out}: this decode writes its own, and one stopped before "
        "it ends leaves none" in caplog.text
    )
    with pytest.raises(KeyboardInterrupt):  # several manifests: dev/ decoded anew, then stopped in test/
        main([*common, "--output", str(out2), "--data", str(a), "--data", str(b)])
    assert (out2 / "dev" / "hyp.txt").is_file() and not any((out2 / "test").iterdir())
    assert sorted(p.name for p in out2.iterdir()) == ["dev", "test"]  # no wer.txt, no manifests.json of the earlier


def test_the_cli_clears_each_folder_once(exported_dir, tmp_path, monkeypatch):
    """`llmasr decode` clears every folder it writes before its first manifest, through decode_folders as the library's
    decode_manifest does; decode_manifest, told so, does not clear it again (it had, just before writing)."""
    import llmasr.commands.decode as command
    import llmasr.export.decode as library
    from llmasr.export import decode_folders

    a = write_corpus(tmp_path / "a", TEXTS[:2], name="dev")
    cleared = []
    real = decode_folders.clear_outputs

    def counted(folder):
        cleared.append(folder)
        return real(folder)

    for module in (decode_folders, command, library):  # wherever a decode may call it from
        monkeypatch.setattr(module, "clear_outputs", counted, raising=False)
    out = tmp_path / "o"
    common = ["--model", str(exported_dir), "--max-new-tokens", "2", "--num-workers", "0", "--data", str(a)]
    assert main([*common, "--output", str(out)]) == 0 and (out / "hyp.txt").is_file()
    assert cleared == [out]


def test_a_manifest_s_subfolder_of_other_files_is_refused_before_decoding(exported_dir, tmp_path, capsys):
    """Several manifests are written into OUTPUT/<stem>/: a manifest named llm.jsonl decoded into an export folder
    had written hyp.txt, wer.json ... into the export's llm/ (the LLM). A subfolder that holds files decode does not
    write is refused before decoding, named; one of an earlier decode's files alone is decoded into again."""
    import shutil

    export = shutil.copytree(exported_dir, tmp_path / "export")
    llm_files = sorted(p.name for p in (export / "llm").iterdir())
    a = write_corpus(tmp_path / "a", TEXTS[:1], name="llm")
    b = write_corpus(tmp_path / "b", TEXTS[1:2], name="dev")
    common = ["--model", str(export), "--max-new-tokens", "2", "--num-workers", "0", "--data", str(a), "--data", str(b)]
    assert main([*common, "--output", str(export)]) == 2
    err = capsys.readouterr().err
    assert (
        f"--output {export}: {export / 'llm'} (the folder of --data {a}: one subfolder per manifest, named as "
        "training names it) already holds files llmasr decode does not write (" in err
    )
    assert "give another --output, or rename the manifest so that its folder is a new one" in err
    assert sorted(p.name for p in (export / "llm").iterdir()) == llm_files and not (export / "dev").exists()
    out = tmp_path / "o"
    assert main([*common, "--output", str(out), "--ctc"]) == 0
    assert main([*common, "--output", str(out)]) == 0  # only a decode's own files there (ctc/ among them)
    (out / "dev" / "ctc").mkdir()
    (out / "dev" / "ctc" / "mine.txt").write_text("mine")
    capsys.readouterr()
    assert main([*common, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'dev'} (the folder of --data {b}" in err and "does not write (ctc/mine.txt)" in err


def test_a_decode_that_fails_while_writing_leaves_no_cut_short_file(exported_dir, tmp_path, monkeypatch):
    """A write that dies part-way (a full disk, a kill) leaves the earlier file or none, never a cut-short hyp.txt
    that a scorer would read as the whole decode."""
    a = write_corpus(tmp_path / "a", TEXTS[:4], name="dev")
    out = tmp_path / "o"
    common = ["--model", str(exported_dir), "--output", str(out), "--max-new-tokens", "2", "--num-workers", "0"]
    real_one_line, calls = decode_results._one_line, []

    def dies_on_the_third_line(text):
        calls.append(text)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_one_line(text)

    monkeypatch.setattr(decode_results, "_one_line", dies_on_the_third_line)
    with pytest.raises(OSError, match="No space left"):
        main([*common, "--data", str(a)])
    assert not (out / "hyp.txt").exists() and [p.name for p in out.iterdir() if "hyp" in p.name] == []


def test_missing_model_dir_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text("{}\n")  # a manifest file is there: the model directory is at fault
    rc = main(["--model", str(tmp_path), "--data", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o")])
    assert rc == 2 and "not a directory written by `llmasr export`" in capsys.readouterr().err


def test_a_kaldi_data_folder_given_as_data_names_the_command_that_writes_its_manifest(exported_dir, tmp_path, capsys):
    """`--data data/kaldi/test` was refused as "a directory, not a manifest file" alone."""
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text("u1 /audio/u1.wav\n")
    rc = main(["--model", str(exported_dir), "--data", str(kaldi), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and f"--data: {kaldi}: a directory, not a manifest file; {kaldi} is a Kaldi data folder: " in err
    assert f"`llmasr data kaldi {kaldi} OUT.jsonl` writes its manifest" in err


def test_a_run_or_checkpoint_given_as_the_model_is_pointed_to_checkpoint(runs, tmp_path, capsys):
    """`decode --model RUN_DIR` (or a checkpoint's folder, or Transcriber.load(RUN_DIR)) had only said the folder
    was no export: it now says how a run is decoded as it is, or exported."""
    from llmasr.export.transcribe import Transcriber
    from llmasr.models.exported import ExportedModelError

    (tmp_path / "x.jsonl").write_text("{}\n")
    for given in (runs[2], runs[2] / "checkpoints" / "update_00000001"):
        rc = main(["--model", str(given), "--data", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert (
            rc == 2
            and f"{given} is a training run or checkpoint, not an export: decode it with --checkpoint "
            f"{given} (Transcriber.load(checkpoint=...)), or export it first (llmasr export --checkpoint {given} "
            "--output DIR)"
            in err
        ), err
    with pytest.raises(ExportedModelError, match="is a training run or checkpoint, not an export"):
        Transcriber.load(runs[2])


@pytest.mark.slow
def test_export_and_decode_a_checkpoint_the_trainer_wrote(base_dirs, tmp_path):
    """The real trainer's run directory (ZeRO-2, LoRA, CTC head) exports and decodes to a WER."""
    pytest.importorskip("llmasr.train.trainer")
    from llmasr.recipe import load_recipe
    from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
    from llmasr.train.trainer import train

    llm, enc = base_dirs
    data = write_tiny_corpus(tmp_path / "corpus", n=8)
    run = tmp_path / "run"
    recipe = load_recipe(
        data=tiny_recipe_dict(llm, train=[data], valid=[data], output_dir=run, encoder_dir=enc, ctc_weight=0.3)
    )
    train(recipe, "zero2")
    latest = (run / "checkpoints" / "latest").read_text().strip()
    out = export_model(run, tmp_path / "model", dtype="fp32")

    assert yaml.safe_load((out / "llmasr_model.yaml").read_text())["source"]["tags"] == [latest]
    rc = main(["--model", str(out), "--data", str(data), "--output", str(tmp_path / "hyp"), "--num-workers", "0"])
    assert rc == 0
    summary = json.loads((tmp_path / "hyp" / "wer.json").read_text())
    assert summary["utterances"] == 8 and summary["metric"] == "WER" and summary["rate"] >= 0
    # Decoding the checkpoint directly gives the same hypotheses as the merged export.
    assert (
        main(["--checkpoint", str(run), "--data", str(data), "--output", str(tmp_path / "hc"), "--num-workers", "0"])
        == 0
    )
    assert _read(tmp_path / "hyp" / "hyp.txt") == _read(tmp_path / "hc" / "hyp.txt")


def test_cli_ctc_prints_both_lines(runs, exported_dir, corpus, tmp_path, capsys):
    common = ["--data", str(corpus), "--max-new-tokens", "3", "--num-workers", "0", "--ctc"]
    assert main(["--model", str(exported_dir), "--output", str(tmp_path / "m"), *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("test.jsonl: WER ") and lines[5].startswith("test.jsonl (CTC branch, greedy): WER ")
    assert json.loads((tmp_path / "m" / "ctc" / "wer.json").read_text())["branch"] == "ctc"
    assert main(["--checkpoint", str(runs[2]), "--output", str(tmp_path / "c"), *common]) == 0
    assert _read(tmp_path / "m" / "ctc" / "hyp.txt") == _read(tmp_path / "c" / "ctc" / "hyp.txt")


def test_ctc_on_a_model_without_a_ctc_head_is_a_clear_error(base_dirs, train_corpus, corpus, tmp_path, capsys):
    from llmasr.testing.run_dirs import model_section, train_run

    run = train_run(tmp_path / "run", model_section(*base_dirs, ctc=False), train_corpus).run_dir
    exported = export_model(run, tmp_path / "model")
    rc = main(["--model", str(exported), "--data", str(corpus), "--output", str(tmp_path / "o"), "--ctc"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--ctc: the model directory {exported} has no CTC head" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(DecodeError, match="no CTC head"):
        decode_manifest(load_exported(exported), corpus, tmp_path / "o2", DecodeConfig(), DecodeOptions(ctc=True))
    # CTC-guided decoding is refused the same way, before anything is decoded; by default it is simply off
    args = ["--model", str(exported), "--data", str(corpus), "--output", str(tmp_path / "o3"), "--ctc-weight", "0.5"]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and "decode.ctc_weight 0.5: CTC-guided decoding needs a CTC head, and this model has none" in err
    assert not (tmp_path / "o3").exists()
    with pytest.raises(DecodeError, match="needs a CTC head"):
        decode_manifest(load_exported(exported), corpus, tmp_path / "o4", DecodeConfig(ctc_weight=0.5))
    summary = decode_manifest(load_exported(exported), corpus, tmp_path / "o5", DecodeConfig(max_new_tokens=2))
    assert summary["mode"] == "greedy"
    # so is the CTC gate: the refusal names the flag given and the way to gate without a head
    rc = main(["--model", str(exported), "--data", str(corpus), "--output", str(tmp_path / "o6"), "--ctc-gate"])
    err = capsys.readouterr().err
    assert rc == 2 and "decode.ctc_gate: the gate reads the CTC head's best path, and this model has none" in err
    assert "decode without the gate (no --ctc-gate; ctc_gate false)" in err and "(--vad DIR; decode.vad)" in err
    assert not (tmp_path / "o6").exists()


def test_decode_config_given_then_saved_then_defaults():
    saved = DecodeConfig(num_beams=3, metric="cer", tokens_per_second=5.0)
    cfg = decode_config(saved, num_beams=2, metric=None, max_new_tokens=None)
    assert (cfg.num_beams, cfg.metric, cfg.tokens_per_second, cfg.batch_seconds, cfg.max_new_tokens) == (
        2, "cer", 5.0, 120.0, None,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"decode.num_beams: must be >= 1, got 0"):
        decode_config(saved, num_beams=0)
    with pytest.raises(TypeError, match="beam"):
        decode_config(saved, beam=2)
    # every decode setting has its flag
    assert sorted(DECODE_FLAGS) == sorted(f.name for f in dataclasses.fields(DecodeConfig))


def test_cli_flags_override_the_exported_decode_settings(exported_dir, corpus, tmp_path, capsys):
    import shutil

    model_dir = shutil.copytree(exported_dir, tmp_path / "model")
    desc = yaml.safe_load((model_dir / "llmasr_model.yaml").read_text())
    desc["decode"].update(max_new_tokens=2, batch_seconds=0.01, num_beams=2)
    (model_dir / "llmasr_model.yaml").write_text(yaml.safe_dump(desc))
    _, saved, opts = load_decode_model(model_dir)
    assert (saved.max_new_tokens, saved.num_beams, opts.max_bad_fraction, opts.num_workers) == (2, 2, 0.01, 2)
    common = ["--model", str(model_dir), "--data", str(corpus), "--num-workers", "0"]
    assert main([*common, "--output", str(tmp_path / "saved")]) == 0
    assert main([*common, "--output", str(tmp_path / "given"), "--max-new-tokens", "3", "--beam", "1"]) == 0
    got = {k: json.loads((tmp_path / k / "wer.json").read_text()) for k in ("saved", "given")}
    assert (got["saved"]["max_new_tokens"], got["saved"]["num_beams"], got["saved"]["batch_seconds"]) == (2, 2, 0.01)
    assert (got["given"]["max_new_tokens"], got["given"]["num_beams"], got["given"]["batch_seconds"]) == (3, 1, 0.01)
    # 0 unsets the saved cap: the cap by duration again (0 had been refused, and no other spelling unset it)
    assert main([*common, "--output", str(tmp_path / "unset"), "--max-new-tokens", "0"]) == 0
    assert json.loads((tmp_path / "unset" / "wer.json").read_text())["max_new_tokens"] is None
    capsys.readouterr()
    assert main([*common, "--output", str(tmp_path / "zero"), "--beam", "0"]) == 2
    assert "llmasr decode: error: decode.num_beams: must be >= 1, got 0" in capsys.readouterr().err
    desc["decode"]["metric"] = "bleu"
    (model_dir / "llmasr_model.yaml").write_text(yaml.safe_dump(desc))
    assert main([*common, "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert f"{model_dir / 'llmasr_model.yaml'}: decode.metric: one of auto, wer, cer; got 'bleu'" in err


def test_checkpoint_decoding_takes_the_runs_bad_data_tolerance(runs):
    from llmasr.recipe import load_recipe

    recipe = load_recipe(runs[2] / "recipe.yaml")
    _, saved, opts = load_decode_model(checkpoint=runs[2])
    assert saved == recipe.decode and opts.max_bad_fraction == recipe.data.max_bad_fraction
    model, _, _ = load_decode_model(checkpoint=runs[2], dtype="bf16")  # --dtype holds for a checkpoint too
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}


def test_a_checkpoint_decodes_in_its_recipes_llm_dtype_as_its_default_export(runs, copy_run, tmp_path):
    """No --dtype: a checkpoint's LLM is in the run's model.llm.dtype, as `llmasr export` writes it by default (it
    had always been float32, so a checkpoint and its export decoded differently)."""
    run = copy_run(runs[2], tmp_path / "bf16_run")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["model"]["llm"]["dtype"] = "bfloat16"
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    model, _, _ = load_decode_model(checkpoint=run)
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.encoder.parameters()} == {torch.float32}
    # The buffers as the export loads them (and training kept them): the rotary frequencies had been rounded to
    # bfloat16 with the weights, moving every position's angle.
    exported, _, _ = load_decode_model(export_model(run, tmp_path / "export"))
    buffers = {n: b.dtype for n, b in base_lm(model.llm).named_buffers()}
    assert buffers == {n: b.dtype for n, b in exported.llm.named_buffers()}
    assert buffers["model.rotary_emb.inv_freq"] == torch.float32
    model, _, _ = load_decode_model(checkpoint=run, dtype="fp32")
    assert {p.dtype for p in model.llm.parameters()} == {torch.float32}


def test_a_bfloat16_checkpoint_decodes_with_the_weights_of_its_export(base_dirs, train_corpus, tmp_path):
    """A run whose LLM is bfloat16 (model.llm.dtype, as Fun-ASR-Nano's recipe): its export merges LoRA in float32
    and then rounds the merged weights, while `decode --checkpoint` had rounded base weights and adapters apart and
    added them at each step: other logits (0.004 apart on the tiny model, a greedy token flipped), so a checkpoint
    scored other texts than the model shipped from it. It now decodes with exactly the export's weights."""
    section = model_section(*base_dirs)  # LoRA on the frozen encoder and the LLM
    section["llm"]["dtype"] = "bfloat16"
    run = train_run(tmp_path / "run", section, train_corpus, updates=2).run_dir
    checkpoint, _, _ = load_decode_model(checkpoint=run)
    exported, _, _ = load_decode_model(export_model(run, tmp_path / "export"))
    assert {p.dtype for p in checkpoint.llm.parameters()} == {torch.bfloat16}
    batch = random_batch(exported, TARGETS, seed=7)
    torch.testing.assert_close(speech_logits(checkpoint, batch), speech_logits(exported, batch), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(
            checkpoint.ctc_head(*checkpoint.encoder(batch.feats, batch.feat_lens)),
            exported.ctc_head(*exported.encoder(batch.feats, batch.feat_lens)), rtol=0, atol=0,
        )  # fmt: skip


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_during_decode_is_named_and_leaves_no_lock(exported_dir, corpus, tmp_path, name):
    """SIGUSR1 (SLURM's `--signal=USR1@SECONDS` notice, which the README's batch script asks for and sends to a
    decode run in it too) killed a decode with no word (exit 138) and left the lock file beside --output; it stops
    the decode as SIGTERM does: named, exit 128 + N, no lock left."""
    import signal
    import subprocess
    import sys

    from llmasr.testing.launcher import launcher_env

    script = (
        "import os, signal, sys\n"
        "import llmasr.commands.decode as d\n"
        "decode = d.decode_manifest\n"
        "def decode_then_stopped(*args, **kwargs):\n"
        "    decode(*args, **kwargs)\n"
        f"    os.kill(os.getpid(), signal.{name})\n"
        "d.decode_manifest = decode_then_stopped\n"
        "from llmasr.cli import main\n"
        "sys.exit(main(['decode', '--model', sys.argv[1], '--data', sys.argv[2], '--output', sys.argv[3],\n"
        "               '--max-new-tokens', '2', '--num-workers', '0']))\n"
    )
    out = tmp_path / "o"
    done = subprocess.run([sys.executable, "-c", script, str(exported_dir), str(corpus), str(out)],
                          capture_output=True, text=True, env=launcher_env(), timeout=300)  # fmt: skip
    assert done.returncode == 128 + getattr(signal, name), done.stderr[-2000:]
    assert f"llmasr decode: stopped by {name} while writing {out}" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
