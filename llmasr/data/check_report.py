"""What `llmasr data check` finds (DataReport, gathered by llmasr.data.check) and the text it prints of it: bad
lines with manifest:line and reason, the duration histogram and hours, what the batching filters skip, keys that
repeat, fields no parser reads, and the batching preview."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from llmasr.data.item_filters import counts_text
from llmasr.data.record_fields import unread_text
from llmasr.data.screen import ctc_unknown_text, own_prompts_said
from llmasr.data.skipped_lines import longest_kept_text
from llmasr.data.speech_check import SpeechFindings
from llmasr.data.transcript_text import text_warnings


@dataclass
class DataReport:
    manifests: list[str]
    num_lines: int = 0
    bad: list[dict] = field(default_factory=list)  # every bad line: manifest, line, key, reason
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    duration_mismatches: list[dict] = field(default_factory=list)  # segment ends a little past the audio (trimmed)
    durations: np.ndarray = field(default_factory=lambda: np.zeros(0))  # seconds per line, NaN for bad lines
    lines_per_manifest: dict[str, int] = field(default_factory=dict)
    world_size: int = 1
    max_bad_fraction: float = 0.01
    batching: dict = field(default_factory=dict)  # sampler stats: batches, mean batch size, padding efficiency
    budget: str = ""
    # the longest line batching keeps: data.batching.max_duration, or a Whisper window below it
    max_duration: float = float("inf")
    max_duration_set: float = float("inf")  # data.batching.max_duration as the recipe sets it
    too_long: list[dict] = field(default_factory=list)  # lines past max_duration: manifest, line, duration
    over_budget: list[dict] = field(default_factory=list)  # lines no batch can hold: manifest, line
    over_budget_text: str = ""  # which budgets they pass (skipped_lines.budgets_passed)
    errors: list[str] = field(default_factory=list)  # manifests (or a noise list) that could not be read at all
    repeated_keys: list[dict] = field(default_factory=list)  # a key seen before: manifest, line, key, first
    for_decoding: bool = False  # checked as manifests to decode (lines without a transcript are fine)
    unprobed: int = 0  # lines of unknown duration left unprobed (--no-probe): training reads their headers
    speech: SpeechFindings | None = None  # with a VAD (llmasr.data.speech_check)
    bad_index: list[int] = field(default_factory=list)  # each bad line's index in the lines checked, in order
    # (bad items, items) as training counts them when that is not per line: visits of a weighted mix's first epoch,
    # or validation's subset; None: per line.
    counted: tuple[int, int] | None = None
    counted_items: str = ""  # what those items are
    mix: list[str] = field(default_factory=list)  # what the weighted mix's first epoch trains of each manifest
    mix_warnings: list[str] = field(default_factory=list)  # its manifests that epoch trains none of
    unread_fields: dict[str, list] = field(default_factory=dict)  # field no parser reads -> [lines, first one]
    # what the CTC vocabulary spells <unk> (a character or word of the transcripts) -> [lines, first manifest:line]
    ctc_unknown: dict[str, list] = field(default_factory=dict)
    ctc_cased: dict[str, str] = field(default_factory=dict)  # of those, the ones it has in another case: that form
    # what is wrong with the text of the transcripts (llmasr.data.transcript_text) -> [lines, first manifest:line]
    text_found: dict[str, list] = field(default_factory=dict)
    # the transcripts the LLM's tokenizer spells unk (llmasr.data.llm_unk.gather_unk, places as manifest:line)
    llm_unk: dict = field(default_factory=dict)
    llm_unk_text: str = ""  # what the report says of them, or why they were not asked
    ctc_frames_text: str = ""  # the lines whose CTC labels outnumber their encoder frames (llmasr.data.ctc_frames)
    # the lines that give a prompt of their own: manifest -> [lines, the first's manifest:line, its prompt]
    own_prompts: dict[str, list] = field(default_factory=dict)
    # each manifest's lines per language: (manifest, language key or None) -> [lines, the first's manifest:line]
    languages: dict[tuple, list] = field(default_factory=dict)
    language_text: list[str] = field(default_factory=list)  # what SenseVoice's per-line queries make of them
    # (sample rate, channels, averaged: read without a `channel`) -> [lines, the first one's manifest:line]
    audio_formats: dict[tuple[int, int, bool], list] = field(default_factory=dict)
    sample_rate: int = 16000  # the encoder frontend's: what loading resamples to

    @property
    def num_bad(self) -> int:
        return len(self.bad)

    @property
    def bad_fraction(self) -> float:
        """The fraction data.max_bad_fraction is held to: of the items training counts."""
        bad, total = self.counted if self.counted is not None else (self.num_bad, self.num_lines)
        return bad / total if total else 0.0

    @property
    def total_hours(self) -> float:
        d = self.durations[~np.isnan(self.durations)]
        return float(d.sum()) / 3600.0

    @property
    def ok(self) -> bool:
        return not self.errors and self.bad_fraction <= self.max_bad_fraction


def histogram(durations: np.ndarray, *, bins: int = 20, width: int = 50) -> list[str]:
    d = durations[~np.isnan(durations)]
    if d.size == 0:
        return ["(no durations)"]
    hi = max(float(d.max()), 1e-3)
    edges = np.linspace(0.0, math.ceil(hi), bins + 1)
    places = _edge_places(edges)
    edges = np.round(edges, places)  # the edges as printed: linspace's 0.6000000000000001 had put 0.6 s below it
    counts, _ = np.histogram(d, edges)
    top = max(1, int(counts.max()))
    out = []
    for lo, up, c in zip(edges[:-1], edges[1:], counts):
        bar = "#" * int(round(width * c / top))
        out.append(f"{lo:6.{places}f}-{up:6.{places}f}s |{bar:<{width}}| {c}")
    return out


def _edge_places(edges: np.ndarray) -> int:
    """Decimals that print every bin edge as it is (bins of 0.05 s or 0.75 s at one decimal read as "0.2-0.2s" or
    "2.2-3.0s", two bins looking alike or a bin's edge off by 0.05); at least one, at most three."""
    for places in (1, 2):
        if np.allclose(np.round(edges, places), edges, rtol=0, atol=1e-9):
            return places
    return 3


def _limit_text(report: DataReport) -> str:
    """The longest line batching keeps, worded as train.log words it (a Whisper window that caps the recipe's
    max_duration named beside it)."""
    return longest_kept_text(report.max_duration_set, report.max_duration)


def _too_long_lines(report: DataReport, max_examples: int) -> list[str]:
    """What max_duration skips: count, the limit, and the first lines."""
    if not report.too_long:
        return []
    out = [
        f"longer than {_limit_text(report)}: {len(report.too_long)} lines, skipped by "
        "training (not truncated; `llmasr decode` splits such audio into windows)"
    ]
    out += [f"  {t['manifest']}:{t['line']} ({t['duration']:.2f} s)" for t in report.too_long[:max_examples]]
    return out


def _over_budget_lines(report: DataReport, max_examples: int) -> list[str]:
    """What no batch can hold on its own: count, the budgets passed, and the first lines."""
    if not report.over_budget:
        return []
    n = len(report.over_budget)
    out = [f"too large for a batch of one: {n} lines, skipped by training ({report.over_budget_text})"]
    return out + [f"  {t['manifest']}:{t['line']}" for t in report.over_budget[:max_examples]]


def _repeated_key_lines(report: DataReport, max_examples: int) -> list[str]:
    if not report.repeated_keys:
        return []
    out = [
        "",
        f"## keys that repeat an earlier line's ({len(report.repeated_keys)}; training takes both, but decoding's "
        "hyp.txt and ref.txt are keyed: give each line a `key` of its own)",
    ]
    return out + [
        f"  {r['manifest']}:{r['line']} key={r['key']}: first at {r['first']}"
        for r in report.repeated_keys[:max_examples]
    ]


def _unread_field_lines(report: DataReport) -> list[str]:
    """Fields no parser reads, each with its lines, its first line, and the field it may have meant."""
    if not report.unread_fields:
        return []
    out = ["", "## fields llmasr does not read (they change nothing: check the spelling of one you meant it to use)"]
    for name, (lines, first) in sorted(report.unread_fields.items(), key=lambda kv: -kv[1][0]):
        out.append(f"  {unread_text(name, lines, first)}")
    return out


def _audio_format_lines(report: DataReport) -> list[str]:
    """The sample rates and channel counts of the lines' audio, and what loading does to each: a corpus of 8 kHz
    telephone audio, or of two-channel calls read without a `channel`, is otherwise trained on without a word."""
    if not report.audio_formats:
        return []
    sr = report.sample_rate
    out = ["", f"## audio formats (loading reads every clip as mono at the encoder's {sr} Hz)"]
    for (rate, channels, averaged), (lines, first) in sorted(report.audio_formats.items(), key=lambda kv: -kv[1][0]):
        what = [f"{rate} Hz, {channels} channel{'s' if channels != 1 else ''}: {lines} line{'s' if lines != 1 else ''}"
                f", first at {first}"]  # fmt: skip
        if rate < sr:
            what.append(f"upsampled to {sr} Hz (it holds nothing above {rate // 2} Hz)")
        elif rate > sr:
            what.append(f"downsampled to {sr} Hz")
        if averaged:
            what.append(
                "its channels averaged (the lines pick no one channel: where each channel holds a speaker of its own, "
                "give a jsonl line a `channel`, a lhotse cut's supervision its own `channel`)"
            )
        out.append("  " + "; ".join(what))
    return out


def format_report(report: DataReport, *, max_examples: int = 50) -> str:
    lines = ["# llmasr data check", ""]
    lines += [f"error: {e}" for e in report.errors]
    for path, n in report.lines_per_manifest.items():
        lines.append(f"manifest {path}: {n} lines")
    d = report.durations[~np.isnan(report.durations)]
    limit = f"data.max_bad_fraction {100 * report.max_bad_fraction:.2f}%"
    if report.counted is None:
        lines.append(
            f"lines: {report.num_lines}, usable: {report.num_lines - report.num_bad}, bad: {report.num_bad} "
            f"({100 * report.bad_fraction:.2f}%; {limit})"
        )
    else:
        lines.append(f"lines: {report.num_lines}, usable: {report.num_lines - report.num_bad}, bad: {report.num_bad}")
        lines.append(
            f"{report.counted_items}: {report.counted[1]}, bad: {report.counted[0]} ({100 * report.bad_fraction:.2f}%; "
            f"{limit})"
        )
    if d.size:
        lines.append(
            f"total: {report.total_hours:.2f} h; duration min {d.min():.2f}s, median {np.median(d):.2f}s, "
            f"mean {d.mean():.2f}s, max {d.max():.2f}s"
        )
    if report.unprobed:
        lines.append(
            f"not probed: {report.unprobed} lines without a duration (left out of the histogram and the batches; "
            "training reads their durations from the audio headers)"
        )
    lines += ["", "## duration histogram", *histogram(report.durations)]
    if report.bad:
        lines += ["", "## bad lines by reason"]
        lines += [f"  {reason}: {count}" for reason, count in report.bad_by_reason.items()]
        lines += ["", f"## bad lines (first {min(max_examples, report.num_bad)} of {report.num_bad})"]
        for b in report.bad[:max_examples]:
            lines.append(f"  {b['manifest']}:{b['line']} key={b.get('key')}: {b['reason']}")
    if report.duration_mismatches:
        n = len(report.duration_mismatches)
        lines += ["", f"## segment ends past the end of the audio by less than 0.5 s ({n}; trimmed to it)"]
        for b in report.duration_mismatches[:max_examples]:
            lines.append(f"  {b['manifest']}:{b['line']} key={b.get('key')}: {b['reason']}")
    lines += _audio_format_lines(report)
    lines += _repeated_key_lines(report, max_examples)
    lines += _unread_field_lines(report)
    if report.own_prompts:  # what the recipe's prompt is not, for those lines
        found = [(path, n, first, own) for path, (n, first, own) in report.own_prompts.items()]
        lines += ["", "## prompts", own_prompts_said(found)]
    if report.language_text:  # the recipe's SenseVoice asks each line's language (llmasr.train.check_languages)
        lines += ["", *report.language_text]
    if report.ctc_unknown:
        found = [(part, n, first) for part, (n, first) in report.ctc_unknown.items()]
        lines += ["", "## spelled <unk> by the CTC vocabulary", ctc_unknown_text(found, report.ctc_cased.get)]
    if report.llm_unk_text:
        head = "transcripts the LLM's tokenizer cannot write" if report.llm_unk else "the LLM's tokenizer"
        lines += ["", f"## {head}", report.llm_unk_text]
    if report.ctc_frames_text:
        said = report.ctc_frames_text
        lines += [
            "",
            "## CTC labels against encoder frames",
            said if said.startswith("not counted") else f"warning: {said}",
        ]
    for head, said in text_warnings(report.text_found):
        lines += ["", f"## {head}", said]
    if report.batching:
        s = report.batching
        lines += ["", f"## batching ({report.budget}, world size {report.world_size})"]
        filtered = s["filtered"]
        lines.append(f"skipped by filters: {counts_text(filtered)}")
        lines += _too_long_lines(report, max_examples) + _over_budget_lines(report, max_examples)
        if report.mix:
            lines += ["the weighted mix's first epoch, as training batches it:", *(f"  {m}" for m in report.mix)]
        lines += [f"warning: {m}" for m in report.mix_warnings]
        if s.get("truncated"):
            lines.append(
                f"truncated to max_duration ({report.max_duration:g} s; data.batching.truncate_to_max, the transcript "
                f"is kept whole): {s['truncated']}"
                if report.max_duration >= report.max_duration_set
                else f"truncated to {_limit_text(report)} (data.batching.truncate_to_max, the transcript is kept "
                f"whole): {s['truncated']}"
            )
        lines.append(
            f"batches per rank: {s['num_batches_per_rank']} (all ranks: {s['num_batches_global']}, "
            f"padding duplicates: {s['num_padding_batches']})"
        )
        lines.append(
            f"mean batch size: {s['mean_batch_size']:.1f} utterances (of the {s['num_real_batches']} real batches)"
        )
        if s.get("padding_warning"):
            lines.append(f"warning: {s['padding_warning']}")
        lines.append(f"padding efficiency (real / padded audio): {s['padding_efficiency']:.3f}")
        if "llm_positions" in s:  # data.batching.max_llm_tokens applied
            llm = s["llm_positions"]
            lines.append(
                f"LLM positions per batch (B x longest row): at most {llm['max']}, mean {llm['mean']:.1f}; longest "
                f"row {llm['longest_row']} (audio tokens at the longest the clip is heard, prompt and transcript bound)"
            )
    if report.speech is not None:
        lines += report.speech.lines_of_report(max_examples)
    if report.ok:
        verdict = "OK"
    elif report.errors:
        verdict = "ERROR: files that cannot be read (above)"
    else:
        verdict = "TOO MUCH BAD DATA: " + (
            "llmasr decode would fail (after writing its outputs)" if report.for_decoding
            else "training would stop with TooMuchBadData"
        )  # fmt: skip
        untranscribed = sum(str(b["reason"]).startswith("missing field 'target'") for b in report.bad)
        if not report.for_decoding and untranscribed == len(report.bad):  # audio to transcribe, checked for training
            verdict += f"; all {untranscribed} bad lines lack a `target`: check a manifest to decode with --decode"
    lines += ["", "result: " + verdict]
    return "\n".join(lines)
