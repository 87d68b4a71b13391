"""What FunASR's FSMN VAD costs in llmasr (llmasr.models.fsmn_vad) against FunASR's own, on one CPU thread: seconds
per audio second for the features, the network and the end-point rules, and FunASR's `AutoModel.generate` on the
same file when the funasr package is importable (with the segments of both compared). Both are timed warm: FunASR's
second call (its first reads and sets up more than the VAD), llmasr's whole pass after its parts ran once; FunASR's
includes reading the file.

    python bench/vad_speed.py [--quick] [--seconds S] [--json-out F]

The VAD directory has fsmn-vad's real sizes (FSMN 400-140-250, 4 blocks of 128 with 20 frames of memory, 248
outputs) with llmasr.testing.tiny_vad's hand-set loudness path, so that its segments follow the pauses; the audio is
syllable bursts with a pause every 4.3 s. --quick: 20 s of audio and the tiny VAD (the suite's smoke run).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import emit, reproduce_command  # noqa: E402

REAL_FSMN = {
    "input_dim": 400, "input_affine_dim": 140, "fsmn_layers": 4, "linear_dim": 250, "proj_dim": 128, "lorder": 20,
    "rorder": 0, "lstride": 1, "rstride": 0, "output_affine_dim": 140, "output_dim": 248,
}  # fmt: skip


def write_vad(path: Path, quick: bool) -> Path:
    from llmasr.testing.tiny_vad import write_fsmn_vad_dir

    return write_fsmn_vad_dir(path, fsmn=None if quick else REAL_FSMN)


def time_ours(model_dir: Path, wave) -> tuple[dict, list]:
    import torch

    from llmasr.models.fsmn_vad import FsmnVad
    from llmasr.models.vad_endpoints import EndpointDetector

    vad = FsmnVad.from_dir(model_dir)
    t0 = time.perf_counter()
    feats = vad.extractor(wave, train=False)
    t1 = time.perf_counter()
    vad.frame_probs(torch.from_numpy(feats))  # the network, as segments_ms runs it
    t2 = time.perf_counter()
    sil, db = vad.silence_probs(wave)
    t3 = time.perf_counter()
    segments = EndpointDetector(vad.opts).run(sil.tolist(), db.tolist(), vad.chunk_ends(len(wave), sil.size))
    t4 = time.perf_counter()
    total = vad.segments_ms(wave)
    t5 = time.perf_counter()
    assert total == segments
    return {"features": t1 - t0, "network": t2 - t1, "endpoints": t4 - t3, "total": t5 - t4}, segments


def time_funasr(model_dir: Path, wav: Path) -> tuple[float, list, int]:
    """(seconds of the warm call, its segments, the torch threads it ran on)."""
    import torch
    from funasr import AutoModel

    # AutoModel sets torch's threads to its `ncpu` (default 4) when it builds the model: 1, as llmasr's side runs
    model = AutoModel(
        model=str(model_dir), disable_update=True, device="cpu", disable_pbar=True, disable_log=True, ncpu=1
    )
    model.generate(input=str(wav))  # warm, as llmasr's total is timed after its parts ran once
    t0 = time.perf_counter()
    segments = model.generate(input=str(wav))[0]["value"]
    return time.perf_counter() - t0, [list(map(int, s)) for s in segments], torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20 s of audio, the tiny VAD (the suite's smoke run)")
    p.add_argument("--seconds", type=float, default=600.0, help="audio length")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)


def _run(args, argv) -> int:
    import soundfile as sf

    from llmasr.testing.tiny_vad import vad_case_audio

    seconds = 20.0 if args.quick else args.seconds
    wave = vad_case_audio({"seconds": seconds, "seed": 11})
    res = {"command": reproduce_command("bench/vad_speed.py", list(argv if argv is not None else sys.argv[1:]))}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_vad(Path(tmp) / "vad", args.quick)
        ours, segments = time_ours(model_dir, wave)
        res.update(audio_seconds=seconds, segments=len(segments), llmasr=ours)
        if importlib.util.find_spec("funasr") is not None:
            sf.write(str(Path(tmp) / "a.wav"), wave, 16000, subtype="FLOAT")
            took, theirs, threads = time_funasr(model_dir, Path(tmp) / "a.wav")
            res["funasr"] = {"total": took, "same_segments": theirs == segments, "threads": threads}
    lines = [
        f"{seconds:g} s of audio, {len(segments)} segments, 1 thread",
        "| | seconds | x real time |",
        "|---|---:|---:|",
    ]
    for part, s in ours.items():
        lines.append(f"| llmasr {part} | {s:.3f} | {seconds / s:.0f} |")
    if "funasr" in res:
        f = res["funasr"]
        name = f"FunASR AutoModel.generate, torch threads {f['threads']}"
        lines.append(f"| {name} | {f['total']:.3f} | {seconds / f['total']:.0f} |")
        lines.append(f"same segments: {f['same_segments']}")
    lines.append(f"Reproduce: `{res['command']}`")
    emit(res, lines, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
