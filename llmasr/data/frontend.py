"""What features an encoder expects: the settings the encoder side hands to the data side, and Kaldi CMVN files.

The recipe never repeats these: they come from the encoder (its FunASR config.yaml + am.mvn, its Whisper
preprocessor, or the recipe's encoder.frontend block for encoders trained from scratch).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from llmasr.atomic_file import write_atomic
from llmasr.config_io import ConfigError
from llmasr.unread_fields import changed, refuse_unread

WINDOWS = ("hamming", "hanning", "hann", "povey", "rectangular", "blackman", "sine")
FBANK_LOW_FREQ_HZ = 20.0  # Kaldi's default lower edge of the first mel bin (FunASR keeps it); the upper is Nyquist
# kaldi-native-fbank aborts the whole process on a 1-sample window; nothing shorter than this is ever passed to it.
FBANK_FLOOR_SAMPLES = 4
WHISPER_MAX_DITHER = 0.01  # a standard deviation in [-1, 1] units: -40 dB of full scale


@dataclass
class FrontendConfig:
    kind: Literal["fbank", "whisper"] = "fbank"
    sample_rate: int = 16000
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hamming"
    # Gaussian noise of this standard deviation, in training and evaluation alike (as FunASR; evaluation's noise comes
    # from the audio itself: features.content_rng). fbank: in the int16-scaled domain, 1.0 unless set. Whisper: in
    # [-1, 1], from its preprocessor_config.json, 0 unless set (fbank's 1.0 there would be full-scale noise).
    dither: float | None = None
    snip_edges: bool = True
    waveform_scale: float = 32768.0  # Kaldi convention: samples in int16 range
    lfr_m: int = 1  # low frame rate: stack m frames ...
    lfr_n: int = 1  # ... every n frames (Paraformer: 7, 6)
    cmvn_file: str | None = None  # Kaldi nnet am.mvn (<AddShift>/<Rescale>) applied after LFR
    n_fft: int = 400  # whisper log-mel only (fbank's FFT is its window rounded up to a power of two)
    chunk_seconds: float = 30.0  # whisper pads/truncates to this; fbank takes audio of any length
    # Fewest feature frames the encoder takes (a Conformer's convolutional subsampling needs several): set from the
    # encoder; a shorter clip is a bad item, not a batch the encoder cannot subsample.
    min_frames: int = 1

    def __post_init__(self) -> None:
        if self.dither is None:
            self.dither = 0.0 if self.kind == "whisper" else 1.0

    @property
    def feature_dim(self) -> int:
        return self.n_mels * self.lfr_m

    @property
    def frame_seconds(self) -> float:
        """Seconds of audio per output feature frame (after LFR)."""
        return self.frame_shift_ms / 1000.0 * self.lfr_n

    @staticmethod
    def unread_fields(section: dict) -> dict[str, str]:
        """What a frontend sets that its kind does not read (llmasr.unread_fields)."""
        if section.get("kind", FrontendConfig.kind) != "fbank":
            return {}
        return {
            name: "a whisper frontend's setting; an fbank frontend does not read it (its FFT is the frame_length_ms "
            "window rounded up to a power of two, and it takes audio of any length): leave it unset"
            for name in changed(FrontendConfig, section, ["n_fft", "chunk_seconds"])
        }

    def validate(self, path: str) -> None:
        refuse_unread(self, path)
        if self.min_frames < 1:
            raise ConfigError(f"{path}.min_frames: must be >= 1, got {self.min_frames}")
        if self.lfr_m < 1 or self.lfr_n < 1:
            raise ConfigError(f"{path}: lfr_m and lfr_n must be >= 1, got {self.lfr_m}, {self.lfr_n}")
        for name in ("sample_rate", "n_mels", "frame_length_ms", "frame_shift_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{path}.{name}: must be positive, got {getattr(self, name)}")
        # dither is a standard deviation: torchaudio/Kaldi dither at |dither| whenever it is nonzero, llmasr only
        # when positive, so a negative one means different features elsewhere; a zero scale wipes the speech.
        if not (math.isfinite(self.dither) and self.dither >= 0):
            raise ConfigError(f"{path}.dither: must be a finite number >= 0 (0: no dither), got {self.dither}")
        if self.kind == "whisper" and self.dither > WHISPER_MAX_DITHER:
            raise ConfigError(
                f"{path}.dither: {self.dither:g} is noise louder than -40 dB of full scale; a whisper frontend's "
                f"dither is in [-1, 1] units (at most {WHISPER_MAX_DITHER:g}), not fbank's int16 units"
            )
        if not (math.isfinite(self.waveform_scale) and self.waveform_scale > 0):
            raise ConfigError(f"{path}.waveform_scale: must be a finite number > 0, got {self.waveform_scale}")
        problem = fbank_problem(self) if self.kind == "fbank" else None
        if problem is not None:
            raise ConfigError(f"{path}.{problem[0]}: {problem[1]}")
        if self.kind == "whisper":
            hop = self.frame_shift_ms * self.sample_rate / 1000.0
            if abs(hop - round(hop)) > 1e-6:
                raise ConfigError(f"{path}.frame_shift_ms: {self.frame_shift_ms} ms is not a whole number of samples")
            if self.cmvn_file is not None or self.lfr_m != 1 or self.lfr_n != 1:
                raise ConfigError(f"{path}: a whisper frontend takes no cmvn_file and no LFR (lfr_m = lfr_n = 1)")
        if self.cmvn_file is not None and not Path(self.cmvn_file).is_file():
            raise ConfigError(f"{path}.cmvn_file: not found: {self.cmvn_file}")
        if self.cmvn_file is not None:
            try:  # a bad file is refused here, not at the first batch
                read_kaldi_cmvn(self.cmvn_file)
            except ConfigError as err:
                raise ConfigError(f"{path}.cmvn_file: {err}") from None


def check_cmvn_size(fe: FrontendConfig, path: str) -> None:
    """Refuse a CMVN file of another size than `fe`'s features (`path` names the settings that sized them), once
    the features' size is settled: it had passed, and the first batch failed in the loader naming neither source."""
    if fe.kind != "fbank" or fe.cmvn_file is None:
        return
    dims = read_kaldi_cmvn(fe.cmvn_file)[0].size
    if dims == fe.feature_dim:
        return
    why = (
        "a CMVN of the fbank frames before LFR stacking"
        if dims == fe.n_mels and fe.lfr_m > 1
        else "a CMVN of other features (another model's)"
    )
    raise ConfigError(
        f"{path}: the features are n_mels x lfr_m = {fe.n_mels} x {fe.lfr_m} = {fe.feature_dim} values a frame, but "
        f"the CMVN file {fe.cmvn_file} holds {dims} ({why}). Use the CMVN the encoder was trained with (a FunASR "
        "directory's own am.mvn: one <AddShift>/<Rescale> value per LFR feature); for an encoder trained from "
        f"scratch, `llmasr data cmvn --n-mels {fe.n_mels} --lfr-m {fe.lfr_m} --lfr-n {fe.lfr_n}` computes one over "
        "these features"
    )


def _mel(hz: float) -> float:
    return 1127.0 * math.log(1.0 + hz / 700.0)


@lru_cache(maxsize=64)
def mel_bins_covered(n_mels: int, padded_window: int, sample_rate: int) -> bool:
    """Whether every triangle of Kaldi's mel bank (FBANK_LOW_FREQ_HZ .. Nyquist) holds at least one FFT bin strictly
    inside it, for an FFT of `padded_window` points: Kaldi's MelBanks condition. Where a bin holds none, recent
    kaldi-native-fbank refuses the options and older releases give that bin log(epsilon) in every frame."""
    lo, hi = _mel(FBANK_LOW_FREQ_HZ), _mel(sample_rate / 2.0)
    delta = (hi - lo) / (n_mels + 1)
    fft_mels = [_mel(sample_rate / padded_window * i) for i in range(padded_window // 2)]
    j = 0  # fft_mels rises, so one pass finds, per triangle, the first FFT bin above its left edge
    for b in range(n_mels):
        left, right = lo + b * delta, lo + (b + 2) * delta
        while j < len(fft_mels) and fft_mels[j] <= left:
            j += 1
        if j == len(fft_mels) or fft_mels[j] >= right:
            return False
    return True


def fbank_min_samples(fe: FrontendConfig) -> int | None:
    """Fewest samples a clip needs for one fbank frame whose every mel bin is filled, or None if no clip has that.

    FunASR shrinks the analysis window to the clip when the clip is shorter than one window, and the FFT size is
    the window rounded up to a power of two; a clip of n samples (n below the window) therefore gets an FFT of
    next_pow2(n) points, and the shortest usable clip is one past half the smallest power of two whose mel bank
    is filled. Decided from the options alone, so every kaldi-native-fbank release agrees."""
    window = int(fe.sample_rate * fe.frame_length_ms / 1000)
    if window < 1:
        return None
    full = 1 << max(window - 1, 0).bit_length()  # the FFT size of a full window
    size = 2
    while size <= full:
        if mel_bins_covered(int(fe.n_mels), size, int(fe.sample_rate)):
            return max(size // 2 + 1, FBANK_FLOOR_SAMPLES)  # <= window, as full // 2 < window
        size *= 2
    return None


def fbank_problem(fe: FrontendConfig) -> tuple[str, str] | None:
    """(field, what is wrong) for fbank options kaldi-native-fbank would refuse, or exit the process on."""
    if fe.window not in WINDOWS:
        return "window", f"{fe.window!r} is not one of {list(WINDOWS)}"
    if fe.n_mels < 3:
        return "n_mels", f"Kaldi fbank needs at least 3 mel bins, got {fe.n_mels}"
    if fbank_min_samples(fe) is None:
        window = int(fe.sample_rate * fe.frame_length_ms / 1000)
        return "n_mels", (
            f"{fe.n_mels} mel bins do not fit a {fe.frame_length_ms:g} ms window ({window} samples at "
            f"{fe.sample_rate} Hz): some bins would hold no FFT bin; use fewer mel bins or a longer frame_length_ms"
        )
    return None


def read_kaldi_cmvn(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a Kaldi nnet-format am.mvn: returns (add_shift, rescale), each [dim] float32.

    Features are normalised as (x + add_shift) * rescale.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:  # a binary Kaldi file, or another encoding
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); not a Kaldi nnet CMVN file in "
                          "text form") from None  # fmt: skip
    rows = {}
    for tag in ("AddShift", "Rescale"):
        m = re.search(rf"<{tag}>\s+(\d+)\s+(\d+)\s+<LearnRateCoef>\s+\S+\s+\[([^\]]*)\]", text)
        if m is None:
            raise ConfigError(f"{path}: no <{tag}> block with a [ ... ] vector; not a Kaldi nnet CMVN file")
        try:
            written = np.array(m.group(3).split(), dtype=np.float64)
        except ValueError as err:  # numpy's message names neither the file nor the block
            raise ConfigError(f"{path}: <{tag}> holds a value that is not a number ({err})") from None
        if written.size != int(m.group(1)):
            raise ConfigError(f"{path}: <{tag}> declares {m.group(1)} values but holds {written.size}")
        with np.errstate(over="ignore"):  # past float32's range: inf, refused below
            values = written.astype(np.float32)
        # a non-finite shift or scale, or a zero scale, makes that dimension inf/NaN or 0 in every frame
        bad = ~np.isfinite(values) | ((values == 0) if tag == "Rescale" else False)
        if bad.any():
            i = int(np.argmax(bad))
            want = "finite and nonzero (in float32)" if tag == "Rescale" else "finite (in float32)"
            raise ConfigError(f"{path}: <{tag}> value {i} is {written[i]:g}; every value must be {want}")
        rows[tag] = values
    if rows["AddShift"].shape != rows["Rescale"].shape:
        raise ConfigError(f"{path}: <AddShift> has {rows['AddShift'].size} values, <Rescale> {rows['Rescale'].size}")
    return rows["AddShift"], rows["Rescale"]


def write_kaldi_cmvn(path: str | Path, add_shift: np.ndarray, rescale: np.ndarray) -> None:
    """Write (add_shift, rescale) in the Kaldi nnet text format FunASR ships as am.mvn."""
    dim = int(np.asarray(add_shift).size)

    def vec(v: np.ndarray) -> str:
        return " ".join(f"{float(x):.8g}" for x in np.asarray(v).ravel())

    write_atomic(  # a run stopped mid-write (a full disk, a killed job) leaves the earlier am.mvn whole, not half
        path,
        "<Nnet>\n"
        f"<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {vec(add_shift)} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {vec(rescale)} ]\n"
        "</Nnet>\n",
    )
