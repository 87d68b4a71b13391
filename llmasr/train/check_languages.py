"""What SenseVoice's per-line language query (model.encoder.conf.queries.language: per_line) makes of the data:
each line's language (llmasr.data.records.language_of) becomes its query where SenseVoiceSmall has one; a line that
names none, or a language it has no query for, runs with "auto". `llmasr check` and `llmasr data check --recipe` say
which lines those are, before a run trains on them."""

from __future__ import annotations

from collections import Counter

from llmasr.data.records import BadRecord, language_of
from llmasr.models.sensevoice import PER_LINE, language_query


def language_counts(manifest) -> tuple[Counter, dict[str, str]]:
    """(lines per language key, None for none; the first line of each language without a query: "path:line")."""
    counts, first = Counter(), {}
    for i in range(len(manifest)):
        try:
            lang = language_of(manifest[i])
        except BadRecord:  # the data section reports bad lines
            continue
        counts[lang] += 1
        if lang is not None and language_query(lang) == "auto" and lang not in first:
            first[lang] = f"{manifest.path}:{manifest.lineno(i)}"
    return counts, first


def language_query_lines(model, loaders) -> list[str]:
    """The check report's lines on the language queries of data.train and data.valid (none without per_line)."""
    encoder = model.encoder
    if not getattr(encoder, "per_line", False):
        return []
    train_loader, _, valid_loader = loaders
    lines = [
        "language queries (model.encoder.conf.queries.language per_line: each line's own `lang`; training gives "
        f"{encoder.auto_rate:.0%} of its lines 'auto' instead, as FunASR's SenseVoice training does)"
    ]
    for name, loader in (("data.train", train_loader), ("data.valid", valid_loader)):
        if loader is None:
            continue
        mix = loader.dataset.manifest
        for manifest in getattr(mix, "manifests", [mix]):  # a MixedManifest's each
            lines += manifest_language_lines(name, getattr(manifest, "base", manifest))
    return lines


def per_line_recipe(recipe) -> bool:
    """Whether the recipe's encoder is SenseVoice with queries.language per_line (read without building it)."""
    enc = recipe.model.encoder
    queries = (enc.conf or {}).get("queries")
    return enc.type == "sensevoice" and isinstance(queries, dict) and queries.get("language") == PER_LINE


def manifest_language_lines(name: str, manifest) -> list[str]:
    """One manifest's lines per language query, those naming none, and those in a language without a query."""
    counts, first = language_counts(manifest)
    own = {lang: n for lang, n in counts.items() if lang is not None and language_query(lang) != "auto"}
    said = ", ".join(f"{lang} {n}" for lang, n in sorted(own.items(), key=lambda kv: (-kv[1], kv[0])))
    lines = [f"  {name} {manifest.path}: {said or 'no line has a language SenseVoiceSmall has a query for'}"]
    if counts[None]:
        lines.append(f"  {name}: {counts[None]} line(s) name no language (lang / language / text_language): 'auto'")
    if first:
        named = "; ".join(f"{lang} {counts[lang]} (first {where})" for lang, where in first.items())
        lines.append(
            f"  warning: {name}: {sum(counts[lang] for lang in first)} line(s) in a language SenseVoiceSmall has no "
            f"query for run with 'auto': {named}"
        )
    return lines
