"""Fingerprints of the pretrained files a run starts from.

Checkpoints hold only the trained tensors (LoRA, adaptor, CTC head, unfrozen branches); the frozen base weights
are read again from the recipe's paths at export or resume. A fingerprint stored with each checkpoint lets those
steps refuse a base model that is not the one the run was trained on, instead of merging LoRA into the wrong LLM.

Small files (configs, tokenizers, remote code, weights up to 64 MiB) are hashed whole. A larger weight file is
hashed by sampling every tensor it holds: the blocks at its start, middle and end, located through the file's own
index (the safetensors header; the zip directory of a torch.save file, whose per-tensor CRC32 is hashed too), so
another checkpoint of the same architecture differs in every tensor's samples and is caught, while a 15 GB base costs
a few thousand small reads. Fingerprints saved by older llmasr versions (weights by size only) are compared on what
they recorded.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path

from llmasr.models.config import ModelConfig

SCHEME = 4  # 3: a FunASR directory's weights file whatever its name; sentencepiece, tiktoken, seg_dict. 4: a peft
# adapter's adapter_config.json (its rank, alpha and scaling give the saved tensors their meaning)
# Hashed whole when present (tokenizer and code files change what the weights mean).
_CONFIG_FILES = (
    "config.json", "config.yaml", "configuration.json", "am.mvn", "tokens.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "model.safetensors.index.json", "pytorch_model.bin.index.json", "preprocessor_config.json", "seg_dict",
    "adapter_config.json",
)  # fmt: skip
_TRACKED_SUFFIXES = (".py", ".jinja", ".model", ".tiktoken")  # code, templates, sentencepiece and tiktoken vocabularies
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_HASH_LIMIT = 64 * 2**20  # weight files up to this size are hashed whole
_BLOCK = 4096
_SPAN = 2**20  # files without a tensor index: sampled per MiB


def _sha16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _samples(f, digest, start: int, end: int) -> None:
    """Hash the first, middle and last block of the byte range [start, end) (all of it when short)."""
    if end - start <= 3 * _BLOCK:
        f.seek(start)
        digest.update(f.read(end - start))
        return
    for at in (start, (start + end - _BLOCK) // 2, end - _BLOCK):
        f.seek(at)
        digest.update(f.read(_BLOCK))


def _safetensors_ranges(f, digest, size: int) -> list[tuple[int, int]] | None:
    head = f.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
        return None
    header = f.read(n)
    try:
        entries = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    base = 8 + n
    try:
        tensors = [e for k, e in sorted(entries.items()) if k != "__metadata__"]
        ranges = [(base + int(e["data_offsets"][0]), base + int(e["data_offsets"][1])) for e in tensors]
    except (AttributeError, KeyError, TypeError, IndexError, ValueError):
        return None  # not a safetensors header: sampled like any other file
    digest.update(header)  # names, dtypes, shapes and offsets
    return ranges


def _zip_ranges(f, digest, path: Path) -> list[tuple[int, int]] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError):
        return None
    ranges = []
    for info in infos:
        digest.update(f"{info.filename}:{info.file_size}:{info.CRC}\n".encode())
        f.seek(info.header_offset + 26)  # the local header's name and extra-field lengths
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        start = info.header_offset + 30 + name_len + extra_len
        ranges.append((start, start + info.compress_size))
    return ranges


def weight_identity(path: str | Path) -> str:
    """ "<size> bytes sha256:<hex>" (hashed whole) or "<size> bytes sampled-sha256:<hex>" (every tensor sampled)."""
    path = Path(path)
    size = path.stat().st_size
    if size <= _HASH_LIMIT:
        return f"{size} bytes sha256:{_sha16(path.read_bytes())}"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        ranges = _safetensors_ranges(f, digest, size) if path.suffix == ".safetensors" else None
        if ranges is None:
            digest = hashlib.sha256()
            ranges = _zip_ranges(f, digest, path)
        if ranges is None:
            digest = hashlib.sha256()
            ranges = [(at, min(at + _SPAN, size)) for at in range(0, size, _SPAN)]
        for start, end in ranges:
            _samples(f, digest, start, end)
    return f"{size} bytes sampled-sha256:{digest.hexdigest()[:16]}"


def _tracked(f: Path) -> bool:
    return f.name in _CONFIG_FILES or f.suffix in _TRACKED_SUFFIXES


def _funasr_weights(path: Path) -> Path | None:
    """The weights file a FunASR directory is read from (configuration.json's init_param may name model.pb or
    model.pt.avg10, which no weight suffix matches), when it lies in the directory or in a DeepSpeed checkpoint
    folder there (model.pt/mp_rank_00_model_states.pt)."""
    if not (path / "config.yaml").is_file():
        return None
    from llmasr.models.funasr_files import weights_file

    try:
        found = weights_file(path)
    except (OSError, ValueError):
        return None
    from llmasr.models.ds_checkpoint import MODEL_STATES

    in_ds_folder = found.name == MODEL_STATES and found.parent.parent.resolve() == path.resolve()
    return found if found.is_file() and (found.parent.resolve() == path.resolve() or in_ds_folder) else None


def dir_fingerprint(path: str | Path | None) -> dict | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_dir():
        return {"missing": str(path)}
    out: dict = {"scheme": SCHEME, "files": {}}
    read = _funasr_weights(path)
    for f in sorted(path.iterdir()):
        if not f.is_file():
            continue
        if f.suffix in _WEIGHT_SUFFIXES or f == read:
            out["files"][f.name] = weight_identity(f)
        elif _tracked(f):
            out["files"][f.name] = _sha16(f.read_bytes())
    if read is not None and read.parent.resolve() != path.resolve():  # in a DeepSpeed checkpoint folder
        out["files"][f"{read.parent.name}/{read.name}"] = weight_identity(read)
    return out


def tensors_sample(module) -> str:
    """A digest of the tensors `module` holds (parameters and buffers): each one's name, shape and dtype, and 16
    values at its start, middle and end. Two loads of other weights (another checkpoint, an adaptor trained on)
    differ in it, at the cost of a few small reads per tensor whatever the model's size."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        mid = flat.numel() // 2
        picked = torch.cat([flat[:16], flat[mid : mid + 16], flat[-16:]]).to("cpu", torch.float64)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode() + picked.numpy().tobytes())
    return digest.hexdigest()[:16]


def file_fingerprint(path: str | Path) -> dict:
    """One weight file (adaptor or CTC `init_from`): the one read from a DeepSpeed checkpoint folder (read_weights)."""
    from llmasr.models.ds_checkpoint import weights_in

    given = Path(path)
    path = weights_in(given)
    if not path.is_file():
        return {"missing": str(path)}
    name = path.name if path == given else f"{given.name}/{path.name}"
    return {"scheme": SCHEME, "files": {name: weight_identity(path)}}


def base_fingerprint(model_cfg: ModelConfig) -> dict:
    """{"llm": ..., "encoder": ...} describing the pretrained directories named by the model section, plus an entry
    for every other file or directory the base is read from again (a frozen branch's `init_from`, a saved LLM
    adapter, a separate tokenizer, and the files export copies: the chat template, the CTC vocabulary and seg_dict,
    the CMVN). Entries that are not set are absent, so older fingerprints read as before."""
    m = model_cfg
    out = {"llm": dir_fingerprint(m.llm.path), "encoder": dir_fingerprint(m.encoder.path)}
    files = (("encoder_init", m.encoder.init_from), ("adaptor", m.adaptor.init_from), ("ctc", m.ctc.init_from))
    for branch, init_from in files:
        if init_from:
            out[branch] = file_fingerprint(init_from)
    for branch, path in (("llm_adapter", m.llm.adapter), ("llm_tokenizer", m.llm.tokenizer)):
        if path:
            out[branch] = dir_fingerprint(path)
    template = m.prompt.chat_template
    recipe_files = (
        ("prompt_template", template if template and "{" not in template else None),  # a file, not the text itself
        ("ctc_vocab", None if m.ctc.vocab == "llm" else m.ctc.vocab),
        ("ctc_seg_dict", m.ctc.seg_dict),
        ("cmvn", (m.encoder.frontend or {}).get("cmvn_file")),
    )
    for branch, path in recipe_files:
        if path:
            out[branch] = file_fingerprint(path)
    if _streaming_chunked(m):
        out["encoder_context"] = "chunked"  # absent: full context, as every llmasr before the setting ran it
    return out


def _streaming_chunked(m: ModelConfig) -> bool:
    """Whether the encoder is a FunASR SANMEncoderChunkOpt directory run chunked (model.encoder.conf.context,
    chunked unless set to full): trained tensors on top of it belong to that context."""
    from llmasr.models.funasr_dir import streaming_encoder_dir

    return (
        streaming_encoder_dir(m.encoder.type, m.encoder.path)
        and (m.encoder.conf or {}).get("context", "chunked") == "chunked"
    )


# Entries an older llmasr did not record: a checkpoint without them is compared on the rest.
_LATER_ENTRIES = frozenset({"prompt_template", "ctc_vocab", "ctc_seg_dict", "cmvn"})


def _legacy_same(old: str, new: str) -> bool:
    """An older fingerprint's entry: "<size> bytes" (weights by size) or a 16-hex sha256 of the whole file."""
    if old.endswith(" bytes"):
        return new.split(" ")[:2] == old.split(" ")
    return old == new or new.endswith(f"sha256:{old}")


def _file_differences(branch: str, a: dict, b: dict) -> list[str]:
    files_a, files_b = a.get("files", {}), b.get("files", {})
    legacy = "scheme" not in a and "scheme" in b
    older = a.get("scheme", 0) < b.get("scheme", 0)  # saved by an older llmasr: compared on what it recorded
    names = sorted(files_a) if older else sorted(set(files_a) | set(files_b))
    diffs = []
    for name in names:
        old, new = files_a.get(name), files_b.get(name)
        same = old == new or (legacy and old is not None and new is not None and _legacy_same(old, new))
        if not same:
            diffs.append(f"{branch}/{name}: trained on {old or 'absent'}, now {new or 'absent'}")
    return diffs


# The recipe key naming what each fingerprint entry hashes (base_fingerprint), for refusals to name
ENTRY_KEYS = {
    "llm": "model.llm.path", "encoder": "model.encoder.path", "encoder_init": "model.encoder.init_from",
    "adaptor": "model.adaptor.init_from", "ctc": "model.ctc.init_from", "llm_adapter": "model.llm.adapter",
    "llm_tokenizer": "model.llm.tokenizer", "prompt_template": "model.prompt.chat_template",
    "ctc_vocab": "model.ctc.vocab", "ctc_seg_dict": "model.ctc.seg_dict", "cmvn": "model.encoder.frontend.cmvn_file",
    "encoder_context": "model.encoder.conf.context",
}  # fmt: skip


def _key_value(model, key: str):
    """The value of a `model.` key in a model section, a ModelConfig or a recipe's plain dict alike."""
    node = model
    for part in key.split(".")[1:]:
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
        if node is None:
            return None
    return node


def _key_line(branch: str, now, trained) -> str | None:
    """Which recipe key gives the entry `branch`, with its value now and when trained (either model section may be
    None: not known)."""
    key = ENTRY_KEYS.get(branch)
    if key is None or now is None:
        return None
    value = _key_value(now, key)
    if trained is None:
        return f"  ({key}: {value})"
    was = _key_value(trained, key)
    if str(was) == str(value):
        return f"  ({key}: {value}, as when trained: its files changed since)"
    return f"  ({key}: {value} now, {was} when trained)"


def fingerprint_differences(saved: dict, current: dict, *, now=None, trained=None) -> list[str]:
    """Human-readable differences between two base fingerprints ([] when they agree). `now`: the model section
    `current` was taken from, and `trained` (where known) the one the run was trained under: each differing entry
    then names its recipe key with both values."""
    diffs = []
    for branch in sorted(set(saved) | set(current)):
        a, b = saved.get(branch), current.get(branch)
        if a == b or (a is None and branch in _LATER_ENTRIES):
            continue
        before = len(diffs)
        diffs += _entry_differences(branch, a, b)
        key_line = _key_line(branch, now, trained)
        if key_line and len(diffs) > before and branch != "encoder_context":  # that line names its key already
            diffs.append(key_line)
    return diffs


def _entry_differences(branch: str, a, b) -> list[str]:
    """fingerprint_differences' lines for one entry whose fingerprints `a` (saved) and `b` (now) differ."""
    if branch == "encoder_context":
        return [
            f"encoder_context: trained with {a or 'full'} context, now {b or 'full'} (model.encoder.conf.context; "
            "an llmasr before that setting ran a Paraformer-streaming encoder with full context: set "
            "model.encoder.conf.context: full to go on as trained)"
        ]
    if b is None and branch in _LATER_ENTRIES:
        return [f"{branch}: a file when trained, none now"]
    if a is None or b is None:
        return [
            f"{branch}: trained {'without' if a is None else 'with'} a pretrained directory, "
            f"now {'without' if b is None else 'with'} one"
        ]
    if "missing" in b:
        return [f"{branch}: not found: {b['missing']}"]
    return _file_differences(branch, a, b)
