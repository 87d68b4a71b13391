"""The LLM positions a decode batch holds, for the budget decode.max_llm_tokens.

Decoding's LLM memory is the prefill and the KV cache: the batch's prompts with their audio tokens are padded to the
longest (`inputs`), and generate then adds up to the longest cap on new tokens to every row (`new`), each beam a row
of its own. A batch of B items therefore holds B x num_beams x (the longest input + the largest cap + 1) positions,
and the sampler keeps that within the budget (llmasr.data.sampler, `llm_new`). An item that alone passes it is
decoded in a batch of its own (decoding skips no item), and decode says which.

An item's input is its audio tokens (llmasr.models.context.audio_tokens: the model's own frontend, encoder and
adaptor, of its audio as long as loading takes it for the stated duration, llmasr.train.line_positions.heard_seconds)
and its prompt as the dataset renders it: its task and system message and its biasing list (its own, else the
--hotwords list; none when lists are not prompted), after the token cap. The cap on new tokens is models.llm_search's:
decode.max_new_tokens, else tokens_per_second x its seconds + 8 (one more for the end token generate writes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from llmasr.data.manifest import BadRecord
from llmasr.data.windowed import WindowedManifest
from llmasr.models.context import audio_tokens
from llmasr.models.line_prompts import LinePrompts
from llmasr.train.line_positions import heard_seconds

log = logging.getLogger(__name__)


@dataclass
class DecodeRows:
    """Counts the LLM positions of a decoding loader's items (`model`: a SpeechLLM, or anything with .frontend,
    .encoder, .adaptor and .prompt; `cfg`: the DecodeConfig; `hotwords`: the list of every line without its own;
    `prompted`: whether prompts render the lists; `lines`: a LinePrompts of them; `task`: the task of every line
    without its own, decode --task)."""

    model: object
    cfg: object
    hotwords: list[str] | None = None
    prompted: bool = True
    # the lines' prompt counts, shared with decoding_prompt (start-up reads each line once); made where not given
    lines: LinePrompts | None = None
    task: str | None = None

    def __post_init__(self):
        if self.lines is None:
            self.lines = LinePrompts(self.model.prompt, self.hotwords, self.prompted, task=self.task)
        elif not self.lines.agrees(self.model.prompt, self.hotwords, self.prompted, self.task):
            raise ValueError("DecodeRows: `lines` counts prompts under another prompt builder, list or `prompted`")

    @property
    def budget(self) -> int | None:
        return self.cfg.max_llm_tokens

    def __call__(self, manifest, durations, data_cfg) -> tuple[np.ndarray, np.ndarray]:
        """(each item's input positions, the positions generation may add to it), both x num_beams, for `manifest`'s
        items of `durations` (0 where the duration is unknown: the loader reports those as bad)."""
        d = np.asarray(durations, dtype=np.float64)
        seconds = heard_seconds(d, data_cfg, self.model.frontend, train=False)
        known = np.flatnonzero(~np.isnan(seconds))
        inputs, new = np.zeros(d.shape, dtype=np.int64), np.zeros(d.shape, dtype=np.int64)
        if known.size:
            inputs[known] = np.asarray(audio_tokens(self.model, seconds[known]), dtype=np.int64)
            inputs[known] += self.prompts(manifest, known)
            new[known] = [self.new_tokens(s) for s in seconds[known].tolist()]
        beams = int(self.cfg.num_beams)
        return inputs * beams, new * beams

    def new_tokens(self, seconds: float) -> int:
        """The most tokens generate writes for `seconds` of audio (models.llm_search's cap, and its end token)."""
        return self.cfg.new_token_cap(seconds) + 1

    def prompts(self, manifest, items: np.ndarray) -> np.ndarray:
        """The prompt tokens of each of `items`, rendered as the dataset renders them (0 for a line that cannot be
        read or rendered: loading reports it as bad). The windows of an utterance (a WindowedManifest's items) are
        its line's."""
        if isinstance(manifest, WindowedManifest):
            manifest, items = manifest.base, manifest.origin[np.asarray(items, dtype=np.int64)]
        return self.lines.counts(manifest, items)[0]


def decode_preview(model, cfg, manifest) -> dict:
    """What `llmasr decode` under `cfg` makes of an opened `manifest`'s utterances, each whole (no long-audio windows):
    batches (one rank), llm_positions (max and mean B x beams x (input + new) of a batch, the longest row), and the
    utterances past cfg.max_llm_tokens alone (`over`, as over_budget)."""
    from llmasr.data.config import DataConfig
    from llmasr.data.sampler_settings import decode_batching, make_sampler

    durations = np.asarray(manifest.durations(), dtype=np.float64)
    data_cfg = DataConfig(batching=decode_batching(cfg.batch_seconds, len(durations), cfg.max_llm_tokens))
    rows = DecodeRows(model, cfg)(manifest, durations, data_cfg)
    known = np.flatnonzero(~np.isnan(durations))
    sampler = make_sampler(data_cfg, durations, None, model.frontend, train=False, rank=0, world_size=1,
                           indices=known, keep_every_item=True, llm_lens=rows[0], llm_new=rows[1])  # fmt: skip
    st = sampler.stats(0)
    loader = SimpleNamespace(dataset=SimpleNamespace(manifest=manifest), batch_sampler=sampler, llm_rows=rows)
    over = over_budget(loader, cfg) if cfg.max_llm_tokens is not None else []
    return {"batches": len(sampler), "llm_positions": st.get("llm_positions"), "over": over, "lines": len(known)}


def over_budget(loader, cfg, name: str = "", say: bool = False) -> list[dict]:
    """The items of a decoding `loader` (its counts, `loader.llm_rows`; none without them) that alone pass
    cfg.max_llm_tokens and are decoded each in a batch of its own: manifest line, key, and their counts (per beam:
    input, new_tokens). `say`: warn of them (over_budget_text, `name`: what is decoded)."""
    if loader.llm_rows is None:
        return []
    manifest, (inputs, new) = loader.dataset.manifest, loader.llm_rows
    batched = np.zeros(len(manifest), dtype=bool)
    batched[loader.batch_sampler.base_indices] = True  # a line whose header could not be read is a bad line
    beams, out = int(cfg.num_beams), []
    for i in np.flatnonzero(batched & (inputs + new > cfg.max_llm_tokens)).tolist():
        try:
            key = manifest[i].key
        except BadRecord:
            key = None
        out.append({"line": int(manifest.lineno(i)), "key": key, "positions": int(inputs[i] + new[i]),
                    "input": int(inputs[i] // beams), "new_tokens": int(new[i] // beams)})  # fmt: skip
    if out and say:
        log.warning("%s", over_budget_text(name, out, cfg))
    return out


def over_budget_text(name: str, over: list[dict], cfg, show: int = 5) -> str:
    """What the log says of the items `over_budget` found (`name`: what is decoded): how many, the first `show`."""
    beams = f", x {cfg.num_beams} beams" if cfg.num_beams > 1 else ""
    named = "; ".join(
        f"line {o['line']} (key {o['key']}): {o['positions']} ({o['input']} prompt and audio tokens + up to "
        f"{o['new_tokens']} new{beams})"
        for o in over[:show]
    )
    more = f"; and {len(over) - show} more (wer.json: over_llm_budget)" if len(over) > show else ""
    return (
        f"{name}: {len(over)} item(s) alone take more LLM positions than decode.max_llm_tokens {cfg.max_llm_tokens}; "
        f"each is decoded in a batch of its own: {named}{more}"
    )
