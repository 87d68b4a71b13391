"""`llmasr check` says which prompt a run trains and decodes with: the chat template it renders, the token sequence
around the audio and the transcript, the tokens an answer ends at (the template's and generation_config.json's), the
padding token and the template variables; and it warns where the template writes something before a finished answer
that its generation prompt does not (Qwen3's empty reasoning block with thinking left on)."""

import json

import pytest
from check_runner import run_check

from llmasr.testing.tiny_llm import CHATML_TEMPLATE, write_tiny_llm_dir

# Qwen3's behaviour around a finished answer: its template writes an empty reasoning block before the answer of the
# last turn, and its generation prompt writes that block only with enable_thinking false.
QWEN3_TURNS = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}{%- endif -%}"
)


@pytest.fixture(scope="module")
def qwen3_like(tmp_path_factory):
    """(a tiny LLM directory whose generation_config.json ends answers at <|im_end|> and <|endoftext|>, as Qwen's
    does, and a chat template file of Qwen3's answer turn)."""
    root = tmp_path_factory.mktemp("qwen3_like")
    llm = write_tiny_llm_dir(root / "llm")
    gen = json.loads((llm / "generation_config.json").read_text())
    tok = json.loads((llm / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    gen["eos_token_id"] = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    (llm / "generation_config.json").write_text(json.dumps(gen))
    template = root / "qwen3.jinja"
    template.write_text(QWEN3_TURNS)
    return llm, template, ids


def _prompt_section(out: str) -> list[str]:
    lines = out.splitlines()
    start = lines.index("prompt")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("  "))
    return lines[start:end]


def test_check_names_the_prompt_and_the_end_tokens_and_warns_of_a_block_the_prompt_leaves_out(
    recipe_file, qwen3_like, tmp_path, capsys
):
    llm, template, ids = qwen3_like
    base = ["--config", str(recipe_file), "--deepspeed", "zero0", f"model.llm.path={llm}",
            f"model.prompt.chat_template={template}"]  # fmt: skip
    code, out, err = run_check(capsys, *base, "--out", str(tmp_path / "a"))
    assert code == 0, err
    section = _prompt_section(out)
    end, other = f"<|im_end|> (id {ids['<|im_end|>']})", f"<|endoftext|> (id {ids['<|endoftext|>']})"
    assert section[1] == f"  chat template: model.prompt.chat_template ({template})"
    assert section[2] == (
        "  trained on: '<|im_start|>user\\nTranscribe the audio.\\n' + audio + "
        f"'<|im_end|>\\n<|im_start|>assistant\\n' + transcript + {end}"
    )
    assert f"  an answer ends at {end}; also at {other} (generation_config.json)" in section
    assert f"  padding: {other}; template variables: none read" in section  # Qwen3's reads no date_string
    warning = [line for line in section if line.startswith("  warning:")]
    assert len(warning) == 1 and "writes '<think>\\n\\n</think>\\n\\n' before a finished answer" in warning[0]
    assert "template_kwargs: {enable_thinking: false}" in warning[0]

    # enable_thinking false: the prompt ends in the block Qwen3 writes before an answer; nothing to warn of
    code, out, err = run_check(capsys, *base, "model.prompt.template_kwargs={enable_thinking: false}",
                               "--out", str(tmp_path / "b"))  # fmt: skip
    assert code == 0, err
    section = _prompt_section(out)
    assert section[2].endswith(
        f"'<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + transcript + {end}"
    )
    assert section[5].endswith("template variables: enable_thinking=False")
    assert not [line for line in section if "warning" in line]


def test_a_training_start_up_warns_of_the_block_in_train_log(qwen3_like, tmp_path):
    """A run started without `llmasr check` is told too: train.log warns before the first update that the LLM will
    learn to answer in a turn its template does not render, and says nothing with enable_thinking false."""
    from llmasr.commands.train import main as train_main
    from llmasr.testing.tiny_corpus import recipe_with_targets

    llm, template, _ = qwen3_like
    recipe, _ = recipe_with_targets(tmp_path, llm, {})
    said = "writes '<think>\\n\\n</think>\\n\\n' before a finished answer"
    common = ["--deepspeed", "zero0", f"model.prompt.chat_template={template}", "train.max_updates=1"]
    assert train_main(["--config", str(recipe), *common]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert said in log and log.index(said) < log.index(" train update=")
    assert "template_kwargs: {enable_thinking: false}" in log
    quiet = [*common, "model.prompt.template_kwargs={enable_thinking: false}", f"train.output_dir={tmp_path / 'q'}"]
    assert train_main(["--config", str(recipe), *quiet]) == 0
    assert said not in (tmp_path / "q" / "train.log").read_text()


DATED = "{{- 'Today Date: ' + date_string + '\\n' -}}" + CHATML_TEMPLATE


@pytest.mark.parametrize("dated", [False, True])
def test_check_lists_the_template_variables_the_template_reads(recipe_file, qwen3_like, tmp_path, capsys, dated):
    """check had listed date_string='26 Jul 2024' for every template, Qwen3's too, which never reads it; it lists
    what the template reads (Llama 3's date_string), and names a template_kwargs key it never reads (a misspelling)."""
    llm, _, _ = qwen3_like
    template = tmp_path / "t.jinja"
    template.write_text(DATED if dated else CHATML_TEMPLATE)
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero0", f"model.llm.path={llm}",
                               f"model.prompt.chat_template={template}",
                               "model.prompt.template_kwargs={enable_thinkng: false}",
                               "--out", str(tmp_path / "a"))  # fmt: skip
    assert code == 0, err
    line = _prompt_section(out)[5]
    read = "date_string='26 Jul 2024'" if dated else "none read"
    assert line.endswith(f"template variables: {read}; model.prompt.template_kwargs the template never reads: "
                         "['enable_thinkng']"), line  # fmt: skip


@pytest.mark.parametrize("given", ["'false'", "0"])
def test_an_enable_thinking_that_is_not_the_boolean_false_is_named(recipe_file, qwen3_like, tmp_path, capsys, given):
    """Qwen3's template tests `enable_thinking is false`, which only the boolean passes: a quoted 'false' (or 0) left
    thinking on, and the warning had dropped its hint because enable_thinking was set. It names the value's type."""
    llm, template, _ = qwen3_like
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero0", f"model.llm.path={llm}",
                               f"model.prompt.chat_template={template}",
                               f"model.prompt.template_kwargs.enable_thinking={given}",
                               "--out", str(tmp_path / "a"))  # fmt: skip
    assert code == 0, err
    warning = [line for line in _prompt_section(out) if line.startswith("  warning:")]
    value = eval(given)
    said = (
        f"model.prompt.template_kwargs.enable_thinking is {value!r}, a {type(value).__name__}, which the "
        "template's `enable_thinking is false` does not take as false: write false, unquoted"
    )
    assert len(warning) == 1 and said in warning[0], warning


@pytest.fixture(scope="module")
def bos_adding_llm(tmp_path_factory):
    """A tiny LLM directory whose tokenizer.json starts every text it encodes with a BOS token, as Llama 3's does
    (<|begin_of_text|>; here <|endoftext|>), its tokenizer_config.json naming it bos_token, and no chat template."""
    from tokenizers import Tokenizer, processors

    llm = write_tiny_llm_dir(tmp_path_factory.mktemp("bos") / "llm", chat_template=None)
    tok = Tokenizer.from_file(str(llm / "tokenizer.json"))
    bos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B", special_tokens=[("<|endoftext|>", bos)]
    )
    tok.save(str(llm / "tokenizer.json"))
    config = json.loads((llm / "tokenizer_config.json").read_text())
    config["bos_token"] = "<|endoftext|>"
    (llm / "tokenizer_config.json").write_text(json.dumps(config))
    return llm, bos


BOS_CHATML = "{{- bos_token -}}" + CHATML_TEMPLATE


@pytest.mark.parametrize("with_bos", [False, True])
def test_a_template_without_the_bos_the_tokenizer_adds_is_warned(
    recipe_file, bos_adding_llm, tmp_path, capsys, with_bos
):
    """A base Llama 3 given a chat template of the user's that does not write `{{ bos_token }}`: llmasr (as
    transformers' apply_chat_template) renders no <|begin_of_text|>, though the LLM met it first in every text it was
    trained on. It had trained so without a word; check says it (and a training start-up, whose log it shares)."""
    llm, bos = bos_adding_llm
    template = tmp_path / "t.jinja"
    template.write_text(BOS_CHATML if with_bos else CHATML_TEMPLATE)
    code, out, err = run_check(capsys, "--config", str(recipe_file), "--deepspeed", "zero0", f"model.llm.path={llm}",
                               f"model.prompt.chat_template={template}", "--out", str(tmp_path / "a"))  # fmt: skip
    assert code == 0, err
    warning = [line for line in _prompt_section(out) if line.startswith("  warning:")]
    said = (
        f"  warning: the tokenizer of {llm} starts every text it encodes with <|endoftext|> (id {bos}), and the chat "
        "template's prompt does not start with it: the LLM was trained with it first; write {{ bos_token }} at the "
        "template's start"
    )
    assert warning == ([] if with_bos else [said])
