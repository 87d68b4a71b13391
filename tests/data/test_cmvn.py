"""Global CMVN: statistics over fbank+LFR, written as Kaldi am.mvn, bad files counted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from llmasr.data.cmvn import CMVNError, compute_global_cmvn
from llmasr.data.features import FeatureExtractor
from llmasr.data.frontend import FrontendConfig, read_kaldi_cmvn

SR = 16000


def make_corpus(tmp_path, n=6, bad=()):
    rng = np.random.default_rng(0)
    lines = []
    waves = []
    for i in range(n):
        x = (rng.standard_normal(SR // 2 + 160 * i) * (0.05 + 0.02 * i)).astype(np.float32)
        sf.write(tmp_path / f"u{i}.wav", x, SR, subtype="FLOAT")
        waves.append(x)
        lines.append(json.dumps({"key": f"u{i}", "source": f"u{i}.wav", "target": "words"}))
    for j, kind in enumerate(bad):
        if kind == "missing":
            lines.append(json.dumps({"key": f"b{j}", "source": "missing.wav", "target": "x"}))
        elif kind == "json":
            lines.append('{"key": oops')
        elif kind == "short":  # 10 ms, as VAD segmenters cut: too short for an 80-bin fbank frame
            sf.write(tmp_path / "short.wav", np.full(SR // 100, 0.1, np.float32), SR, subtype="FLOAT")
            lines.append(json.dumps({"key": f"b{j}", "source": "short.wav", "target": "x"}))
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, waves


def test_cmvn_matches_direct_statistics(tmp_path):
    path, waves = make_corpus(tmp_path)
    fe = FrontendConfig(lfr_m=7, lfr_n=6, cmvn_file=None)
    out = tmp_path / "exp" / "am.mvn"
    shift, scale = compute_global_cmvn([path], fe, out)
    raw = FeatureExtractor(FrontendConfig(lfr_m=7, lfr_n=6, cmvn_file=None, dither=0.0))  # the statistics' features
    allf = np.concatenate([raw(w, train=False) for w in waves]).astype(np.float64)
    np.testing.assert_allclose(shift, -allf.mean(axis=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scale, 1 / allf.std(axis=0), rtol=1e-4)
    s2, r2 = read_kaldi_cmvn(out)
    np.testing.assert_allclose(s2, shift, rtol=1e-6)
    np.testing.assert_allclose(r2, scale, rtol=1e-6)
    # applying it normalises the training features
    normed = FeatureExtractor(FrontendConfig(lfr_m=7, lfr_n=6, cmvn_file=str(out), dither=0.0))
    alln = np.concatenate([normed(w, train=False) for w in waves])
    np.testing.assert_allclose(alln.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(alln.std(axis=0), 1, atol=1e-3)


def test_the_statistics_are_of_undithered_features(tmp_path):
    """Digital silence reads log(epsilon) undithered: the statistics are of those features, as they always were;
    statistics of dithered ones (a narrower std) trained the demo's model to a worse WER."""
    x = (np.random.default_rng(1).standard_normal(SR) * 0.05).astype(np.float32)
    x[4000:12000] = 0.0
    sf.write(tmp_path / "s.wav", x, SR, subtype="FLOAT")
    (tmp_path / "m.jsonl").write_text(json.dumps({"key": "s", "source": "s.wav", "target": "w"}) + "\n")
    fe = FrontendConfig(lfr_m=7, lfr_n=6, cmvn_file=None, dither=1.0)
    shift, scale = compute_global_cmvn([tmp_path / "m.jsonl"], fe, tmp_path / "am.mvn")
    plain = FeatureExtractor(FrontendConfig(lfr_m=7, lfr_n=6, cmvn_file=None, dither=0.0))(x, train=False)
    np.testing.assert_allclose(scale, 1 / plain.astype(np.float64).std(axis=0), rtol=1e-4)
    dithered = FeatureExtractor(fe)(x, train=False).astype(np.float64)
    assert np.abs(scale * dithered.std(axis=0) - 1).max() > 0.05


def test_cmvn_max_utts_and_existing_cmvn_ignored(tmp_path):
    path, waves = make_corpus(tmp_path)
    fe = FrontendConfig(lfr_m=1, lfr_n=1)
    shift, _ = compute_global_cmvn(path, fe, tmp_path / "a.mvn", max_utts=2)
    raw = FeatureExtractor(fe)
    picked = np.concatenate([raw(waves[0], train=False), raw(waves[5], train=False)])  # evenly spread: first, last
    np.testing.assert_allclose(shift, -picked.mean(axis=0), rtol=1e-5, atol=1e-4)
    # a cmvn_file already in the frontend is not applied while computing new statistics
    with_cmvn = FrontendConfig(lfr_m=1, lfr_n=1, cmvn_file=str(tmp_path / "a.mvn"))
    shift2, _ = compute_global_cmvn(path, with_cmvn, tmp_path / "b.mvn", max_utts=2)
    np.testing.assert_allclose(shift2, shift, rtol=1e-6)


def test_cmvn_bad_files_counted(tmp_path, caplog):
    path, _ = make_corpus(tmp_path, n=6, bad=("missing",))
    fe = FrontendConfig(lfr_m=7, lfr_n=6)
    with pytest.raises(CMVNError, match="1 of 7 utterances unusable"):
        compute_global_cmvn(path, fe, tmp_path / "x.mvn")  # 14% > the default 5%
    shift, scale = compute_global_cmvn(path, fe, tmp_path / "x.mvn", max_bad_fraction=0.2)
    assert shift.shape == scale.shape == (560,)
    assert "1 of 7 utterances unusable" in caplog.text and "train.jsonl:7: audio" in caplog.text
    assert "file not found" in caplog.text


def test_cmvn_short_clip_is_a_bad_line(tmp_path, caplog, capsys):
    from llmasr.commands.data_cmvn import main

    path, waves = make_corpus(tmp_path, n=6, bad=("short",))
    assert main([str(path), "--out", str(tmp_path / "x.mvn")]) == 2  # 1 of 7 > the default 5%
    err = capsys.readouterr().err
    assert "1 of 7 utterances unusable" in err and "train.jsonl:7: audio too short for one feature frame" in err
    assert "160 samples; the frontend needs at least 257" in err
    # what to do: the refusal had named only the fraction
    assert "(more than 5%): fix or drop those lines (`llmasr data check` lists them all), or allow more " in err
    assert "(--max-bad-fraction, or the recipe's data.max_bad_fraction)" in err
    fe = FrontendConfig()
    shift, _ = compute_global_cmvn(path, fe, tmp_path / "x.mvn", max_bad_fraction=0.2)
    good = np.concatenate([FeatureExtractor(fe)(w, train=False) for w in waves])
    np.testing.assert_allclose(shift, -good.mean(axis=0), rtol=1e-5, atol=1e-4)  # the good lines alone


def test_cmvn_nothing_usable(tmp_path):
    path, _ = make_corpus(tmp_path, n=0, bad=("json", "missing"))
    with pytest.raises(CMVNError, match="no usable frames"):
        compute_global_cmvn(path, FrontendConfig(), tmp_path / "x.mvn", max_bad_fraction=1.0)
    with pytest.raises(ValueError, match="fbank"):
        compute_global_cmvn(path, FrontendConfig(kind="whisper"), tmp_path / "x.mvn")


def test_cmvn_for_a_recipe_that_names_the_file_it_writes(tmp_path, capsys):
    """An encoder trained from scratch names in its recipe the am.mvn that `llmasr data cmvn --recipe` is to write:
    the recipe loads without it (the statistics never read it), and takes its data.max_bad_fraction."""
    import yaml

    from llmasr.commands.data_cmvn import main
    from llmasr.recipe import load_recipe

    path, _ = make_corpus(tmp_path, n=6, bad=("missing",))  # 1 bad of 7
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"encoder": {"type": "paraformer", "frontend": {"lfr_m": 7, "lfr_n": 6, "cmvn_file": "am.mvn"},
                              "conf": {"output_size": 16, "attention_heads": 2, "linear_units": 32, "num_blocks": 1}},
                  "llm": {"path": str(tmp_path)}},
        "data": {"train": ["train.jsonl"], "max_bad_fraction": 0.2},
    }))  # fmt: skip
    assert main(["--recipe", str(recipe), "--out", str(tmp_path / "am.mvn")]) == 0
    assert read_kaldi_cmvn(tmp_path / "am.mvn")[0].shape == (560,)
    assert load_recipe(recipe).model.encoder.frontend["cmvn_file"] == str(tmp_path / "am.mvn")  # now it loads
    assert main(["--recipe", str(recipe), "--out", str(tmp_path / "b.mvn"), "--max-bad-fraction", "0.1"]) == 2
    assert "llmasr data cmvn: error: " in (err := capsys.readouterr().err) and "1 of 7 utterances unusable" in err
    # frontend flags beside --recipe had been ignored (the recipe's frontend was used without a word)
    with pytest.raises(SystemExit) as exit_:
        main(["--recipe", str(recipe), "--out", str(tmp_path / "c.mvn"), "--n-mels", "40", "--lfr-m", "1"])
    assert exit_.value.code == 2 and "--n-mels, --lfr-m: the frontend comes from --recipe" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value"), [("--max-utts", "0"), ("--max-utts", "-3"), ("--max-bad-fraction", "2")])
def test_cmvn_refuses_limits_out_of_range(tmp_path, capsys, flag, value):
    from llmasr.commands.data_cmvn import main

    path, _ = make_corpus(tmp_path, n=2)
    with pytest.raises(SystemExit) as exit_:
        main([str(path), "--out", str(tmp_path / "x.mvn"), flag, value])
    assert exit_.value.code == 2 and flag in capsys.readouterr().err and not (tmp_path / "x.mvn").exists()


def test_cmvn_refuses_an_unwritable_out_before_reading_any_audio(tmp_path, capsys, monkeypatch):
    """A folder, or a path under a file, is refused at once, not after a pass over the whole corpus."""
    import llmasr.data.cmvn as cmvn
    from llmasr.commands.data_cmvn import main

    path, _ = make_corpus(tmp_path, n=2)
    read = []
    monkeypatch.setattr(cmvn, "_features", lambda *a: read.append(a) or "not reached")
    (tmp_path / "afile").write_text("x")
    for out, why in [
        (tmp_path, "a folder, not a file"),
        (tmp_path / "afile" / "am.mvn", "afile: a file, not a folder"),
    ]:
        assert main([str(path), "--out", str(out)]) == 2
        assert f"llmasr data cmvn: error: --out {out}: " in (err := capsys.readouterr().err) and why in err
    assert read == []


@pytest.mark.parametrize("samples", [400, SR])  # one frame; a second of digital silence (every frame the same)
def test_cmvn_refuses_dimensions_that_do_not_vary(tmp_path, samples):
    """A variance floored to 1e-10 had been written as a scale of 1e5: every later frame blown up, without a word."""
    x = np.zeros(samples, np.float32) if samples == SR else np.random.default_rng(0).standard_normal(samples) * 0.1
    sf.write(tmp_path / "c.wav", x.astype(np.float32), SR, subtype="FLOAT")
    (tmp_path / "m.jsonl").write_text(json.dumps({"key": "c", "source": "c.wav", "target": "w"}) + "\n")
    frames = 1 if samples == 400 else 98
    with pytest.raises(
        CMVNError, match=rf"80 of 80 dimensions \(first \[0, 1, 2, 3, 4\]\) do not vary over the {frames} "
    ):
        compute_global_cmvn([tmp_path / "m.jsonl"], FrontendConfig(), tmp_path / "am.mvn")
    assert not (tmp_path / "am.mvn").exists()


def test_cmvn_refuses_an_out_that_is_one_of_its_manifests(tmp_path, capsys):
    """--out naming a manifest it reads would overwrite the manifest with am.mvn."""
    from llmasr.commands.data_cmvn import main

    path, _ = make_corpus(tmp_path, n=2)
    before = path.read_text()
    assert main([str(path), "--out", str(path)]) == 2
    assert f"--out {path}: one of the inputs" in capsys.readouterr().err
    assert path.read_text() == before


def test_cmvn_says_what_a_missing_files_path_may_have_meant(tmp_path, monkeypatch, caplog):
    # `data cmvn` is the first command a corpus written for FunASR (audio paths from the working directory) meets:
    # every line was "file not found" under the manifest's folder, without a word of where the file is.
    monkeypatch.chdir(tmp_path)
    path, _ = make_corpus(tmp_path, n=6)
    (tmp_path / "lists").mkdir()
    moved = tmp_path / "lists" / "train.jsonl"
    moved.write_text(path.read_text())  # the same lines, now read from lists/: u0.wav is in the working directory
    with pytest.raises(CMVNError, match="no usable frames in 6 utterance") as err:
        compute_global_cmvn(moved, FrontendConfig(lfr_m=7, lfr_n=6), tmp_path / "x.mvn")
    base = tmp_path / "lists"
    assert (
        f"train.jsonl:1: audio {base}/u0.wav: file not found (u0.wav is a file from the working directory, where "
        f"FunASR looks; llmasr reads a relative path from the manifest's folder, {base}: write the paths absolute, or "
        "relative to that folder)"
    ) in str(err.value)


def _two_level_recipe(tmp_path, weights):
    """Two manifests of one level each (quiet, loud) mixed in data.train with `weights`; returns the recipe."""
    import yaml

    rng = np.random.default_rng(5)
    for name, amp in (("quiet", 0.01), ("loud", 0.5)):
        lines = []
        for i in range(3):
            sf.write(tmp_path / f"{name}{i}.wav", (rng.standard_normal(SR // 2) * amp).astype(np.float32), SR)
            lines.append(json.dumps({"key": f"{name}{i}", "source": f"{name}{i}.wav", "target": "w"}))
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"encoder": {"type": "paraformer", "frontend": {"lfr_m": 7, "lfr_n": 6, "cmvn_file": "am.mvn"},
                              "conf": {"output_size": 16, "attention_heads": 2, "linear_units": 32, "num_blocks": 1}},
                  "llm": {"path": str(tmp_path)}},
        "data": {"train": [{"path": f"{name}.jsonl", "weight": w} for name, w in zip(("quiet", "loud"), weights)]},
    }))  # fmt: skip
    return recipe


def test_cmvn_weighs_the_recipes_mix_as_training_draws_it(tmp_path, capsys):
    """data.train's weights (w passes over a manifest per epoch) weigh its frames: a 3:1 mix is normalised as
    training hears it, quiet three times for loud once (each manifest had counted once)."""
    from llmasr.commands.data_cmvn import main

    recipe = _two_level_recipe(tmp_path, [3.0, 1.0])
    assert main(["--recipe", str(recipe), "--out", str(tmp_path / "mix.mvn")]) == 0
    assert "data.train's manifests weighted 3, 1" in capsys.readouterr().out
    fe = FrontendConfig(lfr_m=7, lfr_n=6, cmvn_file=None)
    heard = [tmp_path / "quiet.jsonl"] * 3 + [tmp_path / "loud.jsonl"]
    shift, scale = compute_global_cmvn(heard, fe, tmp_path / "heard.mvn")
    got_shift, got_scale = read_kaldi_cmvn(tmp_path / "mix.mvn")
    np.testing.assert_allclose(got_shift, shift, rtol=1e-5)
    np.testing.assert_allclose(got_scale, scale, rtol=1e-5)
    # manifests named on the command line weigh alike, as before
    assert main([str(tmp_path / "quiet.jsonl"), str(tmp_path / "loud.jsonl"), "--recipe", str(recipe), "--out",
                 str(tmp_path / "named.mvn")]) == 0  # fmt: skip
    both = compute_global_cmvn([tmp_path / "quiet.jsonl", tmp_path / "loud.jsonl"], fe, tmp_path / "both.mvn")[0]
    np.testing.assert_allclose(read_kaldi_cmvn(tmp_path / "named.mvn")[0], both, rtol=1e-5)
    # --max-utts reads a share of each manifest (here 2 of 3): that share stands for the whole of it, at its weight
    assert main(["--recipe", str(recipe), "--out", str(tmp_path / "capped.mvn"), "--max-utts", "4"]) == 0
    capped = read_kaldi_cmvn(tmp_path / "capped.mvn")[0]
    assert np.abs(capped - shift).max() < 0.2 * np.abs(both - shift).max()


def test_cmvn_takes_recipe_overrides_as_train_does(tmp_path, capsys):
    """`key=value` beside --recipe changes the recipe, as train and data check take it (it had been read as a
    manifest path: "manifest not found: model.encoder.frontend.lfr_m=1")."""
    from llmasr.commands.data_cmvn import main

    recipe = _two_level_recipe(tmp_path, [1.0, 1.0])
    lfr_1 = ["model.encoder.frontend.lfr_m=1", "model.encoder.frontend.lfr_n=1"]
    assert main(["--recipe", str(recipe), lfr_1[0], "--out", str(tmp_path / "am.mvn"), lfr_1[1]]) == 0, (
        capsys.readouterr()
    )
    assert read_kaldi_cmvn(tmp_path / "am.mvn")[0].shape == (80,)
    assert main(["--recipe", str(recipe), "--out", str(tmp_path / "b.mvn"), "model.encoder.frontend.lfr_mm=1"]) == 2
    assert "model.encoder.frontend: unknown key(s) ['lfr_mm']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "quiet.jsonl"), "--out", str(tmp_path / "c.mvn"), lfr_1[0]])
    assert exit_.value.code == 2 and f"{lfr_1[0]}: a recipe override needs --recipe" in capsys.readouterr().err


def test_cmvn_refuses_an_out_the_recipe_reads(tmp_path, capsys):
    """An --out naming a file the recipe reads is refused before any audio is read: a data.train manifest, or the
    pretrained encoder's am.mvn, which its weights were trained with (both had been overwritten)."""
    import yaml

    from llmasr.commands.data_cmvn import main
    from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir

    recipe = _two_level_recipe(tmp_path, [1.0, 1.0])
    before = (tmp_path / "loud.jsonl").read_bytes()
    assert main(["--recipe", str(recipe), "--out", str(tmp_path / "loud.jsonl")]) == 2
    assert f"one of the inputs ({tmp_path / 'loud.jsonl'}): writing it would destroy it" in capsys.readouterr().err
    assert (tmp_path / "loud.jsonl").read_bytes() == before

    enc = write_funasr_dir(tmp_path / "enc", encoder_conf=tiny_sanm_conf())
    data = yaml.safe_load(recipe.read_text())
    data["model"]["encoder"] = {"type": "paraformer", "path": str(enc)}
    recipe.write_text(yaml.safe_dump(data))
    pretrained = (enc / "am.mvn").read_bytes()
    assert main(["--recipe", str(recipe), "--out", str(enc / "am.mvn")]) == 2
    assert f"one of the inputs ({enc / 'am.mvn'}): writing it would destroy it" in capsys.readouterr().err
    assert (enc / "am.mvn").read_bytes() == pretrained
    assert main(["--recipe", str(recipe), "--out", str(tmp_path / "new.mvn")]) == 0  # a new file: written


def test_an_am_mvn_write_that_fails_leaves_the_earlier_file_whole(tmp_path, monkeypatch):
    """am.mvn had been written in place: a run stopped mid-write (a full disk, a killed job) left a file FunASR and
    llmasr cannot parse where a good one had been."""
    from llmasr.data.frontend import write_kaldi_cmvn

    path = tmp_path / "am.mvn"
    write_kaldi_cmvn(path, np.full(4, -1.0), np.full(4, 0.5))
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("llmasr.atomic_file.os.replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_kaldi_cmvn(path, np.full(4, -2.0), np.full(4, 0.25))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["am.mvn"]
    np.testing.assert_array_equal(read_kaldi_cmvn(path)[0], np.full(4, -1.0))
