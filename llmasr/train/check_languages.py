"""What SenseVoice's per-line language query (model.encoder.conf.queries.language: per_line) makes of the data:
each line's language (llmasr.data.records.language_of) becomes its query where SenseVoiceSmall has one; a line that
names none, or a language it has no query for, runs with "auto". `llmasr check` and `llmasr data check --recipe` say
which lines those are, before a run trains on them."""

from __future__ import annotations

from collections import Counter

from llmasr.data.records import BadRecord, language_of
from llmasr.models.sensevoice import PER_LINE, auto_rate, language_query


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


def language_query_lines(recipe, loaders) -> list[str]:
    """The check report's lines on the language queries of data.train and data.valid: per manifest with
    per_line; with one language for every line, a note when lines name others (none without query frames)."""
    queries = sensevoice_queries(recipe)
    if queries is None:
        return []
    train_loader, _, valid_loader = loaders
    named = [
        (name, getattr(manifest, "base", manifest))
        for name, loader in (("data.train", train_loader), ("data.valid", valid_loader))
        if loader is not None
        for manifest in getattr(loader.dataset.manifest, "manifests", [loader.dataset.manifest])  # a mix's each
    ]
    if queries.get("language") != PER_LINE:
        return _fixed_language_lines(queries.get("language", "auto"), named)
    lines = [
        "language queries (model.encoder.conf.queries.language per_line: each line's own `lang`; training gives "
        f"{auto_rate(queries):.0%} of its lines 'auto' instead, as FunASR's SenseVoice training does)"
    ]
    for name, manifest in named:
        lines += manifest_language_lines(name, manifest)
    return lines


def _fixed_language_lines(fixed: str, named: list) -> list[str]:
    """A note when lines name a language SenseVoiceSmall has a query for other than the one every line gets."""
    other = Counter()
    for _, manifest in named:
        counts, _ = language_counts(manifest)
        other.update({lang: n for lang, n in counts.items() if language_query(lang) not in ("auto", fixed)})
    if not other:
        return []
    said = ", ".join(f"{lang} {n}" for lang, n in other.most_common())
    return [
        "language queries",
        f"  note: model.encoder.conf.queries.language {fixed!r} is every line's query, but {other.total()} line(s) "
        f"name another language SenseVoiceSmall has a query for ({said}); queries.language per_line gives each "
        "line its own",
    ]


def sensevoice_queries(recipe) -> dict | None:
    """The recipe's SenseVoice queries (model.encoder.conf.queries, checked when the model was built), or None."""
    enc = recipe.model.encoder
    queries = (enc.conf or {}).get("queries")
    return queries if enc.type == "sensevoice" and isinstance(queries, dict) else None


def per_line_recipe(recipe) -> bool:
    """Whether the recipe's encoder is SenseVoice with queries.language per_line (read without building it)."""
    return (sensevoice_queries(recipe) or {}).get("language") == PER_LINE


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
