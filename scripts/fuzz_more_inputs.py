"""Kaldi data dirs, hotword files, recipes and overrides, am.mvn files, and `llmasr check`'s start-up screen, for
scripts/fuzz_inputs.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from fuzz_common import ROWS, SR, _shown, cli, good, record, write_manifest

# ------------------------------------------------------------------------------------------------------ kaldi dirs


def fuzz_kaldi(d: Path, wavs: list[Path]) -> None:
    w0, w1 = wavs[0], wavs[1]
    base = {"wav.scp": f"u1 {w0}\nu2 {w1}\n", "text": "u1 hello\nu2 world\n"}
    variants = [
        ("clean", {}, "ok"),
        ("text key missing", {"text": "u1 hello\n"}, "bad"),
        ("text extra key", {"text": "u1 hello\nu2 world\nu3 extra\n"}, "bad"),
        ("empty transcript", {"text": "u1 hello\nu2\n"}, "bad"),
        ("duplicate key", {"wav.scp": f"u1 {w0}\nu1 {w1}\nu2 {w1}\n"}, "bad"),
        ("pipe command", {"wav.scp": f"u1 {w0}\nu2 sox {w1} -t wav - gain -3 |\n"}, "bad"),
        ("pipe command read as its file", {"wav.scp": f"u1 {w0}\nu2 sox {w1} -t wav - |\n"}, "ok"),
        ("ark offset", {"wav.scp": f"u1 {w0}\nu2 foo.ark:123\n"}, "bad"),
        ("non-UTF-8 text", {"text": b"u1 hello\n" + b"u2 \xc4\xe3\xba\xc3\n"}, "refuse"),
        ("BOM in wav.scp", {"wav.scp": "\ufeff" + f"u1 {w0}\nu2 {w1}\n"}, "ok"),
        ("CRLF", {"wav.scp": f"u1 {w0}\r\nu2 {w1}\r\n", "text": "u1 hello\r\nu2 world\r\n"}, "ok"),
        ("blank lines", {"text": "u1 hello\n\n\nu2 world\n"}, "ok"),
        ("tabs", {"text": "u1\thello\nu2\tworld\n"}, "ok"),
        ("path with spaces", {"wav.scp": f"u1 {w0}\nu2 {d / 'sp ace ü' / 'a b.wav'}\n"}, "ok"),
        ("segments bad", {"segments": "s1 u1 0.0 0.5\ns2 u1 abc 1\n", "text": "s1 hi\ns2 there\n"}, "bad"),
        ("segments start>end", {"segments": "s1 u1 0.0 0.5\ns2 u2 0.8 0.2\n", "text": "s1 hi\ns2 there\n"}, "bad"),
        ("segments NaN", {"segments": "s1 u1 0.0 0.5\ns2 u2 nan 0.2\n", "text": "s1 hi\ns2 there\n"}, "bad"),
        ("utt2dur bad", {"utt2dur": "u1 1.0\nu2 abc\n"}, "refuse"),
        ("utt2dur negative", {"utt2dur": "u1 1.0\nu2 -3\n"}, "refuse"),
        ("wav.scp no path", {"wav.scp": f"u1 {w0}\nu2\n"}, "bad"),
        ("wav.scp missing file", {"wav.scp": f"u1 {w0}\nu2 /no/such.wav\n"}, "ok"),
        ("all bad", {"text": "x1 a\n"}, "refuse"),
        ("wav.scp empty", {"wav.scp": ""}, "refuse"),
        ("wav.scp is a dir", {"wav.scp": None}, "refuse"),
        ("text is a dir", {"text": None}, "refuse"),
    ]
    for name, files, expect in variants:
        kd = d / f"kaldi_{len(ROWS)}"
        kd.mkdir()
        for fname, content in {**base, **files}.items():
            if content is None:
                (kd / fname).mkdir()
            elif isinstance(content, bytes):
                (kd / fname).write_bytes(content)
            else:
                (kd / fname).write_text(content, encoding="utf-8")
        out = kd / "out.jsonl"
        code, text = cli(["data", "kaldi", str(kd), str(out)])
        accounted = None
        if out.is_file() and "written" in text:
            m = re.search(r'"written": (\d+)', text)
            accounted = m is not None and (int(m.group(1)) + sum(map(int, re.findall(r'"[a-z_]+": (\d+)', text))) >=
                                           2)  # fmt: skip
        names = [str(kd)] if expect != "ok" else []
        record("kaldi", name, "data kaldi", code, text, names=names, accounted=accounted, expect=expect)
        if out.is_file() and expect != "refuse":
            code, text = cli(["data", "check", str(out), "--max-bad-fraction", "1", "--decode"])
            record("kaldi", name, "data check of it", code, text, names=[], accounted=None, expect="ok")


# -------------------------------------------------------------------------------------------------------- hotwords


def fuzz_hotwords(d: Path) -> None:
    from llmasr.data.hotwords import PhraseFileError, read_phrase_file

    variants = [
        ("clean", b"alpha\nbeta gamma\n", "ok"),
        ("BOM", b"\xef\xbb\xbfalpha\nbeta\n", "ok"),
        ("CRLF", b"alpha\r\nbeta\r\n", "ok"),
        ("CR only", b"alpha\rbeta\r", "ok"),
        ("blank line", b"alpha\n\nbeta\n", "refuse"),
        ("trailing blank lines", b"alpha\nbeta\n\n\n", "refuse"),
        ("non-UTF-8", b"alpha\n\xff\xfe\n", "refuse"),
        ("repeats", b"alpha\nalpha\n", "ok"),
        ("only whitespace", b"  \n", "refuse"),
        ("empty file", b"", "refuse"),
        ("NUL byte", b"al\x00pha\n", "ok"),
        ("UTF-16", "alpha\nbeta\n".encode("utf-16"), "refuse"),
        ("very long phrase", b"x" * 100_000 + b"\n", "ok"),
        ("form feed / vertical tab", b"alpha\x0cbeta\x0bgamma\n", "ok"),
        ("U+2028 line separator", "alpha\u2028beta\n".encode(), "ok"),
    ]
    for name, data, expect in variants:
        p = d / f"hot_{len(ROWS)}.txt"
        p.write_bytes(data)
        try:
            phrases = read_phrase_file(p)
            text, status = f"{len(phrases)} phrase(s): {phrases!r:.120}", "ok"
        except PhraseFileError as err:
            text, status = str(err), "PhraseFileError"
        except Exception as err:  # noqa: BLE001
            text, status = _shown(err), type(err).__name__
        names = [str(p)] if expect == "refuse" else []
        record("hotwords", name, "decode --hotwords reader", status, text, names=names, accounted=None, expect=expect)
    for name, path in (("missing file", d / "nope.txt"), ("a directory", d)):
        try:
            read_phrase_file(path)
            text, status = "read", "ok"
        except PhraseFileError as err:
            text, status = str(err), "PhraseFileError"
        record("hotwords", name, "decode --hotwords reader", status, text, names=[str(path)], accounted=None,
               expect="refuse")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- recipes


def fuzz_recipes(d: Path, manifest: Path) -> None:
    import yaml

    base = {"data": {"train": [str(manifest)], "batching": {"max_seconds": 10.0}}}
    r = d / "r.yaml"
    variants: list[tuple[str, bytes | None, list[str], str]] = [
        ("clean", None, [], "ok"),
        ("not YAML", b"data: [\n", [], "refuse"),
        ("tab indent", b"data:\n\ttrain: [a]\n", [], "refuse"),
        ("top-level list", b"- a\n- b\n", [], "refuse"),
        ("non-UTF-8", b"data:\n  train: [\xff]\n", [], "refuse"),
        ("BOM", b"\xef\xbb\xbf" + yaml.safe_dump(base).encode(), [], "ok"),
        ("duplicate section", yaml.safe_dump(base).encode() + b"data: {}\n", [], "refuse"),
        ("unknown key", None, ["data.batching.max_secs=3"], "refuse"),
        ("wrong type", None, ["data.batching.max_seconds=abc"], "refuse"),
        ("NaN", None, ["data.batching.max_seconds=.nan"], "refuse"),
        ("inf", None, ["data.batching.max_seconds=.inf"], "refuse"),
        ("negative", None, ["data.batching.max_seconds=-1"], "refuse"),
        ("zero", None, ["data.batching.max_seconds=0"], "refuse"),
        ("bool for int", None, ["data.num_workers=true"], "refuse"),
        ("no '='", None, ["data.num_workers"], "refuse"),
        ("empty key", None, ["=3"], "refuse"),
        ("into a value", None, ["data.num_workers.x=3"], "refuse"),
        ("list past end", None, ["data.train[5].weight=2"], "refuse"),
        ("bad YAML value", None, ["data.train=[a"], "refuse"),
        ("octal", None, ["data.num_workers=010"], "refuse"),
        ("base 60", None, ["data.batching.max_seconds=1:30"], "refuse"),
        ("None text", None, ["data.batching.max_frames=None"], "refuse"),
        ("max_bad_fraction 2", None, ["data.max_bad_fraction=2"], "refuse"),
        ("max_bad_fraction -0.1", None, ["data.max_bad_fraction=-0.1"], "refuse"),
        ("missing manifest", None, ["data.train=[/no/such.jsonl]"], "refuse-named"),
        ("section is a list", None, ["data.batching=[1]"], "refuse"),
        (
            "hotwords distractors missing",
            None,
            ["data.hotwords.enable=true", "data.hotwords.distractors=/no/x.txt"],
            "refuse",
        ),
        ("hotwords ngram bad", None, ["data.hotwords.ngram=[2,1]"], "refuse"),
        ("recipe missing", b"", [], "refuse-missing"),
        ("recipe is a dir", b"", [], "refuse-dir"),
    ]
    for name, text, overrides, expect in variants:
        path = r
        if expect == "refuse-missing":
            path = d / "no_recipe.yaml"
        elif expect == "refuse-dir":
            path = d
        else:
            r.write_bytes(text if text is not None else yaml.safe_dump(base).encode())
        code, out = cli(["data", "check", "--recipe", str(path), "--no-probe", *overrides])
        names = []
        if expect == "refuse-named":
            names = ["/no/such.jsonl"]
        elif expect.startswith("refuse"):
            names = [overrides[-1].split("=")[0].replace("[", ".").split(".")[-1].rstrip("]")] if overrides else [
                str(path)]  # fmt: skip
        record("recipe", name, "data check --recipe", code, out, names=names, accounted=None,
               expect=expect.split("-")[0])  # fmt: skip


# -------------------------------------------------------------------------------------------------------------- cmvn


def fuzz_cmvn(d: Path) -> None:
    from llmasr.data.frontend import write_kaldi_cmvn

    good_mvn = d / "good.mvn"
    write_kaldi_cmvn(good_mvn, np.zeros(560), np.ones(560))
    text = good_mvn.read_text(encoding="utf-8")
    variants = [
        ("clean", text.encode(), "ok"),
        ("non-UTF-8", text.encode().replace(b"<Nnet>", b"<Nnet>\xff"), "refuse"),
        ("non-numeric value", text.replace("[ 0 0", "[ 0 abc", 1).encode(), "refuse"),
        ("NaN value", text.replace("[ 0 0", "[ 0 nan", 1).encode(), "refuse"),
        ("zero scale", text.replace("[ 1 1", "[ 0 1", 1).encode(), "refuse"),
        ("count mismatch", text.replace("<AddShift> 560 560", "<AddShift> 561 561").encode(), "refuse"),
        ("no Rescale", text.split("<Rescale>")[0].encode(), "refuse"),
        ("empty", b"", "refuse"),
        ("wrong dim (80 of 560)", None, "refuse"),
        ("a directory", None, "refuse-dir"),
    ]
    for name, data, expect in variants:
        p = d / f"c_{len(ROWS)}.mvn"
        if name.startswith("wrong dim"):
            write_kaldi_cmvn(p, np.zeros(80), np.ones(80))
        elif expect == "refuse-dir":
            p.mkdir()
        else:
            p.write_bytes(data)
        status, out = _cmvn_through_frontend(p)
        names = [str(p)] if expect.startswith("refuse") else []
        record("cmvn", name, "frontend config (recipe load)", status, out, names=names, accounted=None,
               expect=expect.split("-")[0])  # fmt: skip


def _cmvn_through_frontend(p: Path) -> tuple[str, str]:
    """The recipe's model.encoder.frontend.cmvn_file as a run reads it: the config's check, then the extractor."""
    from llmasr.config_io import from_dict
    from llmasr.data.features import FeatureExtractor
    from llmasr.data.frontend import FrontendConfig

    try:
        fe = from_dict(FrontendConfig, {"cmvn_file": str(p), "lfr_m": 7, "lfr_n": 6}, "model.encoder.frontend")
        fx = FeatureExtractor(fe)
        feats = fx(np.zeros(SR, dtype=np.float32) + 0.01, train=False)
        return "ok", f"features {tuple(feats.shape)}"
    except Exception as err:  # noqa: BLE001
        return type(err).__name__, _shown(err)


# ------------------------------------------------------------------------------------------------ llmasr check


def fuzz_train_check(d: Path, wavs: list[Path]) -> None:
    """A few manifest variants through `llmasr check` on the tiny recipe: the start-up screen as training runs it."""
    import yaml

    from llmasr.testing.tiny_corpus import tiny_recipe_dict
    from llmasr.testing.tiny_llm import write_tiny_llm_dir

    llm = write_tiny_llm_dir(d / "llm")
    ok = [json.dumps(good(f"g{i}", w, duration=1.0)).encode() for i, w in enumerate(wavs[:3])]
    variants = [
        ("clean", b"", "ok"),
        ("bare string", b'"hello"', "bad"),
        ("missing target", json.dumps({"key": "k", "source": str(wavs[0])}).encode(), "bad"),
        ("start beyond file (no duration)", json.dumps(good("k", wavs[0], start=5.0)).encode(), "bad"),
        (
            "start beyond file (end given: loading counts it)",
            json.dumps(good("k", wavs[0], start=5.0, end=6.0)).encode(),
            "load",
        ),
        ("lone surrogate", b'{"key":"k","source":"%s","target":"a\\ud800"}' % str(wavs[0]).encode(), "bad"),
        ("NUL in path", json.dumps(good("k", Path("a\x00b.wav"))).encode(), "bad"),
        ("truncated WAV", None, "bad"),
        ("non-UTF-8", b'{"key":"k","source":"a.wav","target":"\xff"}', "bad"),
    ]
    for name, line, expect in variants:
        if line is None:
            t = d / "tr.wav"
            t.write_bytes(wavs[0].read_bytes()[:5000])
            line = json.dumps(good("k", t)).encode()
        m = write_manifest(d / f"tc_{len(ROWS)}.jsonl", [ok[0], ok[1]] + ([line] if line else []) + [ok[2]])
        rec = tiny_recipe_dict(llm, train=[m], valid=[m], output_dir=d / f"run_{len(ROWS)}")
        rec["data"]["max_bad_fraction"] = 0.3
        rp = d / f"tc_{len(ROWS)}.yaml"
        rp.write_text(yaml.safe_dump(rec), encoding="utf-8")
        code, text = cli(["check", "--config", str(rp), "--deepspeed", "ds_configs/zero0.json"])
        names = [f"{m}:3"] if expect == "bad" else []
        record("train check", name, "llmasr check", code, text, names=names, accounted=None, expect=expect)
