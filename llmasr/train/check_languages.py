"""What SenseVoice's per-line language query (model.encoder.conf.queries.language: per_line) makes of the data:
each line's language (llmasr.data.records.language_of) becomes its query where SenseVoiceSmall has one; a line that
names none, or a language it has no query for, runs with "auto". `llmasr check`, `llmasr data check --recipe` and
train.log say which lines those are, before a run trains on them.

The lines per language are gathered by the pass that already reads every line: the loaders' start-up screen
(`loader.languages`) or `llmasr data check`'s (`DataReport.languages`), each as (manifest, language key or None) ->
[lines, the first one]; this module only words them."""

from __future__ import annotations

from collections import Counter

from llmasr.data.screen import where
from llmasr.models.sensevoice import PER_LINE, auto_rate, language_query

Tally = dict[str, dict]  # manifest path -> {language key or None: (lines, the first's "path:line")}


def tally(found: dict, spot=str) -> Tally:
    """A screen's or data check's gathered languages ((manifest, language) -> [lines, first]) by manifest, the first
    line of each given as "path:line" by `spot` (a screen's: its dataset index)."""
    out: Tally = {}
    for (path, lang), (lines, first) in found.items():
        out.setdefault(path, {})[lang] = (lines, spot(first))
    return out


def loader_tally(loader) -> Tally:
    """What the loader's start-up screen gathered (llmasr.data.loader.build_dataloader's `loader.languages`)."""
    manifest = loader.dataset.manifest
    found = tally(loader.languages, lambda i: "{}:{}".format(*where(manifest, i)))
    order = [str(getattr(m, "base", m).path) for m in getattr(manifest, "manifests", [manifest])]  # a mix's each
    return {path: found[path] for path in dict.fromkeys(order) if path in found}


def language_query_lines(recipe, loaders) -> list[str]:
    """The check report's lines on the language queries of data.train and data.valid: per manifest with
    per_line; with one language for every line, a note when lines name others (none without query frames)."""
    queries = sensevoice_queries(recipe)
    if queries is None:
        return []
    train_loader, _, valid_loader = loaders
    sets = (("data.train", train_loader), ("data.valid", valid_loader))
    named = [(name, loader_tally(loader)) for name, loader in sets if loader is not None]
    if queries.get("language") != PER_LINE:
        return _fixed_language_lines(queries.get("language", "auto"), [t for _, t in named])
    lines = [
        "language queries (model.encoder.conf.queries.language per_line: each line's own `lang`; training gives "
        f"{auto_rate(queries):.0%} of its lines 'auto' instead, as FunASR's SenseVoice training does)"
    ]
    for name, found in named:
        lines += tally_lines(name, found)
    return lines


def query_warnings(recipe, loaders) -> list[str]:
    """The warnings among language_query_lines (lines run with "auto" for want of a query): train.log's."""
    prefix = "  warning: "
    return [line.removeprefix(prefix) for line in language_query_lines(recipe, loaders) if line.startswith(prefix)]


def _fixed_language_lines(fixed: str, tallies: list[Tally]) -> list[str]:
    """A note when lines name a language SenseVoiceSmall has a query for other than the one every line gets."""
    other = Counter()
    for found in tallies:
        for counts in found.values():
            other.update({lang: n for lang, (n, _) in counts.items() if language_query(lang) not in ("auto", fixed)})
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


def data_check_text(found: dict, name: str) -> list[str]:
    """`llmasr data check --recipe`'s section on a per-line SenseVoice's queries (`found`: DataReport.languages)."""
    return ["## language queries (model.encoder.conf.queries.language per_line)", *tally_lines(name, tally(found))]


def tally_lines(name: str, found: Tally) -> list[str]:
    """Each manifest's lines per language query, those naming none, and those in a language without a query."""
    lines = []
    for path, counts in found.items():
        lines += manifest_language_lines(name, path, counts)
    return lines


def manifest_language_lines(name: str, path: str, counts: dict) -> list[str]:
    """One manifest's lines per language query, those naming none, and those in a language without a query
    (`counts`: language key or None -> (lines, the first's "path:line"))."""
    own = {lang: n for lang, (n, _) in counts.items() if lang is not None and language_query(lang) != "auto"}
    said = ", ".join(f"{lang} {n}" for lang, n in sorted(own.items(), key=lambda kv: (-kv[1], kv[0])))
    lines = [f"  {name} {path}: {said or 'no line has a language SenseVoiceSmall has a query for'}"]
    if None in counts:
        lines.append(f"  {name}: {counts[None][0]} line(s) name no language (lang / language / text_language): 'auto'")
    without = sorted(((lang, n, first) for lang, (n, first) in counts.items() if lang is not None and lang not in own),
                     key=lambda f: (-f[1], f[0]))  # fmt: skip
    if without:
        named = "; ".join(f"{lang} {n} (first {first})" for lang, n, first in without)
        lines.append(
            f"  warning: {name}: {sum(n for _, n, _ in without)} line(s) in a language SenseVoiceSmall has no "
            f"query for run with 'auto': {named}"
        )
    return lines
