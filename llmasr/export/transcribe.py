"""Transcribing audio from Python: files or waveforms in, texts out.

    from llmasr.export.transcribe import Transcriber

    asr = Transcriber.load("exp/run/export")               # or Transcriber.load(checkpoint="exp/run")
    asr("call.wav")                                         # -> "the text"
    asr(["a.wav", "b.flac"], hotwords=["Zhang Wei"])        # -> ["...", "..."]
    asr(wave, sample_rate=8000)                             # a numpy / torch waveform (mono; float or PCM integers)
    asr.transcripts(["a.wav"])                              # rows with the CTC branch's text, guard stops, windows

The audio goes through exactly what `llmasr decode` runs (llmasr.export.decode): a manifest of its own without
transcripts, the evaluation loader with the model's frontend and prompt, long audio cut into windows, the model's
saved decoding settings (CTC guidance, hotword boost, length and repetition guards) with any given on top. A file
that cannot be read, or a waveform that is not one, is an error naming it, not a missing text.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from llmasr.config_io import ConfigError
from llmasr.data.hotwords import warn_weighted
from llmasr.data.records import phrase_list, phrase_text
from llmasr.export.decode import (
    DecodeOptions,
    decode_loader,
    load_decode_model,
    search_boost,
    transcribe_loader,
    unguided_boost,
)
from llmasr.export.decode_options import PROGRESS_EVERY_S, Pace
from llmasr.export.transcribe_clips import (
    PATHS,
    TranscribeError,
    check_rate,
    clip_problems,
    clips_manifest,
    not_audio,
)
from llmasr.export.transcribe_rows import ClipRows, Decoded, clip_row
from llmasr.models.decoding import DecodeConfig, decode_config, refuse_unknown
from llmasr.models.devices import usable_device
from llmasr.models.sensevoice import asked_language
from llmasr.models.shipped_generation import say_shipped_settings

log = logging.getLogger(__name__)
# what a call takes for its clips (__call__, transcripts), and load's **decode does not
PER_CALL = frozenset(("task", "language", "hotwords", "sample_rate"))


class Transcriber:
    """A speech LLM loaded once, with its decoding settings, transcribing audio files or waveforms."""

    def __init__(self, model, cfg: DecodeConfig, opts: DecodeOptions | None = None, device="cpu"):
        self.model, self.cfg, self.device = model.eval(), cfg, device
        # a clip that cannot be read is named by its path in the error or its row, not logged by the line of the
        # temporary manifest it stood on
        self.opts = dataclasses.replace(
            opts or DecodeOptions(), num_workers=0, max_bad_fraction=1.0, log_bad_lines=False
        )
        search_boost(model, cfg, self.opts)  # settings this model cannot decode with fail here, not at the first clip
        if unsafe := unguided_boost(model, cfg):
            log.warning("%s", unsafe)
        say_shipped_settings(model.llm, cfg)
        self.source = None  # the directory `load` read, for the repr

    def __repr__(self) -> str:
        """What a notebook shows: the model's folder, the device, the search and the settings off their defaults."""
        model, default = self.model, DecodeConfig()
        search = self.cfg.mode(
            self.cfg.guidance(model.ctc_head is not None, model.ctc_on_llm_vocab), model.ctc_on_llm_vocab
        )
        changed = [f"{f.name}={getattr(self.cfg, f.name)!r}" for f in dataclasses.fields(DecodeConfig)
                   if getattr(self.cfg, f.name) != getattr(default, f.name)]  # fmt: skip
        shown = [repr(self.source), f"device={str(self.device)!r}", f"search={search!r}", *changed]
        return f"Transcriber({', '.join(shown)})"

    @classmethod
    def load(
        cls,
        model_dir=None,
        *,
        checkpoint=None,
        tag=None,
        device="cpu",
        dtype=None,
        trust_remote_code=False,
        base_llm=None,
        **decode,
    ) -> Transcriber:
        """From an exported model directory (or a training checkpoint), on `device`; `decode`: DecodeConfig
        fields to override the model's saved settings (num_beams=4, ctc_weight=0.5, ...; max_new_tokens=0 unsets a
        saved cap: the cap by duration). `base_llm`: the folder of
        an adapter export's base LLM where it is not where the export's description says (a copy on this machine)."""
        if per_call := sorted(set(decode) & PER_CALL):  # README's `Transcriber` `task=`: not a decode: setting
            raise TypeError(
                f"Transcriber.load: {', '.join(per_call)} is given to each call, not to load: "
                f"asr(audio, {per_call[0]}=...) or asr.transcripts([...], {per_call[0]}=...)"
            )
        refuse_unknown(decode, "Transcriber.load")  # before the model loads: a typo is no reason to wait for it
        if (model_dir is None) == (checkpoint is None):  # one source: neither had failed on None, both used one
            raise TranscribeError(
                "Transcriber.load: give one model, an exported model directory (the first argument) or a training "
                f"checkpoint (checkpoint=RUN_DIR); got {'both' if model_dir is not None else 'neither'}"
            )
        try:
            device = usable_device(device)
        except ValueError as err:
            raise TranscribeError(str(err)) from None
        with torch.random.fork_rng(devices=[]):  # the caller's random stream as found: building draws weights
            model, saved, opts = load_decode_model(  # that the files then replace
                model_dir, checkpoint, tag=tag, dtype=dtype, trust_remote_code=trust_remote_code, base_llm=base_llm
            )
        asr = cls(model.to(device), decode_config(saved, **decode), opts, device)
        asr.source = os.fspath(model_dir if model_dir is not None else checkpoint)
        return asr

    def __call__(
        self, audio, *, sample_rate: int | None = None, hotwords: list[str] | None = None, task: str | None = None,
        language: str | None = None,
    ):  # fmt: skip
        """The text of one clip (a path or a waveform), or the texts of a list of them, in order."""
        single = not isinstance(audio, (list, tuple))
        rows = self.transcripts([audio] if single else audio, sample_rate, hotwords, task=task, language=language)
        texts = [row["hyp"] for row in rows]
        return texts[0] if single else texts

    def transcripts(
        self, audio: list, sample_rate: int | None = None, hotwords: list[str] | None = None, *, keep_going=False,
        task: str | None = None, language: str | None = None, on_row=None,
    ) -> list:  # fmt: skip
        """Per clip, in order: {"audio" (the path, or "waveform i"), "hyp", "ctc_hyp" (the CTC branch's greedy
        text, None without a head), "truncated" (the guard that ended it, or None), "windows", "duration", decoded in
        windows "window_texts" ([{"start", "end", "hyp", "truncated", "ctc_gated", "cut_in_speech"}] a window, as
        results.jsonl's), with decode.timestamps "timestamps" ([word, start s, end s] each, or None), with
        decode.confidence "avg_logprob" and "logprob" (the LLM's log-probability of "hyp", per token and summed; None
        where no text was written) and, decoded in windows, "window_confidence" ([{"start", "end", "avg_logprob"}] a
        window), and "no_speech" (True) where a gate found none: the VAD's (decode.vad) or the CTC head's
        (decode.ctc_gate)}. One clip (a path or a waveform) is taken as a list of one. A clip that cannot be read
        raises TranscribeError naming it, or with `keep_going` gets the row {"audio", "error": why} while the others
        are transcribed. `task`: the prompt's task text for every clip instead of the model's (model.prompt.task),
        as a manifest line's own `prompt` is decoded: the one a model trained on lines with prompts of their own
        ("语音转写：") was given. `language`: every clip's language ("zh", "en", "Japanese", "<|ko|>"; None or "auto":
        none), the query a SenseVoice encoder with queries.language per_line gets, as a manifest line's `lang` is
        decoded. `on_row(position, row)`: called with each clip's row as soon as it and every clip before it are
        done (the shortest clips are decoded first), so a caller can print each; a call stopped by an error or
        Ctrl-C first gives it the rows it finished and held back, in order; an on_row that raises stops the call
        and is not called again."""
        if not isinstance(audio, (list, tuple)):  # a path's letters or a waveform's samples are no list of clips
            audio = [audio]
        if not audio:
            return []
        if isinstance(hotwords, (str, bytes)):  # list("Zhang Wei") would bias towards its letters
            words = hotwords.split()
            # FunASR's generate(hotword="魔搭 达摩院") is two phrases: which was meant, only the caller knows
            both = (f" for one phrase with a space, or {words} for {len(words)} phrases (FunASR's "
                    "generate(hotword=...) splits its text at spaces)") if len(words) > 1 else ""  # fmt: skip
            raise TranscribeError(f"hotwords: a list of phrases, got the text {hotwords!r}; pass [{hotwords!r}]{both}")
        if isinstance(hotwords, Mapping):  # FunASR-runtime's phrase -> weight: its keys alone drop the weights unsaid
            raise TranscribeError(
                f"hotwords: a list of phrases, got a {type(hotwords).__name__} {hotwords!r:.60}; llmasr weighs every "
                "phrase alike (hotword_boost sets the weight): pass list(hotwords) for its phrases"
            )
        if hotwords is not None:
            try:  # a generator had been used up by the check below, and the clips transcribed with no list, unsaid
                hotwords = list(hotwords)
            except TypeError:
                raise TranscribeError(
                    f"hotwords: a list of phrases, got {type(hotwords).__name__} {hotwords!r:.60}"
                ) from None
        for i, phrase in enumerate(hotwords or ()):  # named here, not as a fault of every clip
            if not isinstance(phrase, str) or not phrase_text(phrase):
                raise TranscribeError(f"hotwords[{i}]: expected a non-empty phrase (text), got {phrase!r}")
        hotwords = None if hotwords is None else phrase_list(hotwords)  # as a manifest's or a file's are
        if hotwords:  # a FunASR-runtime file's lines read into a list: "阿里巴巴 20"
            warn_weighted([f"[{i}] {p!r}" for i, p in enumerate(hotwords)], hotwords, "hotwords")
        kept, dropped = self.model.prompt.capped_hotwords(hotwords)
        if dropped:  # as decode's wer.txt counts them: the prompt renders only what fits the model's cap
            log.warning(
                "hotwords: the model's prompt takes %d tokens of phrases (model.prompt.hotwords_max_tokens): %d of "
                "the %d given are dropped, the longest first; kept %s", self.model.prompt.hotwords_max_tokens,
                dropped, len(hotwords), kept,
            )  # fmt: skip
        # the call's task and language reach every clip as decode's --task and --language reach a line
        try:  # DecodeOptions refuses a blank task
            opts = dataclasses.replace(
                self.opts, hotwords=hotwords, task=task, language=_language(self.model, language)
            )
        except ConfigError as err:
            raise TranscribeError(str(err)) from None
        check_rate(sample_rate)
        waves = [i for i, c in enumerate(audio) if not isinstance(c, PATHS) and not not_audio(c)]
        if sample_rate is None and waves:  # the call's fault, not a clip's (a clip of neither kind is named as such)
            raise TranscribeError(f"waveform {waves[0]}: a waveform needs its sample_rate (Hz)")
        with tempfile.TemporaryDirectory(prefix="llmasr-transcribe-") as tmp:
            names, manifest, bad, links = clips_manifest(list(audio), sample_rate, Path(tmp))
            if bad and not keep_going:  # a missing file or a bad waveform, named before anything is decoded
                raise TranscribeError(clip_problems(bad, names))
            out = ClipRows(names, on_row)
            for i, why in bad.items():
                out.error(i, why)
            try:
                if len(bad) < len(names):
                    self._decode(manifest, opts, names, links, out, keep_going)
            except BaseException:  # a stop (Ctrl-C, SIGTERM) or a batch the model fails on: finished rows first
                out.held()
                raise
        return out.all()

    def _decode(self, manifest, opts, names: list[str], links: dict[int, str], out: ClipRows, keep_going) -> None:
        """transcripts' decoding of the clips `manifest` lists, each clip's row added to `out` once it is done."""
        loader = decode_loader(self.model, manifest, self.cfg, opts, self.device)  # the list: every clip's
        positions = [i for i in range(len(names)) if i not in out.rows]  # the manifest's lines
        decoded, failed = Decoded(loader.dataset.manifest, positions, self.cfg.window_overlap), {}

        def each(items, new):
            for b in loader.bad_data.examples:  # the loader keeps every one; a clip read through a link is named
                i = int(b["key"])  # as given, not by the link the loader read
                failed[i] = b["reason"].replace(links[i], names[i]) if i in links else b["reason"]
            for i, row in decoded.done(items, new, failed if keep_going else ()):
                if row is None:
                    out.error(i, failed[i])
                else:
                    out.add(i, clip_row(names[i], row))

        pace = Pace(f"{len(positions)} clips", PROGRESS_EVERY_S, len(loader))  # INFO: logging's say
        transcribe_loader(self.model, loader, self.cfg, self.device, name=lambda _, k: names[int(k)], progress=pace,
                          each=each)  # fmt: skip
        each({}, [])  # the bad lines the loader counts at its end
        if failed and not keep_going:
            raise TranscribeError(
                f"cannot transcribe {len(failed)} of {len(names)} clips: {clip_problems(failed, names)}"
            )


def _language(model, language) -> str | None:
    """`language` as the clips' query (None for "auto"), TranscribeError where the model cannot take it."""
    try:
        return asked_language(model, language)
    except ValueError as err:
        raise TranscribeError(str(err)) from None
