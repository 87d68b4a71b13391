"""How close word timestamps (`decode.timestamps`, the CTC head's forced alignment) come to where speech is.

    python bench/timestamps.py --model exp/demo/model --data exp/demo/corpus/test.jsonl
    python bench/timestamps.py --quick          # a tiny random model (numbers mean nothing)

Each clip is placed after a random lead of silence (0.3-1.5 s, a little noise) and decoded with timestamps; the
speech in the clip starts and ends where its short-time energy first and last rises within 30 dB of its peak, read
off the clip's clean synthesis where the manifest says how a noisy clip was spoken (the demo's: voice, rate, pitch,
snr_db), since a noise floor within 30 dB of the peak would put the end at the clip's last frame. The silence
around a noisy clip is its own background noise (the noisy clip less its clean synthesis, repeated), as in a
recording whose noise goes on between utterances; `--quiet-padding` pads every clip with near-silence instead, where
a noisy clip's noise stops with it (its noise then reads as sound, and the last word's end follows it). The
first word's start and the last word's end are compared with those two points, where the transcript's first (last)
word is the clip's (an inserted or substituted word would time the recognition error, not the alignment). Long
audio: clips joined with pauses into utterances of a minute or more (decoded in windows) give, for every clip
whose first word the transcript has (matched word for word), that word's start against the clip's speech onset in
the joined audio: the windows' time offsets, checked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np
from _common import emit, reproduce_command

RATE = 16000
HOP, WIN, FLOOR_DB = 0.010, 0.025, 30.0


def speech_span(wave: np.ndarray, sr: int) -> tuple[float, float]:
    """(onset, offset) seconds: the first and last 25 ms frame whose RMS is within FLOOR_DB of the clip's loudest."""
    hop, win = int(HOP * sr), int(WIN * sr)
    frames = np.lib.stride_tricks.sliding_window_view(wave, win)[::hop]
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > -FLOOR_DB)
    return loud[0] * HOP, loud[-1] * HOP + WIN


def _read(manifest: Path, n: int) -> list[tuple[np.ndarray, str, tuple[float, float], np.ndarray | None]]:
    """(waveform, transcript, speech span, background noise or None) of the first `n` clips."""
    from llmasr.data.audio import load_audio

    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()][:n]
    base = manifest.parent
    clips = []
    for r in rows:
        wave = load_audio(str(base / r["source"]), sample_rate=RATE)
        if not r.get("snr_db"):
            clips.append((wave, r["target"], speech_span(wave, RATE), None))
            continue
        clean = clean_synthesis(r)
        # the two files differ in level (each is scaled to a random peak): the clean part is the least-squares fit
        noise = wave - float(np.dot(wave, clean) / max(np.dot(clean, clean), 1e-12)) * clean
        clips.append((wave, r["target"], speech_span(clean, RATE), noise.astype(np.float32)))
    return clips


def padding(noise: np.ndarray | None, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """`seconds` of a clip's background: its own noise repeated from a random point, else a little noise."""
    k = int(seconds * RATE)
    if noise is None or not noise.size:
        return 1e-4 * rng.standard_normal(k).astype(np.float32)
    start = int(rng.integers(0, noise.size))
    return np.resize(np.roll(noise, -start), k)


def clean_synthesis(row: dict) -> np.ndarray:
    """The demo clip of manifest `row` spoken again without its noise (espeak-ng speaks the same samples again; the
    noise was added after resampling, so the two line up sample for sample)."""
    import tempfile

    from llmasr.data.audio import load_audio
    from llmasr.demo.synth import synthesize_one

    item = {"key": row["key"], "target": row["target"], "voice": row["voice"], "rate": row["rate"],
            "pitch": row["pitch"], "snr_db": None, "noise_seed": 0}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        synthesize_one(item, f"{tmp}/clean.wav")
        return load_audio(f"{tmp}/clean.wav", sample_rate=RATE)


def _stats(errors: list[float]) -> dict:
    e = np.asarray(errors)
    if not e.size:
        return {"n": 0}
    a = np.abs(e)
    return {"n": int(e.size), "median_s": round(float(np.median(e)), 3), "mean_abs_s": round(float(a.mean()), 3),
            "p90_abs_s": round(float(np.percentile(a, 90)), 3)}  # fmt: skip


def clips_in_silence(asr, clips, rng) -> dict:
    from llmasr.scoring import score_corpus

    waves, spans = [], []
    for wave, _text, (on, off), noise in clips:
        lead = rng.uniform(0.3, 1.5)
        waves.append(np.concatenate([padding(noise, lead, rng), wave, padding(noise, 0.5, rng)]))
        spans.append((lead + on, lead + off))
    rows = asr.transcripts(waves, sample_rate=RATE)
    starts, ends, ordered, unaligned, other = [], [], 0, 0, {"first": 0, "last": 0}
    for row, (on, off), (_, text, *_) in zip(rows, spans, clips):
        words, ref = row["timestamps"], text.split()
        if not words:
            unaligned += 1
            continue
        # a word the transcript has that the clip does not begin or end with (an insertion, a substitution) would
        # time that error, not the aligner: such clips are counted, not measured
        if words[0][0] == ref[0]:
            starts.append(words[0][1] - on)
        else:
            other["first"] += 1
        if words[-1][0] == ref[-1]:
            ends.append(words[-1][2] - off)
        else:
            other["last"] += 1
        ordered += all(a[1] <= b[1] and a[1] < a[2] for a, b in zip(words, words[1:] + [(None, words[-1][1], 1e9)]))
    score, _ = score_corpus([(text, row["hyp"]) for row, (_, text, *_) in zip(rows, clips)], "wer")
    return {"clips": len(rows), "unaligned": unaligned, "ordered": ordered, "first_start": _stats(starts),
            "last_end": _stats(ends), "other_word": other, "wer": round(score.rate, 4),
            "insertions": score.insertions}  # fmt: skip


def joined(asr, clips, rng, per_utt: int = 20) -> dict:
    waves, plans = [], []
    for g in range(0, len(clips) - per_utt + 1, per_utt):
        parts, plan, t = [], [], 0.0
        for wave, text, (on, off), noise in clips[g : g + per_utt]:
            plan.append((t + on, t + off, text))
            gap = rng.uniform(0.5, 1.0)
            parts += [wave, padding(noise, gap, rng)]
            t += len(wave) / RATE + gap
        waves.append(np.concatenate(parts))
        plans.append(plan)
    rows = asr.transcripts(waves, sample_rate=RATE)
    errors, end_errors, located, windows = [], [], 0, 0
    for row, plan in zip(rows, plans):
        windows += row["windows"]
        words = row["timestamps"] or []
        ref = " ".join(text for *_, text in plan).split()
        matched = {}  # reference word index -> transcript word index, where the two agree (difflib's blocks)
        for a, b, size in SequenceMatcher(None, ref, [w[0] for w in words], autojunk=False).get_matching_blocks():
            matched.update({a + i: b + i for i in range(size)})
        k = 0
        for onset, offset, text in plan:
            if k in matched:  # the clip's first word was heard: where the transcript puts it
                errors.append(words[matched[k]][1] - onset)
            k += len(text.split())
            if k - 1 in matched:  # and its last word, before the pause that follows the clip
                end_errors.append(words[matched[k - 1]][2] - offset)
        located += len(plan)
    return {"utterances": len(rows), "windows": windows, "clips": located, "clip_start": _stats(errors),
            "clip_end": _stats(end_errors)}  # fmt: skip


def main(argv: list[str]) -> int:
    with contextlib.ExitStack() as cleanup:  # --quick's tiny model and clips, removed once measured
        return _main(argv, cleanup)


def _main(argv: list[str], cleanup: contextlib.ExitStack) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="an exported model directory with a CTC head")
    p.add_argument("--data", help="a manifest of clips with transcripts")
    p.add_argument("-n", type=int, default=200, help="clips to use")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny random model and corpus (a smoke run)")
    p.add_argument(
        "--keep-leading-silence", action="store_true",
        help="decode the silence before each clip too (decode.trim_leading_silence false): what it costs",
    )  # fmt: skip
    p.add_argument(
        "--quiet-padding", action="store_true",
        help="pad noisy clips with near-silence, not with their own noise (the noise then stops with the clip)",
    )  # fmt: skip
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from llmasr.export.transcribe import Transcriber

    rng, trim = np.random.default_rng(args.seed), not args.keep_leading_silence
    if args.quick:
        import tempfile

        from decode_speed import quick_setup

        root = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bench-timestamps-")))
        model, manifest = quick_setup(root)
        from llmasr.export.decode import DecodeOptions
        from llmasr.models.decoding import DecodeConfig

        cfg = DecodeConfig(timestamps=True, max_new_tokens=6, trim_leading_silence=trim)
        asr, clips = Transcriber(model, cfg, DecodeOptions()), _read(manifest, args.n)
    else:
        if not (args.model and args.data):
            p.error("--model and --data (or --quick)")
        asr = Transcriber.load(args.model, timestamps=True, trim_leading_silence=trim)
        clips = _read(Path(args.data), args.n)
    if args.quiet_padding:
        clips = [(wave, text, span, None) for wave, text, span, _ in clips]
    single = clips_in_silence(asr, clips, rng)
    long = joined(asr, clips, rng, per_utt=min(20, len(clips)))
    res = {"single": single, "long": long, "command": reproduce_command("bench/timestamps.py", argv)}
    f, e, c, ce = single["first_start"], single["last_end"], long["clip_start"], long["clip_end"]
    lines = [
        f"clips {single['clips']} after silence: WER {single['wer']:.2%} ({single['insertions']} insertions); "
        f"unaligned {single['unaligned']}, in order {single['ordered']}; first word not the clip's first "
        f"{single['other_word']['first']}, last not its last {single['other_word']['last']}",
        f"first word start - speech onset: median {f.get('median_s')} s, mean |err| {f.get('mean_abs_s')} s, "
        f"p90 |err| {f.get('p90_abs_s')} s",
        f"last word end - speech offset: median {e.get('median_s')} s, mean |err| {e.get('mean_abs_s')} s, "
        f"p90 |err| {e.get('p90_abs_s')} s",
        f"joined: {long['utterances']} utterances in {long['windows']} windows, {long['clips']} clips; "
        f"first word start - clip onset: median {c.get('median_s')} s, mean |err| {c.get('mean_abs_s')} s, p90 |err| "
        f"{c.get('p90_abs_s')} s over {c.get('n')} clips; last word end - clip offset: median {ce.get('median_s')} s, "
        f"mean |err| {ce.get('mean_abs_s')} s, p90 |err| {ce.get('p90_abs_s')} s over {ce.get('n')} clips",
    ]
    emit(res, lines, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
