"""FunASR's FSMN voice activity detector (fsmn-vad, model FsmnVADStreaming), read from its FunASR directory
(config.yaml, model.pt, am.mvn), for cutting long recordings at the speech it finds.

    vad = FsmnVad.from_dir("speech_fsmn_vad_zh-cn-16k-common-pytorch")
    vad.segments_ms(wave)          # [[start_ms, end_ms], ...]: FunASR's `AutoModel(model=that dir).generate(wav)`

The network: 80 log-mel bins stacked 5 frames a 10 ms frame (LFR 5/1, FunASR's WavFrontendOnline, CMVN from am.mvn),
two affine layers, `fsmn_layers` blocks (projection, a causal depthwise memory over `lorder` frames, affine, ReLU),
two affine layers and a softmax whose `sil_pdf_ids` outputs are the silence probability of each frame. The
end-point rules that turn those into segments are llmasr.models.vad_endpoints.
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from llmasr.config_io import ConfigError
from llmasr.data.features import FeatureExtractor
from llmasr.models.encoders import funasr_class_name
from llmasr.models.funasr_dir import funasr_frontend, read_funasr_config
from llmasr.models.funasr_files import missing_weights, weights_file
from llmasr.models.state_dict import CheckpointMismatchError, load_into, select_prefix, torch_load, unwrap_state_dict
from llmasr.models.vad_endpoints import CHUNK_MS, EndpointDetector, VadOptions

NET_CHUNK = 1000  # frames the network reads at a time (FsmnVad.frame_probs)
FSMN_KEYS = ("input_dim", "input_affine_dim", "fsmn_layers", "linear_dim", "proj_dim", "lorder", "output_affine_dim",
             "output_dim")  # fmt: skip


class _Affine(nn.Module):
    def __init__(self, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class _Memory(nn.Module):
    """x + a depthwise filter over the last `lorder` frames (and the next `rorder`), strided by lstride/rstride."""

    def __init__(self, dim: int, lorder: int, rorder: int, lstride: int, rstride: int):
        super().__init__()
        self.left_pad, self.rorder, self.rstride = (lorder - 1) * lstride, rorder, rstride
        self.conv_left = nn.Conv2d(dim, dim, (lorder, 1), dilation=(lstride, 1), groups=dim, bias=False)
        self.conv_right = None
        if rorder > 0:
            self.conv_right = nn.Conv2d(dim, dim, (rorder, 1), dilation=(rstride, 1), groups=dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.transpose(1, 2).unsqueeze(-1)  # B D T 1
        out = y + self.conv_left(F.pad(y, (0, 0, self.left_pad, 0)))
        if self.conv_right is not None:
            ahead = F.pad(y, (0, 0, 0, self.rorder * self.rstride))[:, :, self.rstride :, :]
            out = out + self.conv_right(ahead)
        return out.squeeze(-1).transpose(1, 2)


class _Block(nn.Module):
    def __init__(self, linear_dim: int, proj_dim: int, lorder: int, rorder: int, lstride: int, rstride: int):
        super().__init__()
        self.linear = _Affine(linear_dim, proj_dim, bias=False)
        self.fsmn_block = _Memory(proj_dim, lorder, rorder, lstride, rstride)
        self.affine = _Affine(proj_dim, linear_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.affine(self.fsmn_block(self.linear(x))))


class FSMN(nn.Module):
    """FunASR's FSMN encoder (its parameter names, so model.pt's `encoder.*` loads as saved): [B, T, input_dim] ->
    per-frame class probabilities [B, T, output_dim]."""

    def __init__(self, input_dim: int, input_affine_dim: int, fsmn_layers: int, linear_dim: int, proj_dim: int,
                 lorder: int, output_affine_dim: int, output_dim: int, rorder: int = 0, lstride: int = 1,
                 rstride: int = 0, use_softmax: bool = True):  # fmt: skip
        super().__init__()
        self.in_linear1 = _Affine(input_dim, input_affine_dim)
        self.in_linear2 = _Affine(input_affine_dim, linear_dim)
        self.fsmn = nn.ModuleList(
            _Block(linear_dim, proj_dim, lorder, rorder, lstride, rstride) for _ in range(fsmn_layers)
        )
        self.out_linear1 = _Affine(linear_dim, output_affine_dim)
        self.out_linear2 = _Affine(output_affine_dim, output_dim)
        self.use_softmax = use_softmax
        # frames of the past one output frame sees: none past this in a block's input reaches the output
        self.context = None if rorder > 0 else fsmn_layers * (lorder - 1) * lstride

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.in_linear2(self.in_linear1(feats)))
        for block in self.fsmn:
            x = block(x)
        x = self.out_linear2(self.out_linear1(x))
        return torch.softmax(x, dim=-1) if self.use_softmax else x


class FsmnVad:
    """A loaded FunASR FSMN VAD directory: its network, frontend and end-point options."""

    def __init__(self, net: FSMN, extractor: FeatureExtractor, opts: VadOptions, source: str):
        self.net, self.extractor, self.opts, self.source = net.eval(), extractor, opts, source
        self.sample_rate = extractor.frontend.sample_rate

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> FsmnVad:
        path = Path(model_dir).resolve()
        # loaded once per process (every long recording of a decode reads it), again when a file changes
        files = (path / "config.yaml", path / "configuration.json", weights_file(path))
        stamps = tuple(f.stat().st_mtime_ns if f.is_file() else None for f in files)
        return _load(str(path), stamps)

    def copy_to(self, out_dir: Path) -> None:
        """Write a directory that loads as this VAD: config.yaml, model.pt and its CMVN as am.mvn (what an export
        carries; without a CMVN, config.yaml says `cmvn_file: null`)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        src = Path(self.source)
        config = read_funasr_config(src)
        cmvn = self.extractor.frontend.cmvn_file
        config["frontend_conf"] = {k: v for k, v in config["frontend_conf"].items() if k != "cmvn_file"}
        if cmvn is None:
            config["frontend_conf"]["cmvn_file"] = None
        else:
            shutil.copyfile(cmvn, out_dir / "am.mvn")
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        shutil.copyfile(weights_file(src), out_dir / "model.pt")

    def silence_probs(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p(silence), energy in dB) of every 10 ms frame of a float waveform in [-1, 1] at self.sample_rate."""
        fe = self.extractor
        n = int(wave.shape[0])
        if n < fe.window_samples:  # FunASR's online frontend gives such a recording no frame
            return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.float32)
        feats = fe(wave, train=False)  # not cast here: integer PCM is refused (features.float_wave), not misread
        probs = self.frame_probs(torch.from_numpy(feats).float())
        ids = self.opts.sil_pdf_ids
        sil = probs[:, ids[0]].astype(np.float64)
        for i in ids[1:]:  # summed one by one, as FunASR does
            sil = sil + probs[:, i].astype(np.float64)
        frames = np.lib.stride_tricks.sliding_window_view(np.asarray(wave, dtype=np.float32), fe.window_samples)
        frames = frames[:: fe.shift_samples][: feats.shape[0]]
        decibels = 10 * np.log10(np.sum(np.square(frames), axis=1) + np.float32(1e-6))
        return sil, decibels

    def frame_probs(self, feats: torch.Tensor) -> np.ndarray:
        """The network over [T, D] features, NET_CHUNK frames at a time, each with the `context` frames before it:
        the same outputs as one pass (the memory is causal and finite), faster on long recordings, whose
        activations do not fit a CPU's caches in one piece."""
        t, context = feats.shape[0], self.net.context
        step = t if context is None else NET_CHUNK
        out = []
        with torch.no_grad():
            for start in range(0, t, step):
                first = max(0, start - (context or 0))
                out.append(self.net(feats[None, first : start + step])[0, start - first :])
        return torch.cat(out).numpy()

    def chunk_ends(self, num_samples: int, num_frames: int) -> list[int]:
        """The frame count FunASR's frontend has given out after each 60 s chunk of a recording: a chunk's fbank
        frames, less the two the 5-frame stacking waits for (all of them after the last chunk)."""
        fe = self.extractor
        stride = CHUNK_MS * self.sample_rate // 1000
        held = fe.frontend.lfr_m - 1 - (fe.frontend.lfr_m - 1) // 2
        ends = []
        for k in range(1, num_samples // stride + 1):
            fbank = (k * stride - fe.window_samples) // fe.shift_samples + 1
            ends.append(min(num_frames, max(fbank - held, ends[-1] if ends else 0)))
        return ends + [num_frames]

    def segments_ms(self, wave: np.ndarray, max_end_silence_ms: int | None = None) -> list[list[int]]:
        """[start_ms, end_ms] of every speech segment; `max_end_silence_ms` fixes the silence that ends one (FunASR's
        `max_end_silence_time`), None: FunASR's per-chunk schedule (llmasr.models.vad_endpoints)."""
        sil, decibels = self.silence_probs(wave)
        if sil.size == 0:
            return []
        detector = EndpointDetector(self.opts, max_end_silence_ms)
        return detector.run(sil.tolist(), decibels.tolist(), self.chunk_ends(int(wave.shape[0]), sil.size))


def load_vad(model_dir: str | Path, sample_rate: int, key: str = "decode.vad") -> FsmnVad:
    """The VAD `key` names, for a model that reads audio at `sample_rate`: ConfigError, naming `key`, for a directory
    that does not load (CheckpointMismatchError included) or a VAD of another sample rate."""
    try:
        vad = FsmnVad.from_dir(model_dir)
    except (ConfigError, CheckpointMismatchError) as err:
        raise ConfigError(f"{key}: {err}") from err
    if vad.sample_rate != sample_rate:
        raise ConfigError(
            f"{key}: {model_dir} reads {vad.sample_rate} Hz audio and the model {sample_rate} Hz; a VAD of the "
            "model's sample rate is needed"
        )
    return vad


@lru_cache(maxsize=4)
def _load(model_dir: str, _stamps: tuple) -> FsmnVad:
    path = Path(model_dir)
    config = read_funasr_config(path)
    cfg_path = path / "config.yaml"
    model, encoder = funasr_class_name(config.get("model", "")), funasr_class_name(config["encoder"])
    if model != "FsmnVADStreaming" or encoder != "FSMN":
        raise ConfigError(
            f"{cfg_path}: model {config.get('model')!r} with encoder {config['encoder']!r} is not an FSMN VAD "
            "(FunASR's fsmn-vad: model FsmnVADStreaming, encoder FSMN)"
        )
    frontend = funasr_frontend(path)
    conf = dict(config["encoder_conf"])
    missing = [k for k in FSMN_KEYS if k not in conf]
    if missing:
        raise ConfigError(f"{cfg_path}: encoder_conf lacks {', '.join(missing)}")
    if not frontend.snip_edges:
        raise ConfigError(f"{cfg_path}: frontend_conf.snip_edges must be true: the VAD's frames are whole 25 ms frames")
    if frontend.lfr_n != 1 or int(conf["input_dim"]) != frontend.feature_dim:
        raise ConfigError(
            f"{cfg_path}: the VAD scores one frame every frame shift from n_mels * lfr_m = {frontend.feature_dim} "
            f"features (lfr_n 1); encoder_conf.input_dim is {conf['input_dim']} and lfr_n {frontend.lfr_n}"
        )
    opts = VadOptions.from_conf(config.get("model_conf") or {})
    if int(opts.sample_rate) != frontend.sample_rate or opts.frame_in_ms != frontend.frame_shift_ms:
        raise ConfigError(
            f"{cfg_path}: model_conf.sample_rate {opts.sample_rate} and frame_in_ms {opts.frame_in_ms} must match "
            f"frontend_conf's fs {frontend.sample_rate} and frame_shift {frontend.frame_shift_ms:g}"
        )
    if not opts.sil_pdf_ids or max(opts.sil_pdf_ids) >= int(conf["output_dim"]):
        raise ConfigError(f"{cfg_path}: model_conf.sil_pdf_ids {list(opts.sil_pdf_ids)} are not outputs of the FSMN")
    net = FSMN(**{k: int(v) for k, v in conf.items() if k != "use_softmax"}, use_softmax=conf.get("use_softmax", True))
    ckpt = weights_file(path)
    if not ckpt.is_file():
        raise missing_weights(ckpt, "A FunASR VAD directory needs its weights (FSMN tensors under 'encoder.')")
    state = select_prefix(unwrap_state_dict(torch_load(ckpt), source=str(ckpt)), "encoder.")
    if not state:
        raise CheckpointMismatchError(f"{ckpt}: no tensors under 'encoder.' (the FSMN VAD's network)")
    load_into(net, state, source=f"{ckpt} (encoder.*)")
    return FsmnVad(net, FeatureExtractor(frontend), opts, str(path))
