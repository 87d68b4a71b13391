"""CTC vocabularies, head, loss, target validation and greedy decoding."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

from llmasr.config_io import ConfigError, from_dict
from llmasr.models.config import ModelConfig
from llmasr.models.ctc import CTCHead, build_ctc_tokenizer, ctc_greedy, ctc_loss, ctc_unalignable, validate_ctc_targets
from llmasr.models.ctc_config import CTCConfig
from llmasr.models.ctc_vocab import ctc_collapse

SENTENCES = ["one two three", "four five six", "seven eight nine zero", "two four six eight", "one three five seven"]


def train_sentencepiece(tmp_path, name: str, **extra) -> str:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4),
        model_prefix=str(tmp_path / name),
        vocab_size=30,
        model_type="bpe",
        hard_vocab_limit=False,
        minloglevel=2,
        **extra,
    )
    return str(tmp_path / f"{name}.model")


def hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1}
    for w in sorted({w for s in SENTENCES for w in s.split()}):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def test_llm_vocab_appends_blank():
    hf = hf_tokenizer()
    tok = build_ctc_tokenizer(CTCConfig(vocab="llm"), hf)
    assert tok.blank_id == len(hf) and tok.vocab_size == len(hf) + 1
    ids = tok.encode("two four six")
    assert ids == hf("two four six", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "two four six"
    frames = [tok.blank_id, ids[0], ids[0], tok.blank_id, ids[1], tok.blank_id, ids[2], ids[2]]
    assert tok.decode_ctc(frames) == "two four six"
    with pytest.raises(ConfigError, match="LLM tokenizer"):
        build_ctc_tokenizer(CTCConfig(vocab="llm"))


def test_sentencepiece_vocab(tmp_path):
    path = train_sentencepiece(tmp_path, "plain")
    tok = build_ctc_tokenizer(CTCConfig(vocab=path))
    import sentencepiece as spm

    size = spm.SentencePieceProcessor(model_file=path).get_piece_size()
    assert tok.blank_id == size and tok.vocab_size == size + 1
    ids = tok.encode("seven eight nine")
    assert ids and max(ids) < size
    assert tok.decode(ids) == "seven eight nine"
    assert tok.decode_ctc([ids[0], ids[0], tok.blank_id, *ids[1:]]) == "seven eight nine"


def test_what_a_vocabulary_spells_unk_is_named(tmp_path):
    """A token list with <unk> and a sentencepiece model name what they spell <unk> (a character each); a token list
    without <unk> refuses the word instead, and the LLM's byte-level vocabulary spells everything."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(["<blank>", "<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"]))
    listed = build_ctc_tokenizer(CTCConfig(vocab=str(tokens)))
    assert listed.unknown_parts("naïve") == ["ï"] and listed.unknown_parts("naive") == []
    assert listed.encode("naïve")[2] == listed.unk_id
    tokens.write_text(json.dumps(["<blank>", " ", *"abcdefghijklmnopqrstuvwxyz"]))
    assert build_ctc_tokenizer(CTCConfig(vocab=str(tokens))).unknown_parts("naïve") == []
    sp = build_ctc_tokenizer(CTCConfig(vocab=train_sentencepiece(tmp_path, "plain")))
    assert sp.unknown_parts("seven") == [] and sp.unknown_parts("sev€n") == ["€"]
    assert sp.sp.unk_id() in sp.encode("sev€n")


def test_sentencepiece_own_blank(tmp_path):
    path = train_sentencepiece(tmp_path, "withblank", user_defined_symbols=["<blank>"])
    tok = build_ctc_tokenizer(CTCConfig(vocab=path))
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=path)
    assert tok.blank_id == sp.piece_to_id("<blank>") and tok.vocab_size == sp.get_piece_size()


def test_a_named_blank_is_that_entry_of_the_vocabulary(tmp_path):
    """SenseVoiceSmall's CTC head uses its sentencepiece model's <unk> (id 0) as the blank: `model.ctc.blank`."""
    import sentencepiece as spm

    path = train_sentencepiece(tmp_path, "unkblank")
    sp = spm.SentencePieceProcessor(model_file=path)
    tok = build_ctc_tokenizer(CTCConfig(vocab=path, blank="<unk>"))
    assert tok.blank_id == sp.unk_id() == 0 and tok.vocab_size == sp.get_piece_size()
    assert tok.decode_ctc([0, *tok.encode("two four"), 0]) == "two four"
    with pytest.raises(ConfigError, match=r"model.ctc.blank: '<eps>' is not a piece of the sentencepiece model"):
        build_ctc_tokenizer(CTCConfig(vocab=path, blank="<eps>"))
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(["<unk>", "a", "b"]))
    listed = build_ctc_tokenizer(CTCConfig(vocab=str(tokens), blank="<unk>"))
    assert (listed.blank_id, listed.vocab_size) == (0, 3)
    with pytest.raises(ConfigError, match="'<blk>' is not an entry of the token list"):
        build_ctc_tokenizer(CTCConfig(vocab=str(tokens), blank="<blk>"))
    with pytest.raises(ConfigError, match=r"model.ctc.blank: names the blank entry of a sentencepiece model"):
        from_dict(CTCConfig, {"vocab": "llm", "blank": "<unk>"}, "model.ctc")


def test_tokens_json_funasr_style(tmp_path):
    tokens = ["<blank>", "<s>", "</s>", "你", "好", "hello", "world", "<unk>"]
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
    tok = build_ctc_tokenizer(CTCConfig(vocab=str(path)))
    assert tok.blank_id == 0 and tok.vocab_size == len(tokens)
    assert tok.encode("你好 hello") == [3, 4, 5]
    assert tok.encode("你们") == [3, 7]  # unknown character -> <unk>
    # as FunASR's sentence_postprocess writes it: no space next to a Chinese character, <s>, </s>, <unk> left out
    assert tok.decode([3, 4, 5, 6]) == "你好hello world" and tok.decode([5, 3, 7, 1, 6, 2]) == "hello你world"
    assert tok.decode_ctc([0, 3, 3, 0, 4, 4, 5]) == "你好hello"


def test_tokens_txt_chars_with_separator_and_missing_char(tmp_path):
    chars = ["<space>", "a", "b", "c"]
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(chars) + "\n")
    tok = build_ctc_tokenizer(CTCConfig(vocab=str(path)))
    assert tok.blank_id == 4 and tok.vocab_size == 5  # no <blank> listed: appended
    assert tok.encode("ab c") == [1, 2, 0, 3]
    assert tok.decode([1, 2, 0, 3]) == "ab c"
    with pytest.raises(ValueError, match=r"tokens\.txt: character 'z'"):
        tok.encode("abz")


def test_a_letter_list_without_a_word_separator_is_pointed_out(tmp_path, caplog):
    """Letters and no <space>: two words spelled letter by letter have no label between them, and the CTC text runs
    them together ("TWOONE"), which had been said nowhere; a list with a separator, or of CJK characters and whole
    words, is not pointed out."""
    letters = tmp_path / "letters.json"
    letters.write_text(json.dumps(["<blank>", *"eonwt", "<unk>"]))
    with caplog.at_level("WARNING", logger="llmasr.models.ctc"):
        tok = build_ctc_tokenizer(CTCConfig(vocab=str(letters)))
    assert tok.decode(tok.encode("two one")) == "TWOONE"
    said = [r.getMessage() for r in caplog.records if "no word separator" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"model.ctc.vocab {letters} spells a word it does not list letter")
    assert "Add '<space>' to the list" in said[0]
    caplog.clear()
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("\n".join(["<blank>", "<space>", *"eonwt"]) + "\n")
    cjk = tmp_path / "cjk.json"
    cjk.write_text(json.dumps(["<blank>", "你", "好", "hello", "<unk>"], ensure_ascii=False), encoding="utf-8")
    with caplog.at_level("WARNING", logger="llmasr.models.ctc"):
        assert build_ctc_tokenizer(CTCConfig(vocab=str(spaced))).decode_ctc([3, 4, 2, 1, 3, 4, 2]) == "one one"
        build_ctc_tokenizer(CTCConfig(vocab=str(cjk)))
    assert "no word separator" not in caplog.text


def test_a_token_list_saved_with_a_bom(tmp_path):
    for name, text in (("tokens.txt", "a\nb\n<space>\n"), ("tokens.json", '["a", "b", "<space>"]')):
        path = tmp_path / name
        path.write_text("\ufeff" + text, encoding="utf-8")
        tok = build_ctc_tokenizer(CTCConfig(vocab=str(path)))
        assert tok.encode("ab a") == [0, 1, 2, 0], name  # "a" is the first token, not "\ufeffa"


def test_a_line_list_whose_first_token_starts_with_a_bracket(tmp_path):
    """A one-token-a-line list opening with [PAD] is a line list (it had been read as broken JSON); a .json file
    that is not JSON is still an error."""
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\na\nb\n")
    tok = build_ctc_tokenizer(CTCConfig(vocab=str(path)))
    assert tok.encode("ab") == [1, 2] and tok.vocab_size == 4
    bad = tmp_path / "tokens.json"
    bad.write_text("[PAD]\na\n")
    with pytest.raises(ValueError, match="tokens.json: not a valid JSON token list"):
        build_ctc_tokenizer(CTCConfig(vocab=str(bad)))


def test_units_txt_with_ids(tmp_path):
    path = tmp_path / "units.txt"
    path.write_text("<blk> 0\none 1\ntwo 2\n<unk> 3\n")
    tok = build_ctc_tokenizer(CTCConfig(vocab=str(path)))
    assert tok.blank_id == 0 and tok.vocab_size == 4
    assert tok.encode("one two") == [1, 2]
    assert tok.decode([1, 2]) == "one two"
    # ids are head rows: a gap or a list starting at 1 had been renumbered by position, shifting every later token
    for text, at in (("<blk> 0\none 1\ntwo 3\n", "'two' with id 3 \\(expected 2\\)"),
                     ("one 1\ntwo 2\n", "'one' with id 1 \\(expected 0\\)"),
                     ("<blk> 0\none 1\ntwo 1\n", "'two' with id 1 \\(expected 2\\)")):  # fmt: skip
        path.write_text(text)
        with pytest.raises((ConfigError, ValueError), match=f"ids must run 0, 1, 2, ... .*{at}"):
            build_ctc_tokenizer(CTCConfig(vocab=str(path)))


def test_a_token_list_of_mixed_line_forms_is_refused_naming_the_line(tmp_path):
    """A "token id" list with one bare line had been read as a plain list: every "token id" line a token holding a
    space, which text (cut at spaces) never meets, so the head trained on <unk>s with no word."""
    path = tmp_path / "units.txt"
    for text, at in (("<blk> 0\none 1\ntwo\n<unk> 3\n", "line 3: 'two' is not 'token id', as other lines are"),
                     ("<blk>\n\none two\n", "line 3: 'one two' is not one token")):  # fmt: skip
        path.write_text(text)
        with pytest.raises((ConfigError, ValueError), match=re.escape(f"{path}, {at}")):
            build_ctc_tokenizer(CTCConfig(vocab=str(path)))


def test_missing_vocab_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.model"):
        build_ctc_tokenizer(CTCConfig(vocab=str(tmp_path / "nope.model")))
    with pytest.raises(ConfigError, match="tokens.txt"):
        build_ctc_tokenizer(CTCConfig(vocab=str(tmp_path / "tokens.txt")))


@pytest.mark.parametrize(
    "name, content, said",
    [("tokens.txt", "<blank>\na\n你\n".encode("gbk"), "not UTF-8 text"),
     ("bpe.model", b"not a sentencepiece model", "not a readable sentencepiece model"),
     ("empty.txt", b"\n", "no tokens")],
)  # fmt: skip
def test_a_vocab_file_that_cannot_be_read_is_named_as_bad_input(tmp_path, name, content, said):
    """A token list saved in a local code page (GBK) reached the user as a raw UnicodeDecodeError naming no file, a
    damaged sentencepiece model as sentencepiece's RuntimeError; a token list's own refusals exited 1 (a crash), not
    2 (bad input), as ValueErrors."""
    from llmasr.errors import exit_status

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(f"CTC vocabulary {path}: {said}")) as caught:
        build_ctc_tokenizer(CTCConfig(vocab=str(path)))
    assert exit_status(caught.value) == 2


def batch(seed=0, b=3, t=20, v=7, s=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, requires_grad=True)
    lens = torch.tensor([20, 15, 9])
    targets = torch.randint(1, v, (b, s), generator=g)
    target_lens = torch.tensor([5, 3, 1])
    targets[1, 3:] = -1  # padding beyond target_lens is ignored
    targets[2, 1:] = -1
    return logits, lens, targets, target_lens


def test_loss_equals_torch_ctc_without_smoothing():
    logits, lens, targets, target_lens = batch()
    head_lp = logits.log_softmax(-1)
    ours = ctc_loss(head_lp, lens, targets, target_lens, blank_id=0)
    ref = F.ctc_loss(
        head_lp.transpose(0, 1), targets.clamp(min=0), lens, target_lens, blank=0, reduction="sum", zero_infinity=True
    )
    torch.testing.assert_close(ours, ref)
    per = ctc_loss(head_lp, lens, targets, target_lens, blank_id=0, reduction="none")
    assert per.shape == (3,)
    torch.testing.assert_close(ctc_loss(head_lp, lens, targets, target_lens, 0, reduction="mean"), per.mean())


def test_smoothing_differs_and_is_finite():
    logits, lens, targets, target_lens = batch()
    lp = logits.log_softmax(-1)
    plain = ctc_loss(lp, lens, targets, target_lens, blank_id=0)
    smooth = ctc_loss(lp, lens, targets, target_lens, blank_id=0, label_smoothing=0.1)
    assert torch.isfinite(smooth) and not torch.allclose(smooth, plain)
    # The added term: 0.1 * sum over utterances of the mean over valid frames of -mean_v log p.
    extra = sum(float(-lp[b, : int(n)].detach().mean()) for b, n in enumerate(lens))
    torch.testing.assert_close(smooth, plain + 0.1 * extra, rtol=1e-5, atol=1e-4)
    smooth.backward()
    assert torch.isfinite(logits.grad).all()


def test_impossible_alignment_is_zeroed():
    lp = torch.randn(1, 2, 5).log_softmax(-1)
    loss = ctc_loss(lp, torch.tensor([2]), torch.tensor([[1, 2, 3, 4]]), torch.tensor([4]), blank_id=0)
    assert loss.item() == 0.0
    # with label smoothing too: the smoothing pull had still trained the head on an utterance CTC has no path for
    logits = torch.randn(2, 4, 5, requires_grad=True)
    targets, target_lens = torch.tensor([[1, 2], [1, 2]]), torch.tensor([2, 2])
    per_utt = ctc_loss(logits.log_softmax(-1), torch.tensor([4, 1]), targets, target_lens, blank_id=0,
                       label_smoothing=0.1, reduction="none")  # fmt: skip
    assert per_utt[0] > 0 and per_utt[1] == 0.0
    per_utt.sum().backward()
    assert logits.grad[1].abs().max() == 0.0 and logits.grad[0].abs().max() > 0


def test_target_validation_names_utterance_id_and_vocab():
    logits, lens, targets, target_lens = batch()
    targets[1, 2] = 7
    with pytest.raises(ValueError, match=r"id 7 at position 2 of utterance 1.*vocab_size 7"):
        validate_ctc_targets(targets, target_lens, vocab_size=7, blank_id=0)
    with pytest.raises(ValueError, match="utterance 1"):
        ctc_loss(logits.log_softmax(-1), lens, targets, target_lens, blank_id=0)
    targets[1, 2] = 0
    with pytest.raises(ValueError, match="blank"):
        validate_ctc_targets(targets, target_lens, vocab_size=7, blank_id=0)
    targets[1, 2] = 3
    targets[1, 4] = 99  # past target_lens: padding, not checked
    validate_ctc_targets(targets, target_lens, vocab_size=7, blank_id=0)


def test_head_and_greedy_decode():
    head = CTCHead(8, 6, dropout=0.1)
    lp = head(torch.randn(2, 10, 8, dtype=torch.float64).float(), torch.tensor([10, 4]))
    assert lp.shape == (2, 10, 6) and lp.dtype == torch.float32
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2, 10))

    frames = torch.tensor([[0, 3, 3, 0, 3, 2, 2, 5], [4, 4, 0, 1, 1, 1, 2, 2]])
    lp = F.one_hot(frames, 6).float().log_softmax(-1)
    assert ctc_greedy(lp, torch.tensor([8, 5]), blank_id=0) == [[3, 3, 2, 5], [4, 1]]
    assert ctc_collapse([5, 5, 5], blank_id=5) == []


@pytest.mark.parametrize("detach", [False, True])
def test_detached_head_sends_no_gradient_to_the_encoder(detach):
    """model.ctc.detach_encoder (Fun-ASR-Nano's detach_ctc_decoder): the head trains, the encoder output gets none."""
    from llmasr.models.ctc import build_ctc_head
    from llmasr.models.ctc_config import CTCConfig

    head = build_ctc_head(CTCConfig(weight=0.3, detach_encoder=detach), encoder_dim=8, vocab_size=6)
    enc = torch.randn(2, 10, 8, requires_grad=True)
    lens = torch.tensor([10, 6])
    ctc_loss(head(enc, lens), lens, torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1]), blank_id=0).backward()
    assert head.proj.weight.grad is not None and head.proj.weight.grad.abs().sum() > 0
    assert (enc.grad is None) == detach


def test_unalignable_is_exactly_where_ctc_has_no_path():
    """ctc_unalignable marks the utterances whose plain CTC loss is infinite: labels plus the blanks between equal
    neighbours outnumber the frames; padding past a target's length is never read."""
    g = torch.Generator().manual_seed(0)
    b, t_max, s_max, v = 64, 9, 7, 4  # a small vocabulary: many equal neighbours
    lp = torch.randn(b, t_max, v, generator=g).log_softmax(-1)
    lens = torch.randint(1, t_max + 1, (b,), generator=g)
    target_lens = torch.randint(0, s_max + 1, (b,), generator=g)
    targets = torch.randint(1, v, (b, s_max), generator=g)
    targets[torch.arange(s_max)[None, :] >= target_lens[:, None]] = targets[0, 0]  # padding equal to its neighbours
    plain = F.ctc_loss(lp.transpose(0, 1), targets, lens, target_lens, blank=0, reduction="none", zero_infinity=False)
    marked = ctc_unalignable(lens, targets, target_lens)
    assert marked.tolist() == torch.isinf(plain).tolist()
    assert 0 < int(marked.sum()) < b
    assert not ctc_unalignable(lens, targets[:, :0], torch.zeros(b, dtype=torch.long)).any()


def test_decoder_heads_that_do_not_divide_the_encoder_width_name_their_key():
    """model.ctc.decoder's blocks work at the encoder width; the error had named the adaptor instead."""
    from llmasr.models.ctc_config import CTCDecoderConfig

    with pytest.raises(ConfigError, match=r"model.ctc.decoder.n_head: .* encoder width 32, which n_head=3"):
        CTCHead(32, 6, decoder=CTCDecoderConfig(n_layer=1, ffn_dim=16, n_head=3))


def test_an_llm_vocab_heads_labels_spell_the_answer_as_the_llm_target_does(tiny_llm_dir, tmp_path):
    """A template that writes the answer after a space gives the LLM target " the" (one token): the CTC labels of
    an LLM-vocabulary head had stayed "t", "he", so CTC guidance, scoring the LLM's tokens as labels, ruled out the
    token the LLM was trained to write first. Both models build the labels with the template's lead; the CTC text
    and the word owners are the transcript's."""
    from llmasr.models.builder import build_model
    from llmasr.testing.tiny_recipe import tiny_model_section
    from llmasr.train.resolve import text_side

    template = tmp_path / "spaced.jinja"
    template.write_text(
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}{{- '<|im_start|>[INST] ' + message['content'] + ' [/INST]' -}}"
        "{%- elif message['role'] == 'assistant' -%}{{- ' ' + message['content'].strip() + ' <|im_end|>' -}}"
        "{%- endif -%}{%- endfor -%}",
        encoding="utf-8",
    )
    section = tiny_model_section(tiny_llm_dir, ctc_weight=0.3)
    section["prompt"] = {"chat_template": str(template)}
    for built in (build_model(section, weights="meta"), text_side(from_dict(ModelConfig, section, "model"))):
        prompt, ctc = built.prompt, built.ctc_tokenizer if hasattr(built, "ctc_tokenizer") else built.ctc
        assert prompt.answer_lead == " "
        target = "the quick brown fox"
        enc = prompt.encode(target)
        labels = ctc.encode(target)
        assert labels == enc.ids[enc.target_start : enc.target_start + len(labels)]
        assert prompt.tokenizer.convert_ids_to_tokens(labels[0]) == "Ġthe"
        assert ctc.decode(labels) == target
        units, owners = ctc.spell_units(target, [(0, 3), (4, 9), (10, 15), (16, 19)])
        assert units == labels and owners[0] == range(0, 1) and owners[-1].stop == 4
