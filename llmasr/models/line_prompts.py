"""Each manifest line's decode prompt in LLM tokens, counted once for decoding's start-up.

Two start-up steps need the prompt every line renders (its task, system message and biasing list, as the dataset
renders them): the longest of them decides the window that fits the LLM's context (context.decoding_prompt), and
each item's count goes into its LLM positions for decode.max_llm_tokens (llmasr.train.decode_rows). A LinePrompts
counts a line once for both: the two Manifest objects the steps open on one file (its path, the sha1 of its text and
need_target alike) share the counts. Within a call, each distinct (task, system, list) is rendered once and the
rendered texts are tokenized together (PromptBuilder.prompt_sizes).

On N decoding ranks (`world`, llmasr.export.decode_world.DecodeWorld) each rank counts its share of the lines a call
has not counted yet and one gather gives every rank all of them, so that every rank plans the same batches. A call
is then a collective where it counts: every rank asks for the same lines in the same order (the same manifest, the
same plan), and so has counted the same lines before it.
"""

from __future__ import annotations

import numpy as np

from llmasr.data.records import BadRecord, given_hotwords, task_of

GIVES = ("prompt", "system", "hotwords")  # what bit k of a line's `fields` says it gives itself
CHUNK = 4096  # lines parsed before their prompts are tokenized together: bounds what a call holds at once
SEEN = 1 << 16  # prompts a call remembers (a list a line owns is seldom another's): bounds its memory


class LinePrompts:
    """The decode prompt tokens of manifest lines under `prompt` (a PromptBuilder): a line's own biasing list, else
    `hotwords` (the --hotwords list); no list at all when `lists` is False (the lists are scored, not prompted).
    `world`: the decoding ranks that share the counting (line_share, merge_lines); None: this process counts all.
    `task`: the task of every line without its own `prompt` (decode --task)."""

    def __init__(self, prompt, hotwords=None, lists: bool = True, world=None, task: str | None = None):
        self.prompt, self.hotwords, self.lists = prompt, list(hotwords or ()), bool(lists)
        self.task = task
        self.world = world
        self._found: dict = {}  # manifest key -> (tokens int64 [N], -1 where not counted yet; fields uint8 [N])

    @property
    def ranks(self) -> int:
        """How many ranks share a call's counting."""
        return 1 if self.world is None else self.world.size

    def agrees(self, prompt, hotwords, lists: bool, task: str | None = None) -> bool:
        """Whether these counts are the ones `prompt`, `hotwords`, `lists` and `task` give."""
        same = self.prompt is prompt and self.hotwords == list(hotwords or ()) and self.lists == bool(lists)
        return same and self.task == task

    def counts(self, manifest, lines) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, fields) of `manifest`'s `lines` (indices): tokens as PromptBuilder.encode renders the line, 0
        for a line that cannot be read or rendered (loading reports it as bad); fields: bit k set where the line
        gives GIVES[k] itself (its list only where lists are prompted)."""
        lines = np.asarray(lines, dtype=np.int64)
        tokens, fields = self._arrays(manifest)
        asked = lines[tokens[lines] < 0]
        _, first = np.unique(asked, return_index=True)
        todo = asked[np.sort(first)]  # each line once, in the order asked: on N ranks a share has lines of every length
        if todo.size:
            self._count_share(manifest, todo, tokens, fields)
        return tokens[lines], fields[lines]

    def _count_share(self, manifest, todo: np.ndarray, tokens: np.ndarray, fields: np.ndarray) -> None:
        mine = todo if self.world is None else self.world.line_share(todo)
        seen: dict = {}  # (task, system, list) -> tokens, for this call
        failure = None
        try:
            for start in range(0, mine.size, CHUNK):
                self._count(manifest, mine[start : start + CHUNK].tolist(), tokens, fields, seen)
        except Exception as err:
            if self.world is None:
                raise
            failure = err  # raised in the gather: the other ranks stop with it rather than wait for this one
        if self.world is not None:
            self.world.merge_lines(todo, tokens, fields, failure)

    def _arrays(self, manifest) -> tuple[np.ndarray, np.ndarray]:
        sha1 = getattr(manifest, "sha1", None)
        key = (manifest.path, sha1, getattr(manifest, "need_target", True), len(manifest)) if sha1 else id(manifest)
        if key not in self._found:  # an id key keeps its manifest, so that the id is not another's later
            n = len(manifest)
            held = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.uint8), None if sha1 else manifest
            self._found[key] = held
        return self._found[key][:2]

    def _count(self, manifest, lines: list[int], tokens: np.ndarray, fields: np.ndarray, seen: dict) -> None:
        asked: dict = {}  # (task, system, list) -> its lines
        for i in lines:
            try:
                utt = manifest[i]
            except BadRecord:
                tokens[i] = 0
                continue
            task, system = task_of(utt), getattr(utt, "system", None)
            own = self.lists and getattr(utt, "hotwords", None) is not None
            fields[i] = (task is not None) | (system is not None) << 1 | own << 2
            task = task if task is not None else self.task
            listed = given_hotwords(utt, self.hotwords) if self.lists else ()
            asked.setdefault((task, system, tuple(listed)), []).append(i)
        new = [how for how in asked if how not in seen]
        if len(seen) + len(new) > SEEN:
            seen.clear()
            new = list(asked)
        sizes = self.prompt.prompt_sizes([(task, list(listed), system) for task, system, listed in new])
        seen.update((how, 0 if n is None else n) for how, n in zip(new, sizes, strict=True))
        for how, where in asked.items():
            tokens[where] = seen[how]
