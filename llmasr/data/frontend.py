"""What features an encoder expects: the settings the encoder side hands to the data side, and Kaldi CMVN files.

The recipe never repeats these: they come from the encoder (its FunASR config.yaml + am.mvn, its Whisper
preprocessor, or the recipe's encoder.frontend block for encoders trained from scratch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from llmasr.config_io import ConfigError

WINDOWS = ("hamming", "hanning", "hann", "povey", "rectangular", "blackman", "sine")


@dataclass
class FrontendConfig:
    kind: Literal["fbank", "whisper"] = "fbank"
    sample_rate: int = 16000
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hamming"
    # Gaussian noise of this standard deviation in the int16-scaled domain, training only (evaluation uses 0);
    # Whisper features are never dithered.
    dither: float = 1.0
    snip_edges: bool = True
    waveform_scale: float = 32768.0  # Kaldi convention: samples in int16 range
    lfr_m: int = 1  # low frame rate: stack m frames ...
    lfr_n: int = 1  # ... every n frames (Paraformer: 7, 6)
    cmvn_file: str | None = None  # Kaldi nnet am.mvn (<AddShift>/<Rescale>) applied after LFR
    n_fft: int = 400  # whisper log-mel only
    chunk_seconds: float = 30.0  # whisper pads/truncates to this

    @property
    def feature_dim(self) -> int:
        return self.n_mels * self.lfr_m

    @property
    def frame_seconds(self) -> float:
        """Seconds of audio per output feature frame (after LFR)."""
        return self.frame_shift_ms / 1000.0 * self.lfr_n

    def validate(self, path: str) -> None:
        if self.lfr_m < 1 or self.lfr_n < 1:
            raise ConfigError(f"{path}: lfr_m and lfr_n must be >= 1, got {self.lfr_m}, {self.lfr_n}")
        for name in ("sample_rate", "n_mels", "frame_length_ms", "frame_shift_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{path}.{name}: must be positive, got {getattr(self, name)}")
        if self.kind == "fbank" and self.window not in WINDOWS:
            # kaldi-native-fbank exits the whole process on an unknown window name; refuse it here instead.
            raise ConfigError(f"{path}.window: {self.window!r} is not one of {list(WINDOWS)}")
        if self.kind == "whisper":
            hop = self.frame_shift_ms * self.sample_rate / 1000.0
            if abs(hop - round(hop)) > 1e-6:
                raise ConfigError(f"{path}.frame_shift_ms: {self.frame_shift_ms} ms is not a whole number of samples")
            if self.cmvn_file is not None or self.lfr_m != 1 or self.lfr_n != 1:
                raise ConfigError(f"{path}: a whisper frontend takes no cmvn_file and no LFR (lfr_m = lfr_n = 1)")
        if self.cmvn_file is not None and not Path(self.cmvn_file).is_file():
            raise ConfigError(f"{path}.cmvn_file: not found: {self.cmvn_file}")


def read_kaldi_cmvn(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a Kaldi nnet-format am.mvn: returns (add_shift, rescale), each [dim] float32.

    Features are normalised as (x + add_shift) * rescale.
    """
    path = Path(path)
    text = path.read_text()
    rows = {}
    for tag in ("AddShift", "Rescale"):
        m = re.search(rf"<{tag}>\s+(\d+)\s+(\d+)\s+<LearnRateCoef>\s+\S+\s+\[([^\]]*)\]", text)
        if m is None:
            raise ConfigError(f"{path}: no <{tag}> block with a [ ... ] vector; not a Kaldi nnet CMVN file")
        values = np.array(m.group(3).split(), dtype=np.float32)
        if values.size != int(m.group(1)):
            raise ConfigError(f"{path}: <{tag}> declares {m.group(1)} values but holds {values.size}")
        rows[tag] = values
    if rows["AddShift"].shape != rows["Rescale"].shape:
        raise ConfigError(f"{path}: <AddShift> has {rows['AddShift'].size} values, <Rescale> {rows['Rescale'].size}")
    return rows["AddShift"], rows["Rescale"]


def write_kaldi_cmvn(path: str | Path, add_shift: np.ndarray, rescale: np.ndarray) -> None:
    """Write (add_shift, rescale) in the Kaldi nnet text format FunASR ships as am.mvn."""
    dim = int(np.asarray(add_shift).size)

    def vec(v: np.ndarray) -> str:
        return " ".join(f"{float(x):.8g}" for x in np.asarray(v).ravel())

    Path(path).write_text(
        "<Nnet>\n"
        f"<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {vec(add_shift)} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {vec(rescale)} ]\n"
        "</Nnet>\n"
    )
