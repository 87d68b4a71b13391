"""Map-style speech dataset: one manifest item -> features, LLM token ids and CTC labels, or a `BadItem`.

`SpeechDataset[i]` returns either a dict for one utterance or a `BadItem` naming manifest:line and the reason
(missing/unreadable/corrupt/empty audio, empty or non-text transcript, malformed manifest line, wrong field type,
a transcript the CTC vocabulary cannot encode, audio too short for one feature frame). Bad items never raise in
the worker: the collator drops them and the main process accounts them (llmasr.data.bad_data).

Randomness (dither, augmentation, the hotword list) for a visit with key k comes from numpy
Generator([seed, epoch, k]) (its speed factor and pauses from llmasr.data.clip_lengths, a function of the same
three), so it does not depend on which worker loads the item, on the number of workers, or on where a resumed run
restarts. The key is the dataset index, except for the second and later visits a weighted mix pays to a line in
one epoch, which the sampler gives keys of their own (llmasr.data.visit_keys): `SpeechDataset[k]` reads the line
that key visits, with that visit's draws.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from torch.utils.data import Dataset

from llmasr.data.audio import AudioError, load_audio
from llmasr.data.augment import Augmenter
from llmasr.data.bad_data import BadItem
from llmasr.data.clip_lengths import draw_clip_lengths
from llmasr.data.features import FeatureExtractor, content_rng
from llmasr.data.frontend import FrontendConfig
from llmasr.data.long_audio import speech_runs, speech_start
from llmasr.data.records import BadRecord, audio_reason, given_hotwords, language_of, task_of
from llmasr.data.stated_duration import wrong_duration
from llmasr.data.visit_keys import dataset_index


def ctc_label_ids(tokenizer, target: str) -> np.ndarray | str:
    """The CTC label ids of `target` in `tokenizer`'s vocabulary, or why it has none a head can learn: the one rule
    for training items, the start-up screen and `llmasr data check` (llmasr.data.screen.spelling_check)."""
    try:
        ids = np.asarray(tokenizer.encode(target), dtype=np.int64)
    except (ValueError, KeyError) as err:
        return f"target not encodable by the CTC vocabulary: {err}"
    if ids.size == 0:
        return "target has no CTC tokens"
    vocab, blank = int(tokenizer.vocab_size), int(tokenizer.blank_id)
    out = (ids < 0) | (ids >= vocab) | (ids == blank)
    parts = getattr(tokenizer, "unknown_parts", None)
    unknown = [p for w in target.split() for p in parts(w)] if parts is not None and (ids == blank).any() else []
    if unknown:  # <unk> is this head's blank (SenseVoiceSmall's, id 0): name the text, not the id
        return (
            f"target has text the CTC vocabulary spells <unk>, which is the head's blank (id {blank}), so no CTC "
            f"label can stand for it: {', '.join(map(repr, dict.fromkeys(unknown)))}; write it with what the "
            "vocabulary has, or leave the line out"
        )
    if out.any():
        return (
            f"target has CTC ids outside the vocabulary (size {vocab}, blank {blank}): "
            f"{sorted(set(ids[out].tolist()))[:10]}"
        )
    return ids


class CTCRule:
    """The CTC rule of a vocabulary as the start-up screen and `llmasr data check` ask it: a transcript -> its label
    ids, or why it has none (ctc_label_ids); `unknown(transcript)`: what of it the vocabulary spells <unk>, each
    word asked once (the vocabularies spell a transcript word by word)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._parts = getattr(tokenizer, "unknown_parts", None)  # a stand-in vocabulary has none
        self._unknown: dict[str, list[str]] = {}

    def __call__(self, target: str) -> np.ndarray | str:
        return ctc_label_ids(self.tokenizer, target)

    def word_spelling(self):
        """How the vocabulary spells a transcript word by word (llmasr.models.ctc_vocab.WordSpelling), or None."""
        spelling = getattr(self.tokenizer, "word_spelling", None)  # a stand-in vocabulary has none
        return spelling() if spelling is not None else None

    def cased(self, part: str) -> str | None:
        """`part` (a character or word `unknown` found) in another case (lower, upper, capitalised) that the
        vocabulary spells without <unk>, or None: a vocabulary cased otherwise than the transcripts (a list of
        upper-case units, lower-case text) spells them all <unk>, which the warning then says."""
        if self._parts is None:
            return None
        for other in dict.fromkeys((part.lower(), part.upper(), part.capitalize())):
            if other != part and not self._parts(other) and not isinstance(self(other), str):
                return other
        return None

    def unknown(self, target: str) -> list[str]:
        parts = []
        for word in target.split():
            known = self._unknown.get(word)
            if known is None:
                known = self._unknown[word] = self._parts(word) if self._parts is not None else []
            parts += known
        return parts


class PromptEncoder(Protocol):
    """What the dataset asks of a prompt builder (llmasr.models.prompt.PromptBuilder is one, and the tests' and
    benchmarks' stand-ins): an utterance's LLM token ids, as an object with `ids`, `audio_pos`, `target_start`,
    `hotwords` and `hotwords_dropped`, and the id that pads them."""

    pad_id: int

    def encode(self, target: str | None, task: str | None = None, hotwords=None, system: str | None = None): ...


class SpeechDataset(Dataset):
    """Manifest item -> {key, feats [T, D] float32, target, text_ids, audio_pos, target_start, ctc_ids, duration};
    with `features_on="device"`, {wave, num_frames, feat_dim, spec_masks} stand for feats (see `_features`).

    `prompt_builder.encode(target, task)` gives the LLM token ids (task = the utterance's own `prompt`, if any);
    `ctc_tokenizer.encode(target)` the CTC labels (checked against its vocabulary). `max_duration_truncate`
    (seconds) cuts longer audio (the transcript is kept whole).

    Biasing lists (`hotwords`, the phrases rendered into the item's prompt, and `hotwords_dropped` by the token cap):
    a `hotword_sampler` (training, data.hotwords) picks each item's; without one, the manifest's list is used, else
    `default_hotwords` (decoding's --hotwords file: a line's own list, [] included, wins over it).

    Decoding's defaults for what a line may give itself: `default_task` (--task) is the task of a line without its
    own `prompt`, `default_language` (--language, a language key) the language query of a line without its own
    `lang`; the item's `lang` is that query, while decoding's scoring groups lines by their own `lang` alone.
    """

    def __init__(
        self,
        manifest,
        frontend: FrontendConfig,
        *,
        train: bool,
        augment=None,
        prompt_builder: PromptEncoder,
        ctc_tokenizer=None,
        seed: int = 0,
        max_duration_truncate: float | None = None,
        features_on: str = "worker",
        hotword_sampler=None,
        default_hotwords: list[str] | None = None,
        prompt_hotwords: bool = True,
        default_task: str | None = None,
        default_language: str | None = None,
        trim_leading_silence: bool = False,
        speech_runs: bool = False,
    ):
        self.manifest = manifest
        self.frontend = frontend
        self.train = bool(train)
        self.augment_cfg = augment
        self.prompt_builder = prompt_builder
        self.ctc_tokenizer = ctc_tokenizer
        self.seed = int(seed)
        self.max_duration_truncate = max_duration_truncate
        if features_on not in ("worker", "device"):
            raise ValueError(f"features_on must be 'worker' or 'device' (resolved), got {features_on!r}")
        self.features_on = features_on
        self.hotword_sampler = hotword_sampler
        self.default_hotwords = list(default_hotwords or [])
        # False: lists are chosen as usual (listed_hotwords) but no prompt renders them: the unbiased baseline
        # that decoding scores against the same lists.
        self.prompt_hotwords = bool(prompt_hotwords)
        self.default_task, self.default_language = default_task, default_language
        # decoding: an item's leading pause is cut (long_audio.speech_start); its `lead` says by how much
        self.trim_leading_silence = bool(trim_leading_silence)
        # word timestamps: where its speech runs, in the time the model hears it (ctc_align.sound_ends)
        self.speech_runs = bool(speech_runs)
        self.epoch = 0
        self._fx = None
        self._aug = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.manifest)

    # Built on first use, so that a dataset pickled into a spawned worker carries only its settings.
    @property
    def feature_extractor(self):
        if self._fx is None:
            self._fx = FeatureExtractor(self.frontend)
        return self._fx

    @property
    def augmenter(self):
        if self._aug is None and self.train and self.augment_cfg is not None:
            aug = Augmenter(self.augment_cfg, self.frontend)
            self._aug = aug if aug.enabled else False
        return self._aug or None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fx"] = None
        state["_aug"] = None
        return state

    def rng(self, visit: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(visit)])

    def __getitem__(self, visit: int):
        visit = int(visit)  # the draws' key (llmasr.data.visit_keys); the line is `index`
        index = dataset_index(visit, len(self.manifest))
        try:
            utt = self.manifest[index]
        except BadRecord as rec:
            return BadItem.from_record(rec, index)
        mf, line, key = str(getattr(utt, "manifest", "?")), int(getattr(utt, "line", -1)), utt.key

        def bad(reason: str) -> BadItem:
            return BadItem(manifest=mf, line=line, key=key, reason=reason, index=index)

        target = utt.target
        if target is not None or self.train:  # None: a line to transcribe (a manifest opened for decoding)
            if not isinstance(target, str):
                return bad(f"non-text target: {type(target).__name__} {target!r:.80}")
            if not target.strip() and self.train:
                return bad("empty target")
            target = target.strip()  # decoding: "" is an empty reference (scored: all insertions), nothing to encode
        spoken = target or None
        task = task_of(utt, self.default_task)
        try:
            hotwords = self._hotwords(utt, visit, spoken) if self.prompt_hotwords else []
            enc = self.prompt_builder.encode(spoken, task=task, hotwords=hotwords, system=getattr(utt, "system", None))
        except ValueError as err:  # PromptError: text the LLM tokenizer cannot take
            return bad(f"target or hotwords rejected by the prompt builder: {err}")
        ctc_ids = self.ctc_labels(spoken) if self.ctc_tokenizer is not None and spoken is not None else None
        if isinstance(ctc_ids, str):
            return bad(ctc_ids)

        wave = self._audio(utt)
        if isinstance(wave, str):
            return bad(wave)
        sr = int(self.frontend.sample_rate)
        duration, lead = wave.size / sr, 0
        wrong = self._stated_duration(utt, duration)
        if wrong:
            return bad(wrong)
        if self.trim_leading_silence:
            lead = speech_start(wave, sr)
            wave = wave[lead:]

        feats = self._features(wave, visit)
        if isinstance(feats, str):
            return bad(feats)
        return {
            "key": str(key),
            "index": index,
            **feats,
            "target": target,
            "text_ids": np.asarray(enc.ids, dtype=np.int64),
            "audio_pos": int(enc.audio_pos),
            "target_start": int(enc.target_start),
            "ctc_ids": ctc_ids,
            "duration": float(duration),
            "lead": lead / sr,
            "speech_runs": speech_runs(wave, sr) if self.speech_runs else None,
            "hotwords": list(enc.hotwords),
            "hotwords_dropped": int(enc.hotwords_dropped),
            "lang": language_of(utt) or self.default_language,  # the encoder's query (per-line SenseVoice)
        }

    def _audio(self, utt) -> np.ndarray | str:
        """The utterance's samples at the frontend's rate (its segment, cut at max_duration when training truncates),
        or why there are none."""
        sr = int(self.frontend.sample_rate)
        start = float(utt.start) if getattr(utt, "start", None) is not None else 0.0
        end = float(utt.end) if getattr(utt, "end", None) is not None else None
        try:  # the cap is a length, not a segment end: it may pass the audio's end
            wave = load_audio(
                utt.source, sample_rate=sr, start=start, end=end, channel=getattr(utt, "channel", None),
                limit=self.max_duration_truncate,
            )  # fmt: skip
        except AudioError as err:  # a missing file: what its path may have meant (decoding screens no line first)
            return audio_reason(err, utt)
        return wave if wave.size else audio_reason(AudioError(utt.source, "empty audio"), utt)

    def _stated_duration(self, utt, seconds: float) -> str | None:
        """Why the line's stated duration (what batching budgets) is not the `seconds` of audio loaded for it, or
        None. A segment (an `end`) reads at most end - start and loading refuses an end far past its audio, a line
        without a duration had it probed from the same audio (llmasr's windows for long audio are segments), and
        augmentation changes lengths only after this."""
        stated = getattr(utt, "duration", None)
        if stated is None or getattr(utt, "end", None) is not None:
            return None
        return wrong_duration(float(stated), seconds, self.max_duration_truncate)

    def listed_hotwords(self, index: int) -> list[str]:
        """Line `index`'s biasing list before the token cap, whether or not prompts render it ([] for a bad line)."""
        try:
            utt = self.manifest[int(index)]
        except BadRecord:
            return []
        target = utt.target.strip() if isinstance(utt.target, str) else ""
        return self._hotwords(utt, int(index), target)

    def _hotwords(self, utt, visit: int, target: str) -> list[str]:
        """The item's biasing list before the token cap (see the class docstring)."""
        given = getattr(utt, "hotwords", None)
        if self.hotword_sampler is not None:
            return self.hotword_sampler.pick(given, target, visit, self.epoch)
        return given_hotwords(utt, self.default_hotwords)

    def ctc_labels(self, target: str) -> np.ndarray | str:
        """The CTC label ids of `target` (stripped), or why it has none the head can learn (ctc_label_ids)."""
        return ctc_label_ids(self.ctc_tokenizer, target)

    def _features(self, wave: np.ndarray, visit: int) -> dict | str:
        """{"feats": float32 [T, D]} for `wave` (augmented in training), or why it gives none. With features on
        the device: {"wave": the waveform fbank reads (scaled, dithered), "num_frames": T, "feat_dim": D,
        "spec_masks": SpecAugment's masks}, every random draw made here in the same order as the worker path."""
        sr = int(self.frontend.sample_rate)
        rng = self.rng(visit)
        aug = self.augmenter if self.train else None
        fx = self.feature_extractor
        window = int(round(self.frontend.chunk_seconds * sr)) if self.frontend.kind == "whisper" else None
        if window is not None and wave.size > window + fx.shift_samples:  # past rounding in truncation, resampling
            return (
                f"audio of {wave.size / sr:.3f} s is longer than the Whisper window ({self.frontend.chunk_seconds:g} "
                "s): the encoder would not hear its end, which the transcript holds"
            )
        sped = ""  # a clip speed perturbation shortened: the line's audio itself may be long enough
        if aug is not None:
            lengths = draw_clip_lengths(aug.cfg, self.seed, self.epoch, visit).item()
            heard = wave.size
            wave = aug.wave(wave, sr, rng, lengths)
            if wave.size < heard:
                sped = f", sped up by data.augment.speed_perturb's factor {lengths[0]:g} from {heard / sr:.3f} s"
        if window is not None:  # augmentation holds a clip in the window up to rounding
            wave = wave[:window]
        if short := fx.too_short(wave.size, sped):  # decided from the sample count: no feature library is asked
            return short
        t = fx.num_frames(wave.size)
        if self.features_on == "device":
            scaled = fx.scaled_wave(wave, dither=self.frontend.dither, rng=rng if self.train else content_rng(wave))
            d = self.frontend.feature_dim
            masks = aug.spec_masks(t, d, rng) if aug is not None else np.zeros((0, 3), dtype=np.int64)  # after dither
            return {"wave": scaled, "num_frames": t, "feat_dim": d, "spec_masks": masks}
        feats = fx(wave, train=self.train, rng=rng)
        if aug is not None:
            feats = aug.spec(feats, rng)
        return {"feats": np.ascontiguousarray(feats, dtype=np.float32)}
