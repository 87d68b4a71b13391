"""lhotse CutSet records (read with json/gzip; lhotse is not imported), one cut a manifest line.

A MonoCut, or a MultiCut reading one channel or all the channels of one file (averaged), with exactly one
supervision: its `text` is the target, its `language` the lang, its custom.hotwords the biasing list and custom.prompt
the task (the cut's custom fields where the supervision has none), and its span within the cut (`start`, `duration`,
clipped to the cut) the audio trained on; the audio is the cut's recording source (a `file`, or a `command` that
decodes one: llmasr.data.lhotse_command) from cut.start, on the supervision's channel when it gives one of the cut's,
else on the cut's. Decoding also takes a cut without supervisions, or whose supervision has no text, as audio to
transcribe. Recording transforms other than Resample, URL/memory sources, other commands, features-only cuts,
MixedCuts, a subset of a file's channels and a supervision on a channel its cut lacks are bad records
(llmasr.data.records.BadRecord, with file and line).
"""

from __future__ import annotations

from llmasr.data.audio_commands import lhotse_source_advice
from llmasr.data.lhotse_command import command_audio
from llmasr.data.records import Utterance, is_number

SPAN_SLACK_S = 1e-3  # rounding in a cut's and its supervision's times
RECORDING_SLACK_S = 0.025  # a cut past its recording's declared duration: lhotse's audio duration mismatch tolerance
# A perturbed copy (icefall's cuts + cuts.perturb_speed(0.9) + ...) is what llmasr's own augmentation draws per clip
# and epoch: the advice names it, where the refusal alone left the user to find it.
TRANSFORM_ADVICE = {
    name: f" (leave the perturbed copies out and set data.augment.{key}, which draws it per clip and epoch)"
    for name, key in (("Speed", "speed_perturb"), ("Tempo", "speed_perturb"), ("Volume", "gain"))
}


class CutRecord:
    """One cut line read through a records.LineParser (`p`: its line, its complaints, its path resolution)."""

    def __init__(self, parser):
        self.p = parser

    def utterance(self, rec: dict) -> Utterance:
        cut_id = rec.get("id")
        if not isinstance(cut_id, str) or not cut_id:
            raise self.p.bad(f"lhotse cut: field 'id' must be a non-empty string, got {cut_id!r:.60}")
        self.p.key = cut_id
        kind = rec.get("type", "MonoCut")
        if kind not in ("MonoCut", "MultiCut", "Cut", "DataCut"):
            raise self.p.bad(
                f"lhotse cut: type {kind!r} is not supported (only MonoCut, and MultiCut on one channel or on all the "
                "channels of one file; a MixedCut or PaddingCut is audio made at load time: save it as a recording)"
            )
        sup = self.cut_supervision(rec)
        target = self.p.optional_target(sup.get("text"), "supervisions[0].text")
        recording = rec.get("recording")
        if not isinstance(recording, dict):
            raise self.p.bad("lhotse cut has no 'recording' (features-only cuts are not supported)")
        start = self.p.opt_num(rec, "start") or 0.0
        duration = self.p.opt_num(rec, "duration")
        if duration is None or duration <= 0:
            raise self.p.bad(f"lhotse cut: field 'duration' must be a positive number, got {rec.get('duration')!r}")
        self.within_recording(recording, start, duration)
        start, duration = self.supervised_span(sup, start, duration)
        self.untransformed(recording)
        source, file_channel = self.cut_source(recording, self.supervision_channel(sup, self.cut_channel(rec)))
        if source.get("type") == "command":
            path, file_channel, start, end = command_audio(self.p, source, file_channel, start, duration)
            duration = end - start
        else:
            path = self.p.resolve(source["source"], working_dir_first=True)
        lang = sup.get("language")
        hotwords, hw_field = self.custom_field(rec, sup, "hotwords")
        prompt, prompt_field = self.custom_field(rec, sup, "prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise self.p.bad(f"field '{prompt_field}' must be a string, got {type(prompt).__name__} {prompt!r:.60}")
        return Utterance(
            key=cut_id,
            source=path,
            target=target,
            duration=float(duration),
            target_len=None,
            prompt=prompt,
            lang=lang if isinstance(lang, str) else None,
            manifest=self.p.manifest,
            line=self.p.line,
            channel=file_channel,
            start=float(start),
            end=float(start + duration),
            hotwords=self.p.hotwords({"hotwords": hotwords}, hw_field),
        )

    def untransformed(self, recording: dict) -> None:
        """Refuses a recording transform other than Resample (resampling happens anyway, to the model's rate): read
        without it, the audio would not be the recording's."""
        for tr in recording.get("transforms") or []:
            name = tr.get("name") if isinstance(tr, dict) else tr
            if name != "Resample":
                raise self.p.bad(
                    f"lhotse recording transform {name!r} is not supported{TRANSFORM_ADVICE.get(name, '')}"
                )

    def custom_field(self, rec: dict, sup: dict, name: str) -> tuple[object, str]:
        """(value, where it is) of custom field `name`: the supervision's own, else its cut's (lhotse keeps custom
        fields on both; `cut.with_custom` writes the cut's)."""
        for where, owner in (("supervisions[0].custom", sup), ("custom", rec)):
            custom = owner.get("custom")
            if custom is not None and not isinstance(custom, dict):
                raise self.p.bad(f"field '{where}' must be an object, got {type(custom).__name__} {custom!r:.60}")
            if custom and custom.get(name) is not None:
                return custom[name], f"{where}.{name}"
        return None, f"supervisions[0].custom.{name}"

    def cut_supervision(self, rec: dict) -> dict:
        """The cut's one supervision, which has a text."""
        sups = rec.get("supervisions")
        if not isinstance(sups, list):
            raise self.p.bad("lhotse cut: field 'supervisions' must be a list")
        if not sups and not self.p.need_target:
            return {}  # audio to transcribe
        if len(sups) != 1:
            raise self.p.bad(
                f"lhotse cut has {len(sups)} supervisions; expected exactly one (CutSet.trim_to_supervisions("
                "keep_overlapping=False) makes a cut of each)"
            )
        sup = sups[0]
        if not isinstance(sup, dict):
            raise self.p.bad("lhotse cut: the supervision is not an object")
        if ("text" not in sup or sup["text"] is None) and self.p.need_target:
            raise self.p.bad("lhotse cut: missing field 'supervisions[0].text'")
        return sup

    def within_recording(self, recording: dict, start: float, duration: float) -> None:
        """A cut running past its recording's declared duration is a bad line, as lhotse refuses to load it: its
        text would be paired with part of its audio."""
        total = recording.get("duration")
        if not is_number(total):
            n, sr = recording.get("num_samples"), recording.get("sampling_rate")
            total = n / sr if is_number(n) and is_number(sr) and sr > 0 else None
        if total is not None and start + duration > total + RECORDING_SLACK_S:
            raise self.p.bad(
                f"lhotse cut ({start:g} s + {duration:g} s) ends {start + duration - total:.3f} s past the end of its "
                f"recording ({total:g} s, as the recording declares it)"
            )

    def supervised_span(self, sup: dict, start: float, duration: float) -> tuple[float, float]:
        """(start, duration) in the recording of what the supervision's text covers: its own span within the cut
        (its `start` is relative to the cut); the whole cut for a supervision without one. A supervision that runs
        past its cut (lhotse's truncate and windowing keep such) is a bad line: its whole text would be paired with
        part of its audio."""
        a = sup.get("start", 0.0)
        b = sup.get("duration")
        if not is_number(a) or (b is not None and not is_number(b)):
            raise self.p.bad(f"lhotse supervision: 'start'/'duration' must be numbers, got {a!r:.30}, {b!r:.30}")
        lo, hi = float(a), duration if b is None else float(a) + float(b)
        inside = max(0.0, lo), min(duration, hi)
        if inside[1] - inside[0] <= 0:
            raise self.p.bad(f"lhotse supervision ({a:g} s + {b} s) lies outside its cut (0-{duration:g} s)")
        if lo < -SPAN_SLACK_S or hi > duration + SPAN_SLACK_S:
            raise self.p.bad(
                f"lhotse supervision ({a:g} s + {b} s) runs past its cut (0-{duration:g} s): its text would be paired "
                "with part of its audio (cut with keep_excessive_supervisions=False, or trim_to_supervisions)"
            )
        return start + inside[0], inside[1] - inside[0]

    def cut_channel(self, rec: dict) -> int | list[int] | None:
        """The recording channel the cut reads (None: all of a single-file recording)."""
        channel = rec.get("channel", 0)
        if isinstance(channel, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) for c in channel):
                raise self.p.bad(f"lhotse cut: field 'channel' must list integers, got {channel!r:.60}")
            channel = channel[0] if len(channel) == 1 else sorted(channel) or None
            if isinstance(channel, list):
                return channel
        if channel is not None and not (isinstance(channel, int) and not isinstance(channel, bool)):
            raise self.p.bad(f"lhotse cut: field 'channel' must be an integer or list, got {channel!r:.60}")
        return channel

    def supervision_channel(self, sup: dict, channel: int | list[int] | None) -> int | list[int] | None:
        """The channel(s) the supervision's text is on, read instead of the cut's `channel` (a MultiCut over [0, 1]
        whose supervision is on channel 1 holds what channel 1 says, not the average of both): its own channel when
        it is one of the cut's, the cut's when it has none or names them all; any other a bad line."""
        own = sup.get("channel")
        own = own[0] if isinstance(own, list) and len(own) == 1 else own
        if own is None:
            return channel
        cut = channel if isinstance(channel, list) else None if channel is None else [channel]
        if isinstance(own, int) and not isinstance(own, bool) and (cut is None or own in cut):
            return own
        if isinstance(own, list) and cut is not None and sorted(own) == cut:
            return channel
        raise self.p.bad(
            f"lhotse supervision: channel {own!r:.40} is not one of its cut's channels ({channel}) nor all of them"
        )

    def cut_source(
        self, recording: dict, channel: int | list[int] | None, commands: bool = True
    ) -> tuple[dict, int | None]:
        """(the recording source that holds `channel`, the channel within its audio or None) (`channel` a list: all
        the channels of one file, averaged); a 'file' source's path checked, a 'command' (where `commands`: a noise
        list reads whole files only) left to command_audio."""
        if isinstance(channel, list):
            srcs = [s for s in recording.get("sources") or [] if isinstance(s, dict)]
            chans = [sorted(s.get("channels") or [0]) if isinstance(s.get("channels"), list) else None for s in srcs]
            if len(srcs) != 1 or chans[0] != channel:
                raise self.p.bad(
                    f"lhotse cut reads channels {channel} of a recording whose sources hold {chans}: only all the "
                    "channels of one file (averaged) or one channel are supported"
                )
            channel = None
        sources = recording.get("sources")
        if not isinstance(sources, list) or not sources:
            raise self.p.bad("lhotse recording has no 'sources'")
        chosen, file_channel = None, None
        for src in sources:
            if not isinstance(src, dict):
                raise self.p.bad("lhotse recording source is not an object")
            chans = src.get("channels") or [0]
            if not isinstance(chans, list):
                raise self.p.bad(f"lhotse recording source: 'channels' must be a list, got {chans!r:.30}")
            if channel is None or channel in chans:
                chosen = src
                if channel is not None and len(chans) > 1:
                    file_channel = chans.index(channel)
                elif channel is None and len(sources) > 1:
                    raise self.p.bad("lhotse cut mixes several channels spread over several files; not supported")
                break
        if chosen is None:
            raise self.p.bad(f"lhotse recording has no source for channel {channel}")
        if chosen.get("type") == "command" and commands:
            return chosen, file_channel
        if chosen.get("type") != "file":
            read = " and a 'command' that decodes a file" if commands else ""
            raise self.p.bad(
                f"lhotse recording source type {chosen.get('type')!r} is not supported (only 'file'{read}): "
                + lhotse_source_advice(chosen, self.p.base)
            )
        path = chosen.get("source")
        if not isinstance(path, str) or not path:
            raise self.p.bad("lhotse recording source has no file path")
        return chosen, file_channel
