"""The chat template a prompt is rendered with: where it comes from, what it renders with, and how an export keeps it.

A recipe's model.prompt.chat_template (a Jinja text or a file) replaces the tokenizer's own; without either there
is no prompt. Every render sees the same variables (`render_variables`: model.prompt.template_kwargs and a fixed
date for templates that stamp "today"; `template_reads` tells which of them a template reads), and `standalone`
writes them into the template's top so that a plain `apply_chat_template` on an exported tokenizer renders the
prompt the model was trained on.

PromptError lives here, the lowest of the prompt's modules, which raises it first (llmasr.models.prompt builds the
prompts themselves).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
from pathlib import Path

from llmasr.text_files import not_utf8

# The date a chat template that stamps "today" (Llama 3.x, SmolLM3: strftime_now, date_string) renders: a fixed one,
# so that the prompt a model trains on is the prompt it decodes with, on any day (Llama's own fallback date).
TEMPLATE_DATE = datetime.datetime(2024, 7, 26)


class PromptError(ValueError):
    """The tokenizer or the prompt settings cannot produce a usable prompt."""


def read_chat_template(path: Path) -> str:
    """The text of the chat template file model.prompt.chat_template names; one saved in a local code page is
    refused naming it (the raw UnicodeDecodeError named no file)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise PromptError(f"model.prompt.chat_template: {path}: {not_utf8(err, path)}") from None


def set_chat_template(tokenizer, chat_template: str | None, source: str) -> None:
    """Give `tokenizer` model.prompt.chat_template (a Jinja text, or the path of a file holding one) when set, and
    refuse a tokenizer left without any (`source` names it)."""
    if chat_template:
        template_path = Path(chat_template)
        if len(chat_template) < 4096 and "{" not in chat_template:
            if not template_path.is_file():
                raise PromptError(f"model.prompt.chat_template: file not found: {chat_template}")
            chat_template = read_chat_template(template_path)
        tokenizer.chat_template = chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError(
            f"{source} has no chat template (tokenizer_config.json / chat_template.jinja). Use an instruct "
            "tokenizer, or set model.prompt.chat_template to a Jinja template (text or file path)."
        )


class _TemplateDay(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls.fromtimestamp(TEMPLATE_DATE.timestamp(), tz)


@contextlib.contextmanager
def fixed_today():
    """transformers renders a template's strftime_now() from its module's `datetime.now()` (a template may call it
    whatever date_string says; a callable passed in is replaced by a placeholder): TEMPLATE_DATE while rendering."""
    try:
        from transformers.utils import chat_template_utils as ctu
    except ImportError:
        yield
        return
    real = getattr(ctu, "datetime", None)
    if not (isinstance(real, type) and issubclass(real, datetime.datetime)):  # another layout: leave it alone
        yield
        return
    ctu.datetime = _TemplateDay
    try:
        yield
    finally:
        ctu.datetime = real


def render_variables(template_kwargs: dict) -> dict:
    """The variables besides the chat every prompt is rendered with: template_kwargs and the fixed date."""
    return {"date_string": TEMPLATE_DATE.strftime("%d %b %Y"), **template_kwargs}


def template_reads(template: str | dict) -> set[str] | None:
    """The names `template` (a dict of named templates: any of them) reads that it does not set itself, as jinja2
    finds them in its source; None where it cannot be parsed here (a tag of another renderer's), so that a caller
    cannot tell what it reads."""
    try:
        import jinja2
        from jinja2 import meta
    except ImportError:
        return None
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols", _generation_tag()])
    texts = template.values() if isinstance(template, dict) else [template]
    try:
        return set().union(*(meta.find_undeclared_variables(env.parse(t)) for t in texts))
    except jinja2.TemplateSyntaxError:
        return None


def _generation_tag():
    """transformers' `{% generation %}...{% endgeneration %}` (the assistant's tokens), parsed as its body."""
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    return GenerationTag


def standalone(template: str | dict, template_kwargs: dict) -> str | dict:
    """`template` with render_variables set at its top where a caller passes none of them, so a plain
    `apply_chat_template` renders llmasr's prompt (Qwen3's enable_thinking: false included) and a caller can
    still pass its own values (a dict of named templates: each of them)."""
    odd = [name for name in template_kwargs if not str(name).isidentifier()]
    if odd:
        raise PromptError(f"model.prompt.template_kwargs: {odd} are not names a chat template can read")
    prelude = (
        "".join(
            f"{{%- if {name} is not defined %}}{{%- set {name} = {_jinja_literal(value)} %}}{{%- endif %}}"
            for name, value in render_variables(template_kwargs).items()
        )
        + "{{ '' }}"
    )  # what follows a block tag loses its first newline (trim_blocks): the template's own stays
    if isinstance(template, dict):
        return {name: prelude + text for name, text in template.items()}
    return prelude + template


def _jinja_literal(value) -> str:
    """`value` (what a YAML recipe holds) written as a Jinja expression."""
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        if value != value or value in (math.inf, -math.inf):
            raise PromptError(f"model.prompt.template_kwargs: {value!r} cannot be written into a chat template")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_jinja_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_jinja_literal(v)}" for k, v in value.items()) + "}"
    raise PromptError(f"model.prompt.template_kwargs: a {type(value).__name__} cannot be written into a chat template")
