"""How a SpeechLLM decodes: the one decode configuration (a recipe's `decode:` section, an export's saved decode
settings, `llmasr decode`'s flags) and what `SpeechLLM.transcribe` returns.

Validation during training and `llmasr decode` both decode through `SpeechLLM.transcribe(batch, DecodeConfig)`, so a
setting means the same in both and its default is written here only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from pathlib import Path

from llmasr import errors
from llmasr.config_io import ConfigError, coerce, from_dict
from llmasr.config_paths import path_field

METRICS = ("auto", "wer", "cer")
# ctc_weight when unset and the model has a CTC head (tuned on the demo's dev set; see the README's decode section).
AUTO_CTC_WEIGHT = 0.7
# hotword_boost when unset and the search is CTC prefix-guided (chosen on the demo's hotword_dev split by
# bench/hotword_boost.py: the lowest WER within its leak and U-WER limits; README).
AUTO_HOTWORD_BOOST = 2.0
# the settings SpeechLLM.transcribe reads (the rest are the loader's and the scorer's, checked by validate)
SEARCH_FIELDS = ("num_beams", "max_new_tokens", "tokens_per_second", "repetition_penalty", "no_repeat_ngram_size",
                 "ctc_weight", "repeat_limit", "hotword_boost", "timestamps", "confidence", "ctc_gate")  # fmt: skip
MIN_WINDOW_SECONDS = 2.0  # shortest long-audio window: below it the join would hang on a word or two


@dataclass
class DecodeConfig:
    """How a model decodes: a recipe's `decode:` section, an export's saved settings, `llmasr decode`'s flags, or one
    made in Python for SpeechLLM.transcribe (checked there as a recipe's is). Each field's comment says what it does."""

    num_beams: int = 1
    # None (0 is read as None, as the flag's 0 is): tied to audio duration (tokens_per_second * seconds + 8)
    max_new_tokens: int | None = None
    tokens_per_second: float = 8.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    batch_seconds: float = 120.0  # audio seconds per decoding batch
    # LLM positions per decoding batch: B x num_beams x (the longest prompt with its audio tokens + the most tokens
    # generation may add), the prefill and KV cache (llmasr.train.decode_rows); an utterance past it alone is decoded
    # in a batch of its own. None: batch_seconds alone cuts the batches.
    max_llm_tokens: int | None = None
    # Text normaliser before scoring: lowercase, strip punctuation; CER instead of WER for languages written
    # without spaces (auto: decided per utterance by the script of the reference).
    metric: str = "auto"  # auto | wer | cer
    # CTC-guided decoding (models.ctc_guidance): weight w of the CTC head's score against the LLM's, 0 = off;
    # None = AUTO_CTC_WEIGHT for a model with a CTC head (with a non-"llm" CTC vocabulary: when num_beams > 1).
    ctc_weight: float | None = None
    # An n-gram (3 to models.decode_guards.MAX_NGRAM tokens) repeated back to back more than this many times ends
    # the hypothesis (counted as a truncation), one of 1 or 2 tokens repeated 2 x (this + 1) times; 0 = no stop.
    repeat_limit: int = 4
    # Long audio (llmasr.data.long_audio): an utterance longer than this many seconds is decoded in windows cut at
    # low-energy points, their texts joined. None: the longest audio the model was trained on (its longest training
    # utterance within data.batching.max_duration, which `llmasr export` records); 0: never split.
    max_window_seconds: float | None = None
    window_overlap: float = 1.0  # seconds two windows share where no pause lets them meet
    # A pause at least this long ends a window before the limit (one sentence a window, as a VAD would cut it);
    # 0: windows fill up to the limit, cut at their longest pause.
    window_split_pause: float = 0.2
    # A FunASR FSMN VAD directory (fsmn-vad: llmasr.models.fsmn_vad): long audio is cut at the speech segments it
    # finds, what lies between them is not decoded, and a segment longer than the window limit is cut further as
    # above. None: cuts come from frame energies alone.
    vad: str | None = path_field(None)
    # The silence (ms) that ends a VAD segment (FunASR's max_end_silence_time); None: FunASR's offline schedule
    # (2 s at the start of a recording, shorter after long unbroken speech).
    vad_max_end_silence_ms: int | None = None
    # With a VAD: an utterance of any length in which it finds no speech gets an empty transcript (an LLM decoding
    # noise or silence writes words); false: only long audio meets the VAD.
    vad_gate: bool = True
    # With a VAD: consecutive speech segments are joined into one window while it spans at most this many seconds
    # (and the window limit), the pauses between them decoded too (FunASR's merge_vad with merge_length_s, as
    # SenseVoice is run); 0: a window a segment.
    vad_merge_seconds: float = 0.0
    # With a CTC head: an utterance (or long-audio window) whose CTC greedy best path is empty, the head hearing no
    # word in it, gets an empty transcript and is not searched (the LLM writes words into silence and noise that the
    # head, trained to emit blank there, does not); needs no VAD. Off by default: a CTC head trained less than the LLM
    # can miss a short word the LLM gets right (wer.txt counts the utterances it would empty, with their errors).
    ctc_gate: bool = False
    # Hotword boosting in the search (models.hotword_boost): score per token of an utterance's biasing phrase that
    # the hypothesis completes (per character of a phrase in a script written without spaces); 0 = the list is only
    # in the prompt; None = AUTO_HOTWORD_BOOST when the search is CTC prefix-guided (the audio then keeps a boosted
    # phrase out unless it is heard), else 0.
    hotword_boost: float | None = None
    # Word timestamps (models.ctc_align): the transcript force-aligned to the CTC head's frames, per word (or
    # character of a script without spaces); needs a CTC head.
    timestamps: bool = False
    # Each transcript's log-probability under the LLM, from its raw logits (models.confidence): `avg_logprob` per token
    # and `logprob` in results.jsonl. One more forward of each batch after the search.
    confidence: bool = False
    # Start each utterance (and window) where its speech starts, after a leading pause, as long-audio windows after a
    # pause start (data.long_audio.speech_start): a model trained on clips that start with their speech inserts
    # words into silence before it.
    trim_leading_silence: bool = True

    def validate(self, path: str) -> None:
        self.validate_search(path)
        if self.metric not in METRICS:
            raise ConfigError(f"{path}.metric: one of {', '.join(METRICS)}; got {self.metric!r}")
        if not 0.0 < self.batch_seconds < math.inf:
            raise ConfigError(f"{path}.batch_seconds: must be > 0 seconds of audio a batch, got {self.batch_seconds}")
        if self.max_llm_tokens is not None and self.max_llm_tokens < 1:
            raise ConfigError(f"{path}.max_llm_tokens: must be >= 1 (or unset: no budget), got {self.max_llm_tokens}")
        if not 0.0 <= self.window_overlap < math.inf:
            raise ConfigError(f"{path}.window_overlap: must be a number of seconds >= 0, got {self.window_overlap}")
        if not 0.0 <= self.window_split_pause < math.inf:
            raise ConfigError(
                f"{path}.window_split_pause: must be seconds >= 0 (0: off), got {self.window_split_pause}"
            )
        if self.max_window_seconds is not None:
            self.window_seconds(None, path)
        if self.vad is not None and not (Path(self.vad) / "config.yaml").is_file():
            raise ConfigError(f"{path}.vad: {self.vad} is not a FunASR VAD directory (no config.yaml there)")
        if self.vad_max_end_silence_ms is not None and not 0 < self.vad_max_end_silence_ms < math.inf:
            raise ConfigError(
                f"{path}.vad_max_end_silence_ms: must be > 0 ms (unset: FunASR's schedule), got "
                f"{self.vad_max_end_silence_ms}"
            )
        if not 0.0 <= self.vad_merge_seconds < math.inf:
            raise ConfigError(
                f"{path}.vad_merge_seconds: must be seconds >= 0 (0: a window a segment), got {self.vad_merge_seconds}"
            )

    def validate_search(self, path: str = "decode") -> None:
        """The checks of the settings the search itself reads (SpeechLLM.transcribe makes them, so that a
        DecodeConfig built in Python is held to a recipe's rules): ConfigError naming the field under `path`."""
        hints = _field_types()
        for name in SEARCH_FIELDS:  # types first, as a recipe's: num_beams="4" had been a '<' TypeError
            setattr(self, name, coerce(getattr(self, name), hints[name], f"{path}.{name}"))
        if self.num_beams < 1:
            raise ConfigError(f"{path}.num_beams: must be >= 1, got {self.num_beams}")
        if self.ctc_weight is not None and not 0.0 <= self.ctc_weight <= 1.0:
            raise ConfigError(f"{path}.ctc_weight: must be in [0, 1] (or unset for the default), got {self.ctc_weight}")
        if self.repeat_limit < 0:
            raise ConfigError(f"{path}.repeat_limit: must be >= 0 (0: off), got {self.repeat_limit}")
        if self.max_new_tokens == 0:  # the flag's spelling of the cap by duration, read alike in a recipe (null)
            self.max_new_tokens = None
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(
                f"{path}.max_new_tokens: must be >= 1, or 0 for the cap by duration (tokens_per_second x seconds + 8), "
                f"got {self.max_new_tokens}"
            )
        if not 0.0 < self.repetition_penalty < math.inf:
            raise ConfigError(f"{path}.repetition_penalty: must be > 0 (1: off), got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ConfigError(f"{path}.no_repeat_ngram_size: must be >= 0 (0: off), got {self.no_repeat_ngram_size}")
        if not 0.0 < self.tokens_per_second < math.inf:
            raise ConfigError(f"{path}.tokens_per_second: must be a number > 0, got {self.tokens_per_second}")
        if self.hotword_boost is not None and not 0.0 <= self.hotword_boost < math.inf:
            raise ConfigError(
                f"{path}.hotword_boost: must be >= 0 (0: off; unset: the default), got {self.hotword_boost}"
            )

    def window_seconds(self, training_max: float | None, path: str = "decode") -> float:
        """The longest audio decoded in one piece (0.0: no limit): max_window_seconds, else `training_max`, the
        longest audio the model was trained on (None: unknown, no limit), raised to the shortest window that
        works (MIN_WINDOW_SECONDS, three overlaps). ConfigError when a set limit could not make windows advance."""
        limit = self.max_window_seconds
        if limit is None:
            if training_max is None or training_max == math.inf:
                return 0.0
            return max(float(training_max), MIN_WINDOW_SECONDS, 3 * self.window_overlap)
        if limit == 0 or limit == math.inf:
            return 0.0
        if not limit > 0:
            raise ConfigError(f"{path}.max_window_seconds: must be > 0 seconds (0: never split), got {limit}")
        if limit < MIN_WINDOW_SECONDS or limit <= 2 * self.window_overlap:
            # no value beside an overlap of 0: `llmasr decode` checks its flags before the model's own overlap is
            # known, with 0 in its place, and "(0 s)" named an overlap the decode would not have used
            overlap = f" ({self.window_overlap:g} s)" if self.window_overlap else ""
            raise ConfigError(
                f"{path}.max_window_seconds: a window of {limit:g} s must be at least {MIN_WINDOW_SECONDS:g} s and "
                f"longer than twice {path}.window_overlap{overlap}"
            )
        return float(limit)

    def new_token_cap(self, seconds: float) -> int:
        """The most tokens the search writes for `seconds` of audio (its end token not counted): max_new_tokens, else
        tokens_per_second x seconds + 8, so that a model that loops stops at a length tied to its audio."""
        if self.max_new_tokens is not None:
            return int(self.max_new_tokens)
        return int(math.ceil(float(seconds) * self.tokens_per_second)) + 8

    def guidance(self, has_ctc_head: bool, llm_vocab: bool) -> float:
        """The CTC weight this configuration decodes a model with: the set value, else AUTO_CTC_WEIGHT when the
        model has a CTC head that can guide this search (n-best rescoring needs num_beams > 1), else 0.
        ConfigError when a weight > 0 is asked of a model that cannot take it."""
        if self.ctc_weight is None:
            return AUTO_CTC_WEIGHT if has_ctc_head and (llm_vocab or self.num_beams > 1) else 0.0
        if self.ctc_weight > 0 and not has_ctc_head:
            raise ConfigError(
                f"decode.ctc_weight {self.ctc_weight}: CTC-guided decoding needs a CTC head, and this model has none "
                "(trained with model.ctc.weight 0); set ctc_weight 0"
            )
        if self.ctc_weight > 0 and not llm_vocab and self.num_beams < 2:
            raise ConfigError(
                f"decode.ctc_weight {self.ctc_weight}: the model's CTC vocabulary is not the LLM's, so CTC guidance "
                "rescores the LLM's n-best list; set num_beams >= 2 (got 1; --beam 2 on the command line, "
                "Transcriber num_beams=2), or ctc_weight 0 (--ctc-weight 0)"
            )
        return float(self.ctc_weight)

    def gate(self, has_ctc_head: bool) -> bool:
        """Whether this configuration gates rows by the CTC head's best path (ctc_gate); ConfigError when it is asked
        of a model without a head."""
        if self.ctc_gate and not has_ctc_head:
            raise ConfigError(
                "decode.ctc_gate: the gate reads the CTC head's best path, and this model has none (trained with "
                "model.ctc.weight 0); decode without the gate (no --ctc-gate; ctc_gate false), or gate silence out "
                "with a VAD (--vad DIR; decode.vad)"
            )
        return bool(self.ctc_gate)

    def boost(self, weight: float, llm_vocab: bool) -> float:
        """The hotword boost this configuration decodes with, under CTC weight `weight`: the set value, else
        AUTO_HOTWORD_BOOST when the search is CTC prefix-guided, else 0 (an LLM alone, boosted, writes listed
        phrases the audio does not hold)."""
        if self.hotword_boost is not None:
            return float(self.hotword_boost)
        return AUTO_HOTWORD_BOOST if weight > 0 and llm_vocab else 0.0

    def mode(self, weight: float, llm_vocab: bool = True) -> str:
        """A short name of the search this configuration runs with CTC weight `weight`."""
        name = "greedy" if self.num_beams == 1 else f"beam {self.num_beams}"
        if weight > 0:
            how = "CTC prefix scoring" if llm_vocab else "CTC n-best rescoring"
            name += f" + {how} (ctc_weight {weight:g})"
        return name

    def greedy(self, llm_vocab: bool = True, **changes) -> DecodeConfig:
        """This configuration as validation decodes: greedy search with neither repetition penalty nor n-gram
        blocking (their defaults) nor timestamps nor confidence; length cap and metric as set here; `changes` on top.
        Without `llm_vocab` (a CTC head over its own vocabulary) also unguided: its guidance rescores a beam's n-best,
        and a greedy search has none."""
        plain = {"num_beams": 1, "repetition_penalty": DecodeConfig.repetition_penalty, "timestamps": False}
        plain["confidence"] = False
        plain["no_repeat_ngram_size"] = DecodeConfig.no_repeat_ngram_size
        if not llm_vocab and self.ctc_weight:
            plain["ctc_weight"] = 0.0
        return dataclasses.replace(self, **{**plain, **changes})

    def generation(self) -> dict:
        """The keyword arguments of the LLM's generate that this configuration sets. The repetition penalty is 1 (off,
        over an LLM generation_config's): SpeechLLM applies this configuration's as a logits processor of its own."""
        return {
            "num_beams": int(self.num_beams),
            "repetition_penalty": 1.0,
            "no_repeat_ngram_size": int(self.no_repeat_ngram_size),
        }


@functools.cache
def _field_types() -> dict:
    """DecodeConfig's field types, resolved once (validate_search runs at every transcribe call)."""
    return typing.get_type_hints(DecodeConfig)


def setting_names() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(DecodeConfig))


def unknown_setting(key: str, where: str, known, what: str = "") -> str:
    """The one wording of a setting no caller takes (`what`: what it is not), with the known one nearest it."""
    return f"{where}: unknown setting {key!r}{what}{errors.nearest_hint(key, known)}"


def settings_over(cfg: DecodeConfig, given: dict, path: str = "decode", *, none_keeps: bool) -> DecodeConfig:
    """`cfg` with the DecodeConfig fields `given` put in place, each value's type checked as a recipe's (from_dict:
    ConfigError naming the field under `path`). What None means is the caller's: `none_keeps`, cfg's value stays
    (a flag not given, a Transcriber.load setting left out: decode_config); else it is set (transcribe(batch,
    max_new_tokens=None): the cap by duration over a config with a cap: search_config)."""
    put = {k: v for k, v in given.items() if v is not None or not none_keeps}
    if not put:
        return cfg
    return from_dict(DecodeConfig, {**{k: getattr(cfg, k) for k in setting_names()}, **put}, path)


def decode_config(saved: DecodeConfig, path: str = "decode", **given) -> DecodeConfig:
    """`saved` with every `given` value that is not None put in its place (settings_over). An unknown name is a
    TypeError, with the field nearest it. max_new_tokens given as 0 unsets a saved cap (the cap by duration again, as a
    recipe's 0 is: validate_search): None means "keep the saved value" here, so a flag or a Transcriber.load setting
    has no other way to say it."""
    refuse_unknown(given, "decode_config")
    return settings_over(saved, given, path, none_keeps=True)


def refuse_unknown(given, where: str) -> None:
    """TypeError naming each of `given` that is no DecodeConfig field, as Python names an unknown keyword."""
    if unknown := sorted(set(given) - setting_names()):
        raise TypeError("; ".join(unknown_setting(k, where, setting_names()) for k in unknown))


def search_config(cfg: DecodeConfig | dict | None, settings: dict) -> tuple[DecodeConfig, dict]:
    """What a search called from Python runs under (SpeechLLM.transcribe, generate): `cfg` (a DecodeConfig, a dict of
    its keys, or None: the defaults) with the DecodeConfig fields among `settings` put over it (transcribe(batch,
    num_beams=4) as generate takes them; they had reached the LLM's generate twice), None included (settings_over),
    and the other settings, which go to the LLM's generate. The search's own checks (validate_search) follow in
    SpeechLLM."""
    if isinstance(cfg, dict):
        cfg = from_dict(DecodeConfig, cfg, "decode")
    elif cfg is None:
        cfg = DecodeConfig()
    elif not isinstance(cfg, DecodeConfig):
        raise ConfigError(f"decode: expected a DecodeConfig or a dict of its keys, got {cfg!r:.80}")
    names = setting_names()
    ours = {k: v for k, v in settings.items() if k in names}
    return settings_over(cfg, ours, none_keeps=False), {k: v for k, v in settings.items() if k not in names}


@dataclass
class Transcripts:
    """One batch's hypotheses, in batch row order: the LLM's, and the CTC head's greedy best path over the same
    encoder output (None when the model has no CTC head)."""

    llm: list[str]
    ctc: list[str] | None = None
    # Per utterance: which guard ended its LLM hypothesis (decode_guards.MAX_TOKENS / REPETITION) or None.
    truncated: list[str | None] | None = None
    mode: str = ""  # DecodeConfig.mode of the search that made `llm`
    # With DecodeConfig.timestamps: per utterance, the (unit, start s, end s) of `llm`'s units, or None where the
    # CTC alignment could not spell or fit them.
    timestamps: list | None = None
    # With DecodeConfig.confidence: per utterance, its models.confidence.Confidence (the LLM's log-probability of it),
    # None where the CTC gate left it empty
    confidence: list | None = None
    # With DecodeConfig.ctc_gate: per utterance, True where the gate emptied it (the CTC head heard no word)
    no_speech: list[bool] | None = None
