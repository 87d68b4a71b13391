"""The CTC head a FunASR model directory carries, as `model.ctc` settings (`model.ctc.from_encoder`).

FunASR models trained with a CTC loss (Conformer, SenseVoiceSmall, Paraformer with ctc_weight > 0) keep the head in
model.pt as `ctc.ctc_lo`, over the vocabulary their tokenizer reads: configuration.json's
`file_path_metas.tokenizer_conf` (`token_list`: tokens.json, `bpemodel`: a sentencepiece model) when the directory
has that file, else config.yaml's `tokenizer_conf` with, as FunASR's AutoModel reads such a directory, the files
beside config.yaml in place of what it names (tokens.txt, tokens.json, seg_dict, bpe.model). FunASR's CTC loss
and decoders use
id 0 as the blank, whatever that entry is called (`<blank>` in a tokens.json, `<unk>` in SenseVoice's sentencepiece
model), so the blank is named by the vocabulary's first entry. A token list read through a seg_dict (tokenizer_conf
`seg_dict`, else `seg_dict_file`, as CharTokenizer takes them; Paraformer-large has one) comes with it.

Only config.yaml and configuration.json are read here (the recipe is being validated); the head's tensors are read,
and their sizes checked against the vocabulary and the encoder, when the model is built.
"""

from __future__ import annotations

from pathlib import Path

from llmasr.config_io import ConfigError
from llmasr.models.ctc_token_list import read_token_list
from llmasr.models.funasr_dir import read_funasr_config
from llmasr.models.funasr_files import file_path_metas, missing_weights, named_in_dir, weights_file

# FunASR prefixes every tensor of the CTC head with the module's name.
CTC_PREFIX = "ctc."
# Without configuration.json, FunASR's AutoModel puts these files beside config.yaml into its tokenizer_conf, in
# this order (tokens.json over tokens.txt).
BESIDE_CONFIG = (("token_list", "tokens.txt"), ("token_list", "tokens.json"), ("seg_dict", "seg_dict"),
                 ("bpemodel", "bpe.model"))  # fmt: skip


def _named_file(model_dir: Path, name: object, where: str) -> Path:
    """A file a FunASR config names (funasr_files.named_in_dir), ConfigError naming `where` when it is not there."""
    path = named_in_dir(model_dir, name)
    if path.is_file():
        return path
    raise ConfigError(f"{where} names {name}, which is not a file in {model_dir}")


def _tokenizer_file(model_dir: Path, config: dict, metas: dict, keys: tuple[str, ...]) -> Path | None:
    """The file the first of `keys` names in configuration.json's file_path_metas.tokenizer_conf, else in
    config.yaml's tokenizer_conf; None when neither names one. As FunASR's AutoModel, configuration.json maps only
    a file that is there (a fine-tuned output directory holds the pretrained model's configuration.json, naming
    tokens.json, and a config.yaml naming the pretrained token list by its full path)."""
    for source, conf, where in (
        ("configuration.json", metas.get("tokenizer_conf"), "file_path_metas.tokenizer_conf"),
        ("config.yaml", config.get("tokenizer_conf"), "tokenizer_conf"),
    ):
        if not isinstance(conf, dict):
            continue
        for key in keys:
            name = conf.get(key)
            if source == "configuration.json" and isinstance(name, str) and not (model_dir / name).is_file():
                continue
            if isinstance(name, str) and name:
                return _named_file(model_dir, name, f"{model_dir / source}: {where}.{key}")
    return None


def _with_files_beside(model_dir: Path, config: dict) -> dict:
    """`config` whose tokenizer_conf holds, in place of what it names, the BESIDE_CONFIG files the directory has."""
    conf = config.get("tokenizer_conf")
    conf = dict(conf) if isinstance(conf, dict) else {}
    for key, name in BESIDE_CONFIG:
        if (model_dir / name).is_file():
            conf[key] = name
    return {**config, "tokenizer_conf": conf}


def _vocabulary(model_dir: Path, config: dict, metas: dict) -> Path:
    named = _tokenizer_file(model_dir, config, metas, ("bpemodel", "token_list"))
    if named is not None:
        return named
    tokens = model_dir / "tokens.json"
    if tokens.is_file():
        return tokens
    mapped = metas.get("tokenizer_conf") if isinstance(metas.get("tokenizer_conf"), dict) else {}
    absent = [f"{k} names {mapped[k]}" for k in ("bpemodel", "token_list") if isinstance(mapped.get(k), str)]
    raise ConfigError(
        f"model.ctc.from_encoder: {model_dir} names no vocabulary for its CTC head: neither configuration.json's "
        "file_path_metas.tokenizer_conf nor config.yaml's tokenizer_conf has a bpemodel or token_list that is a file "
        f"there{' (configuration.json: ' + ', '.join(absent) + ', not in the directory)' if absent else ''}, and "
        "there is no tokens.json; set model.ctc.vocab instead"
    )


def _first_entry(vocab: Path) -> str:
    """The vocabulary's id 0: FunASR's CTC blank."""
    if vocab.suffix == ".model":
        import sentencepiece as spm

        try:
            return spm.SentencePieceProcessor(model_file=str(vocab)).id_to_piece(0)
        except (OSError, RuntimeError) as err:
            raise ConfigError(f"{vocab}: not a readable sentencepiece model: {err}") from err
    try:
        return read_token_list(str(vocab))[0]
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{vocab}: not a readable token list: {err}") from err


def funasr_ctc_settings(model_dir: str | Path) -> dict[str, str]:
    """`model.ctc` settings for the CTC head of FunASR directory `model_dir`: vocab, blank, seg_dict, init_from,
    init_prefix."""
    config = read_funasr_config(model_dir)  # (before resolving: a missing one is named as the recipe wrote it)
    model_dir = Path(model_dir).resolve()
    metas = file_path_metas(model_dir)
    if metas is None:
        config, metas = _with_files_beside(model_dir, config), {}
    vocab = _vocabulary(model_dir, config, metas)
    init_from = weights_file(model_dir)
    if not init_from.is_file():
        raise missing_weights(init_from, "model.ctc.from_encoder reads the CTC head (ctc.* tensors) from it")
    seg_dict = None
    if vocab.suffix != ".model":  # a CharTokenizer's token list, read through its seg_dict when it names one
        seg_dict = _tokenizer_file(model_dir, config, metas, ("seg_dict", "seg_dict_file"))
    return {
        "vocab": str(vocab),
        "blank": _first_entry(vocab),
        "seg_dict": None if seg_dict is None else str(seg_dict),
        "init_from": str(init_from),
        "init_prefix": CTC_PREFIX,
    }


def query_frames_warning(model_cfg) -> str | None:
    """A warning where SenseVoiceSmall's own CTC head (model.ctc.from_encoder) reads its encoder run without the four
    query frames (model.encoder.conf.queries unset or null) that SenseVoiceSmall prepends whenever it runs, and so
    trained the head with; None otherwise. A warning, not a refusal: the head still reads the encoder it was trained
    on, and the CTC loss trains it on what it now reads."""
    enc, ctc = model_cfg.encoder, model_cfg.ctc
    if not ctc.from_encoder or enc.type != "sensevoice" or enc.path is None:
        return None
    queries = (
        enc.conf["queries"]
        if "queries" in enc.conf
        else (read_funasr_config(enc.path).get("encoder_conf") or {}).get("queries")
    )
    if queries is not None:
        return None
    return (
        "model.ctc.from_encoder takes SenseVoiceSmall's CTC head, trained on the frames its encoder makes after its "
        "four query frames (language, event, emotion, ITN), but model.encoder.conf.queries is null, so the head reads "
        "frames made without them: its CTC loss, `llmasr decode --ctc`, timestamps and rescoring start from a head "
        "that does not match its input. Set model.encoder.conf.queries: {language: auto, itn: false} (as "
        "SenseVoiceSmall runs), or train a head afresh (model.ctc.from_encoder: false, with model.ctc.vocab)"
    )
