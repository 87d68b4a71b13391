"""Manifest records: `Utterance`, `BadRecord`, and the parser of the FunASR jsonl and Fun-ASR-Nano ChatML formats
(lhotse cuts: llmasr.data.lhotse_cut; a line by its format: llmasr.data.record_line).

FunASR jsonl, one JSON object a line:
    {"key": "utt1", "source": "wav/utt1.wav", "target": "hello world",
     "source_len": 312, "target_len": 2, "prompt": "...", "lang": "en"}
  required: key (str), source (str: audio path, relative paths resolve against the manifest's folder),
            target (non-empty str; decoding takes a line without one, or with null, as audio to transcribe).
  optional: duration (seconds), source_len, target_len (int), prompt or task (str: task prompt override),
            lang / language / text_language (str), channel (int), start / end (seconds into the file),
            hotwords (list of non-empty strings: the utterance's biasing phrases; [] says "none"), system (str:
            the line's own system message, as a ChatML line's; pseudo-labels of one write it so). prompt and
            task that disagree are a bad line, and so are two language fields that name two languages.
  `source_len` follows FunASR's scp2jsonl convention: the number of 10 ms frames of the 16 kHz waveform
  (int(num_samples_16k * 1000 / 16000 / 10)), so a record without `duration` gets duration = source_len / 100 s.
  `duration` wins when both are present. Neither is required: fill_durations() probes file headers. A `duration`
  beside `end` must agree with end - start (llmasr.data.stated_duration); what batching budgets, the audio loaded
  must bear out (llmasr.data.dataset).

Fun-ASR-Nano ChatML jsonl (what FunASR's Nano fine-tuning reads, and its scp2jsonl writes), one turn a line:
    {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "语音转写：<|startofspeech|>!wav/utt1.wav<|endofspeech|>"},
                  {"role": "assistant", "content": "你好"}], "speech_length": 145, "text_length": 2}
  the audio is the path between the speech tags (the "!" dropped), the user text before it the line's task prompt,
  the assistant's content the target (decoding takes a line without one); `speech_length` counts 25 ms / 10 ms
  fbank frames (duration (n - 1) / 100 + 0.025 s), `text_length` is target_len; the key is the line's `key` or the
  audio file's name without its extension; the system message, when the line has one, replaces the recipe's
  (model.prompt.system) for that line, as FunASR's Nano dataset uses it. Several turns, text after the audio and
  audio URLs are bad records.

lhotse CutSet jsonl(.gz), one cut a line: llmasr.data.lhotse_cut reads it. A .gz manifest is decompressed once into
a cache folder ($LLMASR_CACHE_DIR/manifests or ~/.cache/llmasr/manifests: llmasr.data.gz_copies) so lines can be
read by offset.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from llmasr.data.languages import language_key
from llmasr.data.record_fields import missing_text
from llmasr.data.stated_duration import FUNASR_FRAMES_PER_SECOND, durations_disagree, nano_speech_seconds

SPEECH_TAGS = re.compile(r"<\|startofspeech\|>(.*?)<\|endofspeech\|>", re.S)  # Fun-ASR-Nano's audio in a message
ROLES = ("system", "user", "assistant")


class BadRecord(Exception):
    """One unusable manifest line: where it is, which utterance (if known) and why."""

    def __init__(self, manifest: str, line: int, reason: str, key: str | None = None):
        self.manifest = str(manifest)
        self.line = int(line)
        self.key = key
        self.reason = reason
        super().__init__(f"{self.manifest}:{self.line}: {reason}")

    def __str__(self) -> str:
        return f"{self.manifest}:{self.line}: {self.reason}"

    def __reduce__(self):
        return (BadRecord, (self.manifest, self.line, self.reason, self.key))


@dataclass
class Utterance:
    key: str
    source: str
    target: str | None  # None: no transcript (only where the manifest is opened for decoding)
    duration: float | None
    target_len: int | None
    prompt: str | None
    lang: str | None
    manifest: str
    line: int
    channel: int | None
    start: float = 0.0
    end: float | None = None
    hotwords: list[str] | None = None  # biasing phrases; None: the record has none (not even an empty list)
    system: str | None = None  # the line's own system message (ChatML, `system`); None: model.prompt.system


def phrase_text(text: str) -> str:
    """A biasing phrase as the prompt, the search's boost and scoring read it: its words joined by one space, composed
    (NFC). A tab, a no-break space or a run of spaces inside it (or a BOM, from files joined end to end) had reached
    the prompt as written, and the boost, which matches the phrase's own spelling, looked for it where no transcript
    writes it; a decomposed "Café" had been a second phrase beside the composed one, rendered twice."""
    return unicodedata.normalize("NFC", " ".join(text.replace("\ufeff", "").split()))


def phrase_list(phrases) -> list[str]:
    """A biasing list as it is rendered: each phrase as phrase_text reads it, a repeat left out (the prompt had
    listed it twice, its tokens spent again for nothing; scoring counts a phrase once)."""
    return list(dict.fromkeys(phrase_text(p) for p in phrases))


def given_hotwords(utt, default=None) -> list[str]:
    """A line's biasing list before the token cap where none is drawn: its own ([] included: it has none), else
    `default` (decoding's --hotwords list). The dataset renders it, and decoding's counts of its prompt read it."""
    own = getattr(utt, "hotwords", None)
    return [str(h) for h in own] if own is not None else [str(h) for h in default or ()]


def language_of(utt) -> str | None:
    """A line's language as results group it (llmasr.data.languages: a lhotse cut's "English", FunASR's "<|en|>" and
    a plain "en" are one language); None where the line gives none."""
    lang = getattr(utt, "lang", None)
    return None if lang is None else language_key(lang)


def task_of(utt, default: str | None = None) -> str | None:
    """A line's own task prompt, else `default` (decoding's --task), None where neither gives one or the line's is
    blank and there is no default (the recipe's task is then rendered)."""
    task = getattr(utt, "prompt", None)
    return task if isinstance(task, str) and task.strip() else default


def audio_reason(err, utt) -> str:
    """A bad line's reason for its audio (`err`: an llmasr.data.audio.AudioError for `utt`'s source): the one
    wording of every path that finds it (`llmasr data check`, training's start-up screen and its batches, decoding,
    CMVN), so a node's `llmasr data check` says what training's refusal said. A missing file says what its path may
    have meant."""
    return f"audio {err.path}: {err.reason}{missing_hint(utt.source, utt.manifest)}"


def missing_hint(source: str, manifest: str) -> str:
    """What a line of `manifest` whose audio file `source` (as resolved) is not there may have meant, or "": a path
    that begins or ends with a space (not seen in the message), or one written relative to the working directory, as
    FunASR opens it, which llmasr resolves against the manifest's folder (lhotse's cuts excepted: those are opened
    from the working directory). "" for a file that is there (unreadable, corrupt: no path to question)."""
    src, hint = str(source), ""
    if os.path.isfile(src):
        return hint
    base = str(Path(manifest).resolve().parent)
    written = src[len(base) + 1 :] if src.startswith(base + "/") else src
    if written != written.strip():
        hint += f" (the path as written, {written!r}, begins or ends with white space)"
    if written != src and os.path.isfile(written):
        hint += (
            f" ({written} is a file from the working directory, where FunASR looks; llmasr reads a relative path "
            f"from the manifest's folder, {base}: write the paths absolute, or relative to that folder)"
        )
    return hint


# ------------------------------------------------------------------------------------------------------ parsing


def is_number(v) -> bool:
    """Whether a JSON value is a finite number (a bool, NaN or infinity is none): what a manifest's numeric fields
    take, in every format's reader."""
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an integer past float range (a JSON 10**400)
        return False


def _plain(source: str) -> bool:
    """True when pathlib would write `source` back unchanged: no ~, no empty or "." parts, no trailing slash."""
    return (
        source[:1] not in ("~", "")
        and "//" not in source
        and "/./" not in source
        and not source.startswith("./")
        and not source.endswith(("/", "/."))
        and source != "."
    )


class LineParser:
    """The reader of one line's fields (`manifest`:`line`, relative audio paths against `base`): each refusal a
    BadRecord naming that line. Shared by every format of a manifest line (record_line) and the noise list."""

    def __init__(self, manifest: str, line: int, base: Path, need_target: bool = True):
        self.manifest, self.line, self.base, self.need_target = manifest, line, base, need_target
        self.key: str | None = None

    def bad(self, reason: str) -> BadRecord:
        return BadRecord(self.manifest, self.line, reason, self.key)

    def resolve(self, source: str, *, working_dir_first: bool = False) -> str:
        """The audio path: relative ones against the manifest's folder, or (`working_dir_first`: lhotse's cuts, which
        lhotse opens as written) against the working directory where the file is there."""
        if "\x00" in source:  # no file system takes it: os.stat raised a bare ValueError
            raise self.bad(f"audio path {source!r:.80} holds a NUL character")
        if "://" in source:
            raise self.bad(f"audio {source!r:.80} is a URL; llmasr reads local files: download it and name the file")
        if not working_dir_first and _plain(source):  # pathlib's parse costs more than the rest of a line's
            return source if source[0] == "/" else f"{str(self.base).rstrip('/')}/{source}"
        p = Path(os.path.expanduser(source))
        if p.is_absolute():
            return str(p)
        if working_dir_first and p.exists():
            return str(p.resolve())
        return str(self.base / p)

    def opt_str(self, rec: dict, *names: str, agree: bool = True) -> str | None:
        """The first of the field's spellings `names` the record gives. With `agree`, two of them with different
        texts ("prompt" and "task") are a bad line: the one read first had hidden the other without a word."""
        given = [(name, rec[name]) for name in names if rec.get(name) is not None]
        for name, v in given:
            if not isinstance(v, str):
                raise self.bad(f"field '{name}' must be a string, got {type(v).__name__} {v!r:.60}")
        if agree and len({v for _, v in given}) > 1:
            (first, a), (other, b) = given[0], next((n, v) for n, v in given if v != given[0][1])
            raise self.bad(f"fields '{first}' ({a!r:.40}) and '{other}' ({b!r:.40}) name one setting and disagree; "
                           "keep one")  # fmt: skip
        return given[0][1] if given else None

    def language(self, rec: dict) -> str | None:
        """The line's language label: `lang`, FunASR's `language` or SenseVoice's `text_language`. Two spellings of
        one language agree ("zh" and "<|zh|>"); two languages are a bad line, naming both fields: decoding would
        have grouped the line under whichever was read first, without a word. A blank one names none: the others
        are read ("lang": "" had hidden "language": "zh")."""
        label = self.opt_str(rec, "lang", "language", "text_language", agree=False)  # each field's type checked
        names = [n for n in ("lang", "language", "text_language") if language_key(rec.get(n) or "") is not None]
        other = next((n for n in names[1:] if language_key(rec[n]) != language_key(rec[names[0]])), None)
        if other is not None:
            raise self.bad(f"fields '{names[0]}' ({rec[names[0]]!r:.40}) and '{other}' ({rec[other]!r:.40}) name two "
                           "languages for one line; keep one")  # fmt: skip
        return rec[names[0]] if names else label

    def opt_num(self, rec: dict, name: str, *, integer: bool = False, minimum: float = 0.0) -> float | None:
        if name not in rec or rec[name] is None:
            return None
        v = rec[name]
        if not is_number(v) or (integer and isinstance(v, float) and not v.is_integer()):
            kind = "an integer" if integer else "a number"
            raise self.bad(f"field '{name}' must be {kind}, got {type(v).__name__} {v!r:.60}")
        if v < minimum:
            raise self.bad(f"field '{name}' must be >= {minimum:g}, got {v}")
        return v

    def hotwords(self, rec: dict, name: str = "hotwords") -> list[str] | None:
        """The record's biasing list: a JSON list of non-empty strings, else a bad line naming the field."""
        value = rec.get(name.rpartition(".")[2])
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.bad(f"field '{name}' must be a list of strings, got {type(value).__name__} {value!r:.60}")
        for i, phrase in enumerate(value):
            if not isinstance(phrase, str):
                raise self.bad(f"field '{name}'[{i}] must be a string, got {type(phrase).__name__} {phrase!r:.60}")
            if not phrase_text(phrase):
                raise self.bad(f"field '{name}'[{i}] is an empty phrase")
        return phrase_list(value)

    def target(self, value, name: str) -> str:
        if not isinstance(value, str):
            raise self.bad(f"field '{name}' is not text: got {type(value).__name__} {value!r:.60}")
        if not value.strip():
            raise self.bad(f"field '{name}' is empty")
        return value

    def optional_target(self, value, name: str) -> str | None:
        """The transcript; None where there is none and the manifest is read for decoding, where an empty one is
        an empty reference (a clip without speech: whatever is decoded counts as insertions), not a bad line."""
        if self.need_target:
            return self.target(value, name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None if value is None else ""
        return self.target(value, name)

    # FunASR jsonl ------------------------------------------------------------------------------------------
    def funasr(self, rec: dict) -> Utterance:
        if isinstance(rec.get("key"), str) and rec["key"]:
            self.key = rec["key"]  # named in every complaint below
        for name in ("key", "source", "target") if self.need_target else ("key", "source"):
            if name not in rec:
                raise self.bad(missing_text(rec, name, "a FunASR jsonl record needs key, source, target"))
        key = rec["key"]
        if not isinstance(key, str) or not key:
            raise self.bad(f"field 'key' must be a non-empty string, got {type(key).__name__} {key!r:.60}")
        source = rec["source"]
        if not isinstance(source, str) or not source.strip():
            raise self.bad(f"field 'source' must be an audio path (string), got {type(source).__name__} {source!r:.60}")
        target = self.optional_target(rec.get("target"), "target")
        given_start = self.opt_num(rec, "start")
        start = given_start or 0.0
        end = self.opt_num(rec, "end")
        if end is not None and end <= start:
            raise self.bad(f"'end' ({end}) must be after 'start' ({start})")
        duration = self.opt_num(rec, "duration")
        source_len = self.opt_num(rec, "source_len")
        if duration is not None and end is not None and durations_disagree(duration, end - start):
            raise self.bad(f"'duration' ({duration:g} s) contradicts 'end' - 'start' ({end:g} - {start:g} = "
                           f"{end - start:g} s); batching would budget the one, loading read the other")  # fmt: skip
        if duration is None and end is not None:
            duration = end - start
        if duration is None and source_len is not None and source_len > 0:  # the file's frames: what start leaves
            duration = source_len / FUNASR_FRAMES_PER_SECOND - start
            if duration <= 0:
                raise self.bad(f"'start' ({start}) is at or past the audio's end (source_len {source_len:g} frames)")
        elif end is None and given_start is not None and duration is not None:
            # a segment: `duration` seconds from `start` (0 included: a recording's first segment), not the rest of
            # the file; without `start`, `duration` is the whole file's
            end = start + duration
        target_len = self.opt_num(rec, "target_len", integer=True)
        channel = self.opt_num(rec, "channel", integer=True)
        return Utterance(
            key=key,
            source=self.resolve(source),
            target=target,
            duration=float(duration) if duration is not None else None,
            target_len=int(target_len) if target_len is not None else None,
            prompt=self.opt_str(rec, "prompt", "task"),
            lang=self.language(rec),
            manifest=self.manifest,
            line=self.line,
            channel=int(channel) if channel is not None else None,
            start=float(start),
            end=float(end) if end is not None else None,
            hotwords=self.hotwords(rec),
            system=self.opt_str(rec, "system"),  # a ChatML line's system message, kept when one is written as this
        )

    # Fun-ASR-Nano ChatML jsonl ------------------------------------------------------------------------------
    def messages(self, rec: dict) -> dict[str, str]:
        """{role: content} of the line's one turn."""
        msgs = rec["messages"]
        if not isinstance(msgs, list):
            raise self.bad(f"field 'messages' must be a list of {{role, content}} objects, got {type(msgs).__name__}")
        turn: dict[str, str] = {}
        for i, m in enumerate(msgs):
            role = m.get("role") if isinstance(m, dict) else None
            if role not in ROLES:
                raise self.bad(f"messages[{i}]: role {role!r}; expected one of {', '.join(ROLES)}")
            if not isinstance(m.get("content"), str):
                raise self.bad(f"messages[{i}] ({role}): content must be a string, got {m.get('content')!r:.60}")
            if role in turn:
                raise self.bad(f"messages[{i}]: a second {role!r} message; llmasr reads one turn a line (several "
                               "turns of one conversation go on lines of their own)")  # fmt: skip
            turn[role] = m["content"]
        return turn

    def chatml(self, rec: dict) -> Utterance:
        # FunASR's Nano data reads these as one-element lists too (it takes the first)
        rec = {k: v[0] if k in NANO_LISTED and isinstance(v, list) and len(v) == 1 else v for k, v in rec.items()}
        if isinstance(rec.get("key"), str) and rec["key"]:
            self.key = rec["key"]
        turn = self.messages(rec)
        user = turn.get("user")
        found = SPEECH_TAGS.findall(user or "")
        if len(found) != 1:
            raise self.bad(f"the user message must hold the audio once as <|startofspeech|>!PATH<|endofspeech|>; "
                           f"found {len(found)} in {user!r:.80}")  # fmt: skip
        task, _, after = SPEECH_TAGS.split(user, maxsplit=1)
        if after.strip():
            raise self.bad(f"text after <|endofspeech|> in the user message ({after.strip()!r:.60}): llmasr's prompt "
                           "is the task, then the audio")  # fmt: skip
        source = found[0].strip().removeprefix("!").strip()
        if not source:
            raise self.bad("the user message's <|startofspeech|>...<|endofspeech|> names no audio")
        self.key = self.key or Path(source).stem
        if "assistant" not in turn and self.need_target:
            raise self.bad("messages has no 'assistant' message (its content is the transcript)")
        duration = self.opt_num(rec, "duration")
        speech_length = self.opt_num(rec, "speech_length")
        if duration is None and speech_length is not None and speech_length >= 1:
            duration = nano_speech_seconds(speech_length)
        target_len = self.opt_num(rec, "text_length", integer=True)
        return Utterance(
            key=self.key,
            source=self.resolve(source),
            target=self.optional_target(turn.get("assistant"), "messages (assistant)"),
            duration=float(duration) if duration is not None else None,
            target_len=int(target_len) if target_len is not None else None,
            prompt=task if task.strip() else None,
            lang=self.language(rec),
            manifest=self.manifest,
            line=self.line,
            channel=None,
            hotwords=self.nano_hotwords(rec),
            system=turn.get("system"),
        )

    def nano_hotwords(self, rec: dict) -> list[str] | None:
        """A Nano line's biasing list as FunASR's Nano prompt reads it: `asr_hotwords` before `hotwords`, each a list
        or one text of phrases joined by commas ("" or [] for none)."""
        name = "asr_hotwords" if rec.get("asr_hotwords") not in (None, "", []) else "hotwords"
        value = rec.get(name)
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        return self.hotwords({name: value or None}, name) if value != [] else []


NANO_LISTED = ("key", "speech_length", "text_length")
