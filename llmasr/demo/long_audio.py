"""The demo's long-audio check: utterances of about a minute made by joining held-out test clips, decoded with the
exported model's own settings (so in windows no longer than its training data.batching.max_duration), and scored
beside the same clips decoded one by one.

    joined = join_clips("exp/demo/corpus/test.jsonl", "exp/demo/long_audio", seconds=60.0, count=3)
    result = score_long_audio(model, joined, "exp/demo/decode_test/results.jsonl", out_dir, cfg, opts)

Clips are joined in manifest order with a short pause between them (silence under a faint noise floor); the
references are joined the same way. The parts' WER comes from the clips' own rows of the test split's decode.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from llmasr.data.audio import load_audio

SAMPLE_RATE = 16000
PAUSE_S = (0.25, 0.6)  # between two clips: a speaker's pause between sentences


def join_clips(
    manifest: str | Path, out_dir: str | Path, *, seconds: float = 60.0, count: int = 3, seed: int = 0
) -> Path:
    """Write up to `count` utterances of at least `seconds` each, joining consecutive clips of `manifest`, to
    out_dir/{wav/long_K.wav, long.jsonl} (each line lists its `parts`); returns the manifest. ValueError when
    `manifest` holds less than one such utterance."""
    manifest, out_dir = Path(manifest), Path(out_dir)
    clips = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    lines, k, i = [], 0, 0
    while k < count and i < len(clips):
        pieces, parts, texts, total = [], [], [], 0.0
        while total < seconds and i < len(clips):
            clip = clips[i]
            i += 1
            wave = load_audio(manifest.parent / clip["source"], sample_rate=SAMPLE_RATE)
            if pieces:
                gap = int(rng.uniform(*PAUSE_S) * SAMPLE_RATE)
                pieces.append((1e-4 * rng.standard_normal(gap)).astype(np.float32))
            pieces.append(wave)
            parts.append(clip["key"])
            texts.append(clip["target"])
            total = sum(p.size for p in pieces) / SAMPLE_RATE
        if total < seconds:
            break
        name = f"wav/long_{k}.wav"
        sf.write(str(out_dir / name), np.concatenate(pieces), SAMPLE_RATE, subtype="PCM_16")
        line = {"key": f"long_{k}", "source": name, "target": " ".join(texts), "duration": round(total, 4)}
        lines.append(json.dumps({**line, "parts": parts}))
        k += 1
    if not lines:
        raise ValueError(f"{manifest}: its clips last less than {seconds:g} s in all; none to join")
    path = out_dir / "long.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def parts_wer(joined: str | Path, results: str | Path) -> tuple[float, int, int]:
    """(WER, errors, reference words) of the clips the joined utterances are made of, from a decode's
    results.jsonl of those clips; KeyError naming a clip that results.jsonl lacks."""
    rows = {r["key"]: r for r in map(json.loads, Path(results).read_text(encoding="utf-8").splitlines()) if r}
    errors = words = 0
    for line in Path(joined).read_text(encoding="utf-8").splitlines():
        for key in json.loads(line)["parts"]:
            if key not in rows:
                raise KeyError(f"{results}: no row for clip {key} of {joined}")
            errors, words = errors + rows[key]["errors"], words + rows[key]["ref_units"]
    return errors / max(words, 1), errors, words


def score_long_audio(model, joined: Path, parts_results: Path, out_dir: Path, cfg, opts, device="cpu") -> dict:
    """Decode the joined utterances into `out_dir` (llmasr.export.decode) and compare with their parts:
    {"wer", "parts_wer", "utterances", "windows", "subtitles" (cues), "subtitles_dir", "text"}, and "ctc_wer",
    "parts_ctc_wer" for the CTC branch when opts.ctc (the parts' from parts_results' folder's ctc/results.jsonl)."""
    from llmasr.export.decode import decode_manifest
    from llmasr.export.subtitles import decode_subtitles

    # word times too (they change no text): each utterance's subtitles, as `llmasr transcribe --subtitles` writes
    summary = decode_manifest(model, joined, out_dir, dataclasses.replace(cfg, timestamps=True), opts, device=device)
    parts, _, _ = parts_wer(joined, parts_results)
    n, windows, audio = summary["utterances"], summary["windows"], summary["audio_seconds"]
    out = {"wer": summary["rate"], "parts_wer": parts, "utterances": n, "windows": windows}
    out["subtitles_dir"] = str(out_dir / "subtitles")
    out["subtitles"] = decode_subtitles(out_dir / "results.jsonl", out["subtitles_dir"], "srt")
    out["text"] = (
        f"long audio: {n} utterance(s) of {audio / max(n, 1):.0f} s (joined test clips) decoded in {windows} windows "
        f"(limit {summary['max_window_seconds'] or 0:.1f} s): WER {summary['rate']:.2%}; the same clips one by one "
        f"{parts:.2%}"
    )
    if "ctc" in summary:
        out["ctc_wer"] = summary["ctc"]["rate"]
        out["parts_ctc_wer"] = parts_wer(joined, Path(parts_results).parent / "ctc" / "results.jsonl")[0]
        out["text"] += f" (CTC branch {out['ctc_wer']:.2%}; one by one {out['parts_ctc_wer']:.2%})"
    out["text"] += f"; their subtitles, {out['subtitles']} cues, in {out['subtitles_dir']}"
    return out
