"""Fuzz what users hand to llmasr: manifests, Kaldi data dirs, hotword files, recipes and overrides, am.mvn files and
audio files, each malformed variant run through the real entry points (`llmasr data check`, the training start-up
screen, the decode loader, `llmasr data kaldi`, `llmasr check`, the recipe loader, decode's --hotwords reader).

    PYTHONPATH=. python scripts/fuzz_inputs.py [--out table.md] [--only manifest,audio,...] [--train-check]

For every variant it records the exit status (or the exception type in-process), whether the message names the file
and the line (and the key where the variant has one), whether a line went unaccounted for (neither usable nor
counted bad: silently dropped), and whether a Python traceback or a raw library error reached the user. A row is
flagged FAULT when any of those fails. No training, no network; a few seconds a variant on CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_common import ROWS, SR, _shown, cli, good, record, summary_counts, table, write_manifest  # noqa: E402

# faults only reading the samples shows (the header is fine): `llmasr data check` probes headers, loading counts them
LOAD_TIME = ("audio: NaN samples (float)",)
# lines a decode takes as audio to transcribe (no transcript), or as an empty reference: not bad there
DECODE_TAKES = ("missing target", "target null", "nano no assistant", "text whitespace only")


def manifest_variants(d: Path, wav: Path) -> list[tuple[str, bytes, str]]:
    """(name, the variant's line(s) as bytes, expect: 'bad' one line counted bad, 'ok' usable, 'refuse' the file)."""
    j = lambda r: json.dumps(r, ensure_ascii=False).encode()  # noqa: E731
    rel = wav.name  # the manifests sit beside the audio
    (d / "sp ace ü").mkdir(exist_ok=True)
    spaced = d / "sp ace ü" / "a b.wav"
    spaced.write_bytes(wav.read_bytes())
    v = [
        ("key int", j({**good("k", wav), "key": 5}), "bad"),
        ("key empty", j({**good("k", wav), "key": ""}), "bad"),
        ("source int", j({**good("k", wav), "source": 7}), "bad"),
        ("target list", j({**good("k", wav), "target": ["a"]}), "bad"),
        ("target null", j({**good("k", wav), "target": None}), "bad"),
        ("missing key", j({"source": str(wav), "target": "x"}), "bad"),
        ("missing source", j({"key": "k", "target": "x"}), "bad"),
        ("missing target", j({"key": "k", "source": str(wav)}), "bad"),
        ("extra field", j(good("k", wav, speaker="s1")), "ok"),
        ("misspelt duration", j(good("k", wav, duraton=1.0)), "ok"),
        ("duration NaN", b'{"key": "k", "source": "%s", "target": "x", "duration": NaN}' % str(wav).encode(), "bad"),
        ("duration Infinity", b'{"key":"k","source":"%s","target":"x","duration":Infinity}' % str(wav).encode(), "bad"),
        ("duration -1", j(good("k", wav, duration=-1.0)), "bad"),
        ("duration 0", j(good("k", wav, duration=0)), "bad"),
        ("duration string", j(good("k", wav, duration="1.0")), "bad"),
        ("duration bool", j(good("k", wav, duration=True)), "bad"),
        ("duration 1e400", b'{"key":"k","source":"%s","target":"x","duration":1e400}' % str(wav).encode(), "bad"),
        (
            "duration 10**400",
            b'{"key":"k","source":"%s","target":"x","duration":1%s}' % (str(wav).encode(), b"0" * 400),
            "bad",
        ),
        ("duration wrong (5 s of 1 s)", j(good("k", wav, duration=5.0)), "bad"),
        ("start > end", j(good("k", wav, start=0.8, end=0.2)), "bad"),
        ("start == end", j(good("k", wav, start=0.5, end=0.5)), "bad"),
        ("start negative", j(good("k", wav, start=-0.5, end=0.5)), "bad"),
        ("start beyond file", j(good("k", wav, start=5.0, end=6.0)), "bad"),
        ("start beyond file, no end", j(good("k", wav, start=5.0)), "bad"),
        ("start beyond file, duration", j(good("k", wav, start=5.0, duration=1.0)), "bad"),
        ("end far past file", j(good("k", wav, start=0.0, end=3.0)), "bad"),
        ("end NaN", b'{"key":"k","source":"%s","target":"x","end":NaN}' % str(wav).encode(), "bad"),
        ("source_len negative", j(good("k", wav, source_len=-5)), "bad"),
        ("source_len 0", j(good("k", wav, source_len=0)), "ok"),
        ("channel 3 of mono", j(good("k", wav, channel=3)), "bad"),
        ("channel -1", j(good("k", wav, channel=-1)), "bad"),
        ("channel 0.5", j(good("k", wav, channel=0.5)), "bad"),
        ("target_len string", j(good("k", wav, target_len="3")), "bad"),
        ("hotwords string", j(good("k", wav, hotwords="a b")), "bad"),
        ("hotwords [1]", j(good("k", wav, hotwords=[1])), "bad"),
        ("hotwords ['']", j(good("k", wav, hotwords=[""])), "bad"),
        ("hotwords [[..]]", j(good("k", wav, hotwords=[["a"]])), "bad"),
        ("hotwords {}", j(good("k", wav, hotwords={})), "bad"),
        ("prompt int", j(good("k", wav, prompt=3)), "bad"),
        ("lang list", j(good("k", wav, lang=["en"])), "bad"),
        ("non-UTF-8 bytes", j(good("k", wav))[:-2] + b'\xff\xfe"}', "bad"),
        (
            "GBK target",
            b'{"key":"k","source":"%s","target":"' % str(wav).encode() + "你好".encode("gbk") + b'"}',
            "bad",
        ),
        ("UTF-16 line", j(good("k", wav)).decode().encode("utf-16"), "bad"),
        ("blank line", b"", "ok"),
        ("whitespace line", b"   \t ", "ok"),
        ("JSON array", b'["k", "a.wav", "x"]', "bad"),
        ("bare string", b'"hello"', "bad"),
        ("bare number", b"42", "bad"),
        ("null", b"null", "bad"),
        ("truncated JSON", j(good("k", wav))[:-5], "bad"),
        ("two objects one line", j(good("k", wav)) + j(good("k2", wav)), "bad"),
        ("trailing comma", j(good("k", wav))[:-1] + b",}", "bad"),
        ("single quotes", j(good("k", wav)).replace(b'"', b"'"), "bad"),
        ("duplicate JSON key", b'{"key":"k","source":"%s","target":"a","target":"b"}' % str(wav).encode(), "bad"),
        ("duplicate key in file", j(good("g1", wav)), "dupkey"),
        ("long text (1 MB)", j(good("k", wav, target="word " * 200_000)), "ok"),
        ("text whitespace only", j(good("k", wav, target=" \t\u3000 ")), "bad"),
        ("text punctuation only", j(good("k", wav, target="...!?")), "ok"),
        ("text control chars", j(good("k", wav, target="a\x00b\x07c\x1b")), "ok"),
        ("text lone surrogate", b'{"key":"k","source":"%s","target":"a\\ud800b"}' % str(wav).encode(), "bad"),
        ("key with newline", j({**good("k", wav), "key": "a\nb"}), "ok"),
        ("key with space", j({**good("k", wav), "key": "a b"}), "ok"),
        ("path relative", j({**good("k", wav), "source": rel}), "ok"),
        ("path ./relative", j({**good("k", wav), "source": "./" + rel}), "ok"),
        ("path with spaces+unicode", j({**good("k", wav), "source": str(spaced.relative_to(d))}), "ok"),
        ("path ~ (missing)", j({**good("k", wav), "source": "~/no_such_llmasr.wav"}), "bad"),
        ("path missing", j({**good("k", wav), "source": "nope.wav"}), "bad"),
        ("path is dir", j({**good("k", wav), "source": str(d)}), "bad"),
        ("path URL", j({**good("k", wav), "source": "https://x/a.wav"}), "bad"),
        ("path whitespace", j({**good("k", wav), "source": "  "}), "bad"),
        ("path NUL", j({**good("k", wav), "source": "a\x00b.wav"}), "bad"),
        ("path very long", j({**good("k", wav), "source": "a" * 5000 + ".wav"}), "bad"),
        ("lhotse recording", j({"id": "r", "sources": [], "sampling_rate": 16000}), "bad"),
        ("lhotse cut no sup", j({"id": "c", "start": 0, "duration": 1, "channel": 0, "recording": {}}), "bad"),
        (
            "nano no assistant",
            j({"messages": [{"role": "user", "content": f"<|startofspeech|>!{wav}<|endofspeech|>"}]}),
            "bad",
        ),
        ("nano messages str", j({"messages": "hello"}), "bad"),
        ("nano role int", j({"messages": [{"role": 1, "content": "x"}]}), "bad"),
    ]
    return v


def run_manifest(d: Path, wav: Path, name: str, lines: list[bytes], expect: str, **fmt) -> None:
    """One manifest variant through `llmasr data check` (train and --decode), the start-up screen, the decode
    loader: the variant is line 3 of 4 (lines 1, 2, 4 good)."""
    path = write_manifest(d / f"m_{len(ROWS)}.jsonl", lines, **fmt)
    want_lines = sum(1 for x in lines if x.strip())
    at = f"{path}:3" if expect in ("bad",) else str(path)
    names = [at] if expect == "bad" else []
    for mode in ("train", "decode"):
        argv = ["data", "check", str(path), "--max-bad-fraction", "1"] + (["--decode"] if mode == "decode" else [])
        code, text = cli(argv)
        counts = summary_counts(text)
        accounted = counts is not None and counts[0] == want_lines and counts[1] + counts[2] == counts[0]
        nm = names if name not in LOAD_TIME else []
        if expect == "bad" and mode == "decode" and name in DECODE_TAKES:
            nm = []  # audio to transcribe when decoding
        record("manifest", name, f"data check ({mode})", code, text, names=nm, accounted=accounted, expect=expect)
    screen_and_decode(path, name, want_lines, names, expect)


def screen_and_decode(path: Path, name: str, want_lines: int, names: list[str], expect: str) -> None:
    from speech_fakes import FakePromptBuilder, build, cfg

    from llmasr.data.frontend import FrontendConfig
    from llmasr.data.loader import build_decode_loader

    try:  # training's loader over one epoch: the start-up screen, then every batch loaded
        data_cfg = cfg(max_bad_fraction=1.0, batching={"max_seconds": 100.0})
        loader, sampler = build(data_cfg, [str(path)], train=True, ctc_tokenizer=None)
        rows = sum(b.size for b in loader)
        bad = loader.bad_data
        filtered = sum(
            int(v) for k, v in sampler.stats(0)["filtered"].items() if k not in ("bad_line", "unknown_duration")
        )
        text = "\n".join(f"{e.get('manifest')}:{e.get('line')} {e.get('reason')}" for e in bad.examples)
        if filtered:  # batching's filters skip these from the start, named in the warning train.log starts with
            from llmasr.data.skipped_lines import describe_skipped

            text += "\n" + (describe_skipped(sampler, loader.dataset.manifest, data_cfg.batching, "train") or "")
        nm = names if not name.startswith(("duration 0", "source_len 0")) else []
        record("manifest", name, "train loader (epoch)", "ok", text, names=nm,
               accounted=rows + bad.bad + filtered == want_lines, expect=expect)  # fmt: skip
    except Exception as err:  # noqa: BLE001
        record("manifest", name, "train loader (epoch)", type(err).__name__, _shown(err), names=[str(path)],
               accounted=None, expect=expect)  # fmt: skip
    try:
        loader = build_decode_loader(
            path, FrontendConfig(), prompt_builder=FakePromptBuilder(), batch_seconds=100.0, num_workers=0,
            max_bad_fraction=1.0, name="decode",
        )  # fmt: skip
        rows = sum(b.size for b in loader)
        bad = loader.bad_data
        text = "\n".join(f"{e.get('manifest')}:{e.get('line')} {e.get('reason')}" for e in bad.examples)
        nm = names if name not in DECODE_TAKES else []
        record("manifest", name, "decode loader", "ok", text, names=nm, accounted=rows + bad.bad == want_lines,
               expect=expect)  # fmt: skip
    except Exception as err:  # noqa: BLE001
        record("manifest", name, "decode loader", type(err).__name__, _shown(err), names=[str(path)], accounted=None,
               expect=expect)  # fmt: skip


def fuzz_manifests(d: Path, wavs: list[Path]) -> None:
    wav = wavs[0]
    ok = [json.dumps(good(f"g{i}", w)).encode() for i, w in enumerate(wavs[:3])]
    for name, line, expect in manifest_variants(d, wav):
        run_manifest(d, wav, name, [ok[0], ok[1], line, ok[2]], expect)
    run_manifest(d, wav, "UTF-8 BOM", [ok[0], ok[1], ok[2], ok[0].replace(b"g0", b"g3")], "ok", bom=True)
    run_manifest(d, wav, "CRLF line ends", [ok[0], ok[1], ok[2], ok[0].replace(b"g0", b"g3")], "ok", crlf=True)
    lone_cr = d / "m_cr.jsonl"
    lone_cr.write_bytes(b"\r".join([ok[0], ok[1], ok[2]]) + b"\r")  # classic-Mac line ends: three records
    for mode in ("train", "decode"):
        code, text = cli(
            ["data", "check", str(lone_cr), "--max-bad-fraction", "1"] + (["--decode"] * (mode == "decode"))
        )
        c = summary_counts(text)  # one line of three records: counted bad, and said why (not read as three)
        record("manifest", "CR-only line ends", f"data check ({mode})", code, text,
               names=[f"{lone_cr}:1", "CR-only line ends"], accounted=c is not None and c[0] == c[2] == 1,
               expect="bad")  # fmt: skip
    empty = d / "empty.jsonl"
    empty.write_bytes(b"")
    code, text = cli(["data", "check", str(empty)])
    record("manifest", "empty file", "data check", code, text, names=[str(empty)], accounted=None, expect="refuse")
    code, text = cli(["data", "check", str(d)])
    record("manifest", "a directory", "data check", code, text, names=[str(d)], accounted=None, expect="refuse")
    gz = d / "cut.jsonl.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00garbage")
    code, text = cli(["data", "check", str(gz)])
    record("manifest", ".gz cut short", "data check", code, text, names=[str(gz)], accounted=None, expect="refuse")


# ---------------------------------------------------------------------------------------------------------- audio


def audio_variants(d: Path) -> list[tuple[str, Path, str]]:
    rng = np.random.default_rng(0)
    x = (0.2 * rng.standard_normal(SR)).astype(np.float32)
    out = []

    def w(name, data, sr=SR, **kw):
        p = d / name
        sf.write(str(p), data, sr, **kw)
        return p

    out.append(("PCM_16", w("a16.wav", x, subtype="PCM_16"), "ok"))
    out.append(("PCM_U8 (8-bit)", w("a8.wav", x, subtype="PCM_U8"), "ok"))
    out.append(("PCM_24", w("a24.wav", x, subtype="PCM_24"), "ok"))
    out.append(("FLOAT wav", w("af.wav", x, subtype="FLOAT"), "ok"))
    out.append(("stereo", w("a2.wav", np.stack([x, x], 1)), "ok"))
    out.append(("8 kHz", w("a8k.wav", x[:8000], 8000), "ok"))
    out.append(("FLAC", w("a.flac", x), "ok"))
    out.append(("OGG", w("a.ogg", x), "ok"))
    try:
        out.append(("MP3", w("a.mp3", x, format="MP3"), "ok"))
    except Exception:  # noqa: BLE001 - a libsndfile without MP3
        pass
    full = (d / "a16.wav").read_bytes()
    t = d / "trunc.wav"
    t.write_bytes(full[: len(full) // 3])
    out.append(("truncated WAV", t, "bad"))
    h = d / "hdr.wav"
    h.write_bytes(b"RIFX" + full[4:])
    out.append(("wrong header (RIFX)", h, "bad"))
    g = d / "garbage.wav"
    g.write_bytes(os.urandom(4000))
    out.append(("random bytes .wav", g, "bad"))
    z = d / "zero.wav"
    z.write_bytes(b"")
    out.append(("zero-length file", z, "bad"))
    e = w("empty.wav", np.zeros(0, dtype=np.float32))
    out.append(("WAV with 0 samples", e, "bad"))
    s = w("short.wav", x[:50])
    out.append(("50 samples", s, "bad"))
    nan = w("nan.wav", np.full(SR, np.nan, dtype=np.float32), subtype="FLOAT")
    out.append(("NaN samples (float)", nan, "bad"))
    dd = d / "dir.wav"
    dd.mkdir(exist_ok=True)
    out.append(("directory x.wav", dd, "bad"))
    loop = d / "loop.wav"
    if not loop.is_symlink():
        os.symlink(loop.name, loop)
    out.append(("symlink loop", loop, "bad"))
    dangling = d / "dangling.wav"
    if not dangling.is_symlink():
        os.symlink("nowhere.wav", dangling)
    out.append(("dangling symlink", dangling, "bad"))
    unread = w("noperm.wav", x)
    os.chmod(unread, 0)
    out.append(("no read permission", unread, "bad" if os.geteuid() != 0 else "ok"))
    txt = d / "text.wav"
    txt.write_text("not audio\n", encoding="utf-8")
    out.append(("text file .wav", txt, "bad"))
    return out


def fuzz_audio(d: Path, wavs: list[Path]) -> None:
    ad = d / "audio"
    ad.mkdir(exist_ok=True)
    ok = [json.dumps(good(f"g{i}", w)).encode() for i, w in enumerate(wavs[:3])]
    for name, path, expect in audio_variants(ad):
        line = json.dumps(good("k", path)).encode()
        run_manifest(d, path, f"audio: {name}", [ok[0], ok[1], line, ok[2]], expect)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the markdown table (and the faults' messages) here")
    p.add_argument("--only", default="manifest,audio,kaldi,hotwords,recipe,cmvn")
    p.add_argument("--train-check", action="store_true", help="also a few variants through `llmasr check`")
    args = p.parse_args()
    import fuzz_more_inputs as more

    logging.basicConfig(level=logging.WARNING)
    kinds = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="llmasr_fuzz_") as tmp:
        d = Path(tmp)
        rng = np.random.default_rng(1)
        wavs = []
        for i in range(3):
            w = d / f"w{i}.wav"
            sf.write(str(w), (0.2 * rng.standard_normal(SR)).astype(np.float32), SR, subtype="PCM_16")
            wavs.append(w)
        manifest = write_manifest(d / "good.jsonl", [json.dumps(good(f"g{i}", w)).encode() for i, w in enumerate(wavs)])
        steps = {"manifest": lambda: fuzz_manifests(d, wavs), "audio": lambda: fuzz_audio(d, wavs),
                 "kaldi": lambda: more.fuzz_kaldi(d, wavs), "hotwords": lambda: more.fuzz_hotwords(d),
                 "recipe": lambda: more.fuzz_recipes(d, manifest), "cmvn": lambda: more.fuzz_cmvn(d)}  # fmt: skip
        for kind, step in steps.items():
            if kind in kinds:
                step()
        if args.train_check:
            more.fuzz_train_check(d, wavs)
        for p_ in d.rglob("noperm.wav"):
            os.chmod(p_, 0o644)
    text = table(ROWS)
    faults = [r for r in ROWS if r["fault"]]
    detail = "\n".join(f"- {r['kind']} / {r['variant']} / {r['entry']}: {' | '.join(r['text'])[:400]}" for r in faults)
    print(text)
    print(f"\n{len(faults)} fault(s) of {len(ROWS)} rows\n{detail}")
    if args.out:
        Path(args.out).write_text(
            text + f"\n\n{len(faults)} fault(s) of {len(ROWS)} rows\n{detail}\n", encoding="utf-8"
        )
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
