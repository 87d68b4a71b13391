"""A spoken corpus synthesized with espeak-ng: digit strings and short word phrases, many voices, 16 kHz wav.

Every utterance gets its own voice, speaking rate, pitch and (usually) background noise at a random SNR, all drawn
from one seeded generator up front, so the corpus is the same whatever the number of worker processes. The test
split is spoken only by voices the training split never hears (`held_out` voices), so its WER measures
generalisation to new speakers rather than memorisation.

Output layout under `out_dir`::

    wav/<split>/<key>.wav              16 kHz mono 16-bit PCM; splits train, dev, test, hotword, hotword_dev
    <split>.jsonl                      FunASR jsonl: key, source (relative), target, duration, source_len,
                                       target_len (words), voice, rate, pitch, snr_db; hotword.jsonl and
                                       hotword_dev.jsonl also `hotwords`, each utterance's biasing list
                                       (demo.hotword_split)
    corpus.json                        the settings, counts and hours; written last (the stage's done-marker)
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf

from llmasr.data.resample import resample
from llmasr.demo.hotword_split import NAMES, hotword_texts, plant_names
from llmasr.errors import write_error

SAMPLE_RATE = 16000
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Common words, none a homophone of a digit ("to", "for", "won" are left out on purpose). Thirty keeps every word
# frequent in 3,000 utterances; with 44 the speech LLM's word-phrase WER lagged its digit WER 5x (0.71 vs 0.15).
WORDS = [
    "yes", "no", "stop", "go", "left", "right", "up", "down", "open", "close",
    "play", "pause", "next", "back", "red", "green", "blue", "black", "white", "small",
    "big", "hot", "cold", "time", "house", "water", "music", "light", "door", "window",
]  # fmt: skip
# espeak-ng accents (language voices) and voice variants (timbre); a voice is "accent+variant".
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
TRAIN_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "klatt", "klatt2"]
TEST_VARIANTS = ["m6", "m7", "f4", "f5", "klatt3"]
INSTALL_HINT = "install it with `apt-get install -y espeak-ng` (or `sudo apt-get install -y espeak-ng`)"


class SynthError(RuntimeError):
    """espeak-ng is missing or failed, or the corpus settings are unusable."""


def voices(accents: Sequence[str], variants: Sequence[str]) -> list[str]:
    return [f"{a}+{v}" if v else a for a in accents for v in variants]


DEFAULT_TRAIN_VOICES = voices(ACCENTS, TRAIN_VARIANTS)
# Held-out voices: variants the training never hears, spoken with the training accents.
DEFAULT_TEST_VOICES = voices(ACCENTS, TEST_VARIANTS)


@dataclass
class CorpusConfig:
    # 9,000 rather than 3,000 utterances for the same number of updates: the encoder stops memorising them (with
    # SpecAugment, CTC greedy held-out WER 2.4% vs 8.0%); synthesis costs ~60 s on 2 cores.
    n_train: int = 9000
    n_dev: int = 150
    n_test: int = 300
    train_voices: list[str] = field(default_factory=lambda: list(DEFAULT_TRAIN_VOICES))
    test_voices: list[str] = field(default_factory=lambda: list(DEFAULT_TEST_VOICES))
    digit_fraction: float = 0.4  # the rest are word phrases
    digits_len: tuple[int, int] = (3, 7)  # inclusive range of digits per utterance
    words_len: tuple[int, int] = (2, 5)
    rate: tuple[int, int] = (130, 210)  # espeak-ng words per minute
    pitch: tuple[int, int] = (25, 75)  # espeak-ng pitch 0..99
    noise_prob: float = 0.7
    snr_db: tuple[float, float] = (8.0, 30.0)
    seed: int = 0
    # Hotwords (demo.hotword_split): made-up names, each spoken in `name_repeats` training utterances, and a
    # held-out-voice split of `n_hotword` utterances with biasing lists of one name + `hotword_distractors` others;
    # `n_hotword_dev` more in training voices, to choose decoding settings on (bench/hotword_boost.py) so that the
    # held-out split only reports them.
    names: list[str] = field(default_factory=lambda: list(NAMES))
    name_repeats: int = 40
    n_hotword: int = 150
    hotword_distractors: int = 4
    n_hotword_dev: int = 150

    def validate(self) -> None:
        for name in ("n_train", "n_test"):
            if getattr(self, name) < 1:
                raise SynthError(f"{name}: need at least one utterance, got {getattr(self, name)}")
        if self.n_dev < 0:
            raise SynthError(f"n_dev: must be >= 0, got {self.n_dev}")
        if not self.train_voices or not self.test_voices:
            raise SynthError("train_voices and test_voices must both name at least one espeak-ng voice")
        # espeak-ng reads a voice's language in any case (en-US is en-us) and its variant as written
        shared = sorted({voice_key(v) for v in self.train_voices} & {voice_key(v) for v in self.test_voices})
        if shared:
            raise SynthError(f"the test voices must be held out from training, but {shared} are in both lists")
        if not 0.0 <= self.digit_fraction <= 1.0:
            raise SynthError(f"digit_fraction: must be in [0, 1], got {self.digit_fraction}")
        if min(self.n_hotword, self.n_hotword_dev, self.name_repeats, self.hotword_distractors) < 0:
            raise SynthError("n_hotword, n_hotword_dev, name_repeats and hotword_distractors must be >= 0")
        if (self.n_hotword or self.n_hotword_dev) and len(self.names) < self.hotword_distractors + 1:
            raise SynthError(f"hotword lists of 1 + {self.hotword_distractors} names need that many names")
        if len(self.names) * self.name_repeats > self.n_train:
            raise SynthError(
                f"{len(self.names)} names x name_repeats {self.name_repeats} exceed n_train {self.n_train}"
            )


def espeak_binary() -> str:
    """Path of espeak-ng; SynthError with the install command when it is missing."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise SynthError(f"espeak-ng is not installed; {INSTALL_HINT}")
    return path


def try_install_espeak(log: Callable[[str], None] = print) -> bool:
    """Install espeak-ng with apt-get when running as root; True when it is available afterwards."""
    if shutil.which("espeak-ng"):
        return True
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    log("espeak-ng not found; installing it: apt-get install -y espeak-ng")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "espeak-ng"]):
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            log(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
            return False
    return shutil.which("espeak-ng") is not None


def voice_key(name: str) -> str:
    """A voice as espeak-ng tells voices apart: the language in any case, the variant as written."""
    accent, plus, variant = name.partition("+")
    return accent.lower() + plus + variant


def _listed(args: list[str], file_prefix: str, *, files: bool = False) -> set[str]:
    """Names espeak-ng lists (language, voice name, voice file), lowercased; with `files` only the voice files, as
    named (espeak-ng opens a variant's file by the name given); SynthError with espeak-ng's own message when it
    fails or lists nothing."""
    done = subprocess.run([espeak_binary(), *args], capture_output=True, text=True)
    names = set()
    for line in done.stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and files:
            names.add(cols[4].removeprefix(file_prefix))
        elif len(cols) >= 5:
            names |= {cols[1].lower(), cols[3].lower(), cols[4].lower().removeprefix(file_prefix)}
            names |= {c[1:].lower() for c in cols[5:] if c.startswith("(")}  # other languages: "(en 2)"
    if done.returncode != 0 or not names:
        said = (done.stderr or done.stdout).strip()[-500:] or f"exit status {done.returncode}"
        raise SynthError(f"`espeak-ng {' '.join(args)}` lists no voices ({said}); is espeak-ng installed whole?")
    return names


def check_voices(names: Sequence[str]) -> None:
    """SynthError naming every voice espeak-ng does not list (it would silently fall back to its default voice)."""
    languages = _listed(["--voices"], "")
    variants = _listed(["--voices=variant"], "!v/", files=True)
    bad = []
    for name in dict.fromkeys(names):
        accent, _, variant = name.partition("+")
        if accent.lower() not in languages or (variant and variant not in variants):
            bad.append(name)
    if bad:
        raise SynthError(
            f"espeak-ng does not know the voice(s) {bad}; a voice is LANGUAGE or LANGUAGE+VARIANT, see "
            "`espeak-ng --voices=en` and `espeak-ng --voices=variant`"
        )


def make_text(rng: np.random.Generator, cfg: CorpusConfig) -> str:
    if rng.random() < cfg.digit_fraction:
        n = int(rng.integers(cfg.digits_len[0], cfg.digits_len[1] + 1))
        return " ".join(DIGITS[i] for i in rng.integers(0, 10, n))
    n = int(rng.integers(cfg.words_len[0], cfg.words_len[1] + 1))
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


def plan_corpus(cfg: CorpusConfig) -> dict[str, list[dict]]:
    """Every utterance's text, voice, rate, pitch, noise level and noise seed, per split (deterministic)."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    plan: dict[str, list[dict]] = {}
    for split, n, pool in (
        ("train", cfg.n_train, cfg.train_voices),
        ("dev", cfg.n_dev, cfg.train_voices),
        ("test", cfg.n_test, cfg.test_voices),
        ("hotword", cfg.n_hotword, cfg.test_voices),
        ("hotword_dev", cfg.n_hotword_dev, cfg.train_voices),  # last: the other splits' draws stay as they were
    ):
        if split.startswith("hotword") and n == 0:
            continue
        items = []
        for i in range(n):
            snr = float(rng.uniform(*cfg.snr_db)) if rng.random() < cfg.noise_prob else None
            items.append(
                {
                    "key": f"{split}_{i:05d}",
                    "target": make_text(rng, cfg),
                    "voice": pool[int(rng.integers(0, len(pool)))],
                    "rate": int(rng.integers(cfg.rate[0], cfg.rate[1] + 1)),
                    "pitch": int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1)),
                    "snr_db": None if snr is None else round(snr, 2),
                    "noise_seed": int(rng.integers(0, 2**31 - 1)),
                }
            )
        plan[split] = items
    plant_names(plan["train"], cfg.names, cfg.name_repeats, cfg.seed)
    for split, seed in (("hotword", cfg.seed), ("hotword_dev", cfg.seed + 1)):  # lists of their own
        if split in plan:
            texts = [it["target"] for it in plan[split]]
            for item, (text, phrases) in zip(
                plan[split], hotword_texts(len(texts), texts, cfg.names, cfg.hotword_distractors, seed)
            ):
                item["target"], item["hotwords"] = text, phrases
    return plan


def add_noise(wav: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Mix low-passed (pinkish) Gaussian noise at `snr_db` relative to the speech power."""
    noise = rng.standard_normal(wav.shape[0]).astype(np.float32)
    noise = np.convolve(noise, np.ones(4, dtype=np.float32) / 4.0, mode="same")  # tilt the spectrum downwards
    p_speech = float(np.mean(wav**2)) + 1e-12
    p_noise = float(np.mean(noise**2)) + 1e-12
    return wav + noise * np.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))


def synthesize_one(item: dict, wav_path: str) -> float:
    """Speak one planned utterance into `wav_path` (16 kHz); returns its duration in seconds."""
    exe = espeak_binary()
    cmd = [exe, "-v", item["voice"], "-s", str(item["rate"]), "-p", str(item["pitch"]), "--stdout", item["target"]]
    done = subprocess.run(cmd, capture_output=True)
    if done.returncode != 0 or len(done.stdout) < 100:
        err = done.stderr.decode(errors="replace").strip()
        raise SynthError(f"espeak-ng failed for {item['key']} (voice {item['voice']}): {err or 'no audio'}")
    # The streamed header carries no length; read the PCM after it with the rate it states.
    raw = done.stdout
    sr = int.from_bytes(raw[24:28], "little")
    data_at = raw.find(b"data") + 8
    pcm = np.frombuffer(raw[data_at : data_at + (len(raw) - data_at) // 2 * 2], dtype="<i2").astype(np.float32)
    wav = resample(pcm / 32768.0, sr, SAMPLE_RATE)  # espeak-ng speaks at 22.05 kHz
    rng = np.random.default_rng(item["noise_seed"])
    if item["snr_db"] is not None:
        wav = add_noise(wav, item["snr_db"], rng)
    peak = float(np.abs(wav).max()) + 1e-9
    wav = wav * (float(rng.uniform(0.3, 0.9)) / peak)  # random level, never clipping
    buf = io.BytesIO()
    sf.write(buf, wav.astype(np.float32), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    _write(Path(wav_path), buf.getvalue())
    return wav.shape[0] / SAMPLE_RATE


def _write(path: Path, data: bytes) -> None:
    """`data` into `path`; a write that fails on a full disk names `path` and its free space (the OSError of a
    failed write names no file)."""
    try:
        path.write_bytes(data)
    except OSError as err:
        full = write_error(path, err)
        if full is None:
            raise
        raise full from err


def _worker(job: tuple[dict, str]) -> tuple[str, float]:
    item, path = job
    return item["key"], synthesize_one(item, path)


def _record(item: dict, split: str, duration: float) -> dict:
    samples = int(round(duration * SAMPLE_RATE))
    return {
        "key": item["key"],
        "source": f"wav/{split}/{item['key']}.wav",
        "target": item["target"],
        "duration": round(duration, 4),
        "source_len": int(samples * 1000 / SAMPLE_RATE / 10),  # FunASR's 10 ms frame count
        "target_len": len(item["target"].split()),
        "voice": item["voice"],
        "rate": item["rate"],
        "pitch": item["pitch"],
        "snr_db": item["snr_db"],
        **({"hotwords": item["hotwords"]} if "hotwords" in item else {}),
    }


def corpus_done(out_dir: str | Path, cfg: CorpusConfig) -> bool:
    """True when `out_dir` holds a finished corpus made with exactly these settings."""
    marker = Path(out_dir) / "corpus.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("config") == json.loads(json.dumps(asdict(cfg)))
    except (OSError, json.JSONDecodeError):
        return False


def synthesize_corpus(
    out_dir: str | Path,
    cfg: CorpusConfig | None = None,
    *,
    workers: int = 2,
    log: Callable[[str], None] = print,
) -> dict:
    """Synthesize the corpus (reusing a finished one with the same settings); returns the corpus.json summary."""
    cfg = cfg or CorpusConfig()
    out_dir = Path(out_dir)
    if corpus_done(out_dir, cfg):
        summary = json.loads((out_dir / "corpus.json").read_text(encoding="utf-8"))
        log(f"corpus: reusing {out_dir} ({summary['counts']})")
        return summary
    espeak_binary()
    check_voices([*cfg.train_voices, *cfg.test_voices])
    plan = plan_corpus(cfg)
    (out_dir / "corpus.json").unlink(missing_ok=True)
    jobs = []
    for split, items in plan.items():
        (out_dir / "wav" / split).mkdir(parents=True, exist_ok=True)
        jobs += [(item, str(out_dir / "wav" / split / f"{item['key']}.wav")) for item in items]
    total = len(jobs)
    log(f"corpus: synthesizing {total} utterances with espeak-ng in {workers} process(es) into {out_dir}")
    start = time.time()
    durations: dict[str, float] = {}
    step = max(1, total // 10)
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            for key, dur in pool.imap_unordered(_worker, jobs, chunksize=16):
                durations[key] = dur
                if len(durations) % step == 0 or len(durations) == total:
                    log(f"  {len(durations)}/{total} utterances ({time.time() - start:.0f} s)")
    else:
        for job in jobs:
            durations[job[0]["key"]] = synthesize_one(*job)
            if len(durations) % step == 0 or len(durations) == total:
                log(f"  {len(durations)}/{total} utterances ({time.time() - start:.0f} s)")
    counts, hours = {}, {}
    for split, items in plan.items():
        records = [_record(item, split, durations[item["key"]]) for item in items]
        _write(out_dir / f"{split}.jsonl", "".join(json.dumps(rec) + "\n" for rec in records).encode())
        counts[split] = len(records)
        hours[split] = round(sum(r["duration"] for r in records) / 3600.0, 4)
    summary = {
        "config": json.loads(json.dumps(asdict(cfg))),
        "counts": counts,
        "hours": hours,
        "manifests": {split: str(out_dir / f"{split}.jsonl") for split in plan},
        "seconds": round(time.time() - start, 1),
    }
    _write(out_dir / "corpus.json", json.dumps(summary, indent=2).encode())  # last: the done-marker
    log(f"corpus: {counts} ({hours} hours of audio) in {summary['seconds']} s")
    return summary


def transcripts(manifest: str | Path) -> list[str]:
    with open(manifest, encoding="utf-8") as f:
        return [json.loads(line)["target"] for line in f if line.strip()]


if __name__ == "__main__":  # python -m llmasr.demo.synth OUT_DIR: a full-size corpus
    synthesize_corpus(sys.argv[1] if len(sys.argv) > 1 else "exp/demo/corpus")
