"""Hotword boosting of phrases in scripts written without spaces, matched on the bytes the tokens spell: found however
the tokenizer merged the phrase's characters with the text around it."""

from __future__ import annotations

import random
import unicodedata

import pytest
import torch

from llmasr.models.hotword_boost import HotwordBoost
from llmasr.models.hotword_text import byte_phrases, is_text_phrase
from llmasr.models.hotword_tokens import token_bytes
from llmasr.testing.tiny_llm import train_bpe_tokenizer
from llmasr.text_units import is_no_space_char

PHRASES = ["通义千问", "千问", "阿里云", "千问模型", "语音识别"]
# "我用通义" and "千问吧" recur as words of their own, so BPE learns tokens that reach across the phrase's edges, and
# "他说通义千问好" as one token holding the whole phrase; "彧", never seen, stays three byte tokens
CORPUS = ["我用通义", "千问吧", "他说通义千问好", "阿里云的语音识别", "千问模型很好", "你好世界"] * 40


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(CORPUS, vocab_size=420)


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _gains(boost: HotwordBoost, prefix: list[int], vocab: int) -> torch.Tensor:
    return boost(torch.tensor([prefix], dtype=torch.long).reshape(1, -1), torch.zeros(1, vocab))[0]


def _total(boost: HotwordBoost, seq: list[int], end: int) -> float:
    vocab = len(boost.joins)  # the tokenizer's size, whichever match a list has
    steps = sum(float(_gains(boost, seq[:n], vocab)[seq[n]]) for n in range(len(seq)))
    return steps + float(_gains(boost, seq, vocab)[end])


def _end(tok) -> int:
    return tok.convert_tokens_to_ids("<|im_end|>")


def test_a_phrase_the_tokenizer_merged_with_its_neighbours_is_boosted(tok):
    """ "我用通义千问吧" is spelled "我用通义" "千问吧", and "他说通义千问好" is one token: "通义千问"'s own
    tokens ("通义" "千问") appear in neither, and the token-id match had earned nothing there. On bytes the phrase
    earns one boost per character, as it does alone; begun inside a merged token and broken off ("我用通义大"), or
    left unfinished at the end, it gives back what it had earned."""
    end = _end(tok)
    assert [tok.decode([t]) for t in _ids(tok, "我用通义千问吧")] == ["我用通义", "千问吧"]  # the cases
    assert [tok.decode([t]) for t in _ids(tok, "他说通义千问好")] == ["他说通义千问好"]
    assert [tok.decode([t]) for t in _ids(tok, "通义千问")] == ["通义", "千问"]
    boost = HotwordBoost([["通义千问"]], tok, 1.0, end, 1)
    for text in ("我用通义千问吧", "他说通义千问好", "通义千问"):
        assert _total(boost, _ids(tok, text), end) == 4.0, text
    assert _total(boost, _ids(tok, "我用通义大"), end) == 0.0
    assert _total(boost, _ids(tok, "我用通义"), end) == 0.0
    # while it lasts the partial match is worth its characters: "我用通义" earned two, which the end gives back
    assert float(_gains(boost, _ids(tok, "我用通义"), len(tok))[end]) == -2.0


def test_a_character_spelled_in_byte_tokens_is_matched(tok):
    """A rare character is two or three byte tokens, none a whole character alone; the phrase still earns, one per
    character, and a token that holds part of the next character does not complete a different one."""
    end = _end(tok)
    rare = _ids(tok, "彧")
    assert len(rare) > 1 and all(b is not None for b in (token_bytes(tok)[t] for t in rare))
    boost = HotwordBoost([["王彧"]], tok, 1.0, end, 1)
    assert _total(boost, _ids(tok, "王") + rare, end) == 2.0
    assert _total(boost, _ids(tok, "王") + rare[:-1], end) == 0.0


def test_a_character_spelled_in_byte_tokens_pulls_from_its_first_byte(tok):
    """Each byte token of a phrase's character earns a share of its boost as it is written, and any other token after
    it gives what was earned back: the boost draws the search into "彧" from its first byte, as the token-id match
    had drawn it token by token. Paid only at a character's last byte, nothing had drawn it to the first two."""
    end = _end(tok)
    rare = _ids(tok, "彧")
    assert len(rare) == 3
    other = _ids(tok, "好")[0]
    boost = HotwordBoost([["彧"]], tok, 1.0, end, 1)
    earned = 0.0
    for n, token in enumerate(rare):
        gains = _gains(boost, rare[:n], len(tok))
        assert gains[token] > 0 and gains[other] == gains[end] == -earned
        earned += float(gains[token])
    assert earned == 1.0 and _gains(boost, rare, len(tok))[end] == 0.0


def _word(char: bytes) -> bool:
    """Whether bytes are one whole letter, mark or digit of a script written with spaces (bytes that are no character,
    or a character cut short, are none)."""
    try:
        text = char.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(text) == 1 and unicodedata.category(text)[0] in "LMN" and not is_no_space_char(text)


def _char_before(data: bytes, i: int) -> bytes:
    """The character of `data` that ends at byte `i` (the longest of up to four bytes that is one; else the byte)."""
    for k in range(min(4, i), 0, -1):
        if _one_char(data[i - k : i]):
            return data[i - k : i]
    return data[i - 1 : i]


def _one_char(data: bytes) -> bool:
    try:
        return len(data.decode("utf-8")) == 1
    except UnicodeDecodeError:
        return False


def _char_at(data: bytes, j: int) -> bytes:
    """The character of `data` that begins at byte `j`: as many bytes as its first byte asks for."""
    lead = data[j]
    return data[j : j + (1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4)]


def _worth(phrase: bytes) -> float:
    """A phrase's worth: one a character, a quarter an ASCII one or a letter, mark or digit of a spaced script."""
    return sum(0.25 if ch.isascii() or _word(ch.encode()) else 1.0 for ch in phrase.decode("utf-8"))


def _leftmost_longest(data: bytes, phrases: list[bytes]) -> float:
    """The reference: the worth of the phrases found in `data` leftmost first, then longest first, never overlapping;
    a phrase that begins with a word character (a letter, mark or digit of a script written with spaces) begins only
    where none is before it, and one that ends with one is complete only where none follows it, read as whole
    characters."""

    def fits(p: bytes, i: int) -> bool:
        j, text = i + len(p), p.decode("utf-8")
        begins = not (_word(text[0].encode()) and i > 0 and _word(_char_before(data, i)))
        ends = not (_word(text[-1].encode()) and j < len(data) and _word(_char_at(data, j)))
        return data.startswith(p, i) and begins and ends

    total, i = 0.0, 0
    while i < len(data):
        found = max((p for p in phrases if fits(p, i)), key=len, default=b"")
        total += _worth(found) if found else 0.0
        i += len(found) or 1
    return total


TEXTS = ["我用通义千问吧", "通义千问", "千问模型", "阿里云", "语音识别", "彧", "千问", "大"]


def _hypotheses(tok, seed: int, count: int, texts=TEXTS):
    """Random token sequences: pieces of the texts as the tokenizer spells them, and single tokens of every kind
    but the special ones (byte tokens among them)."""
    rng = random.Random(seed)
    pieces = [_ids(tok, t) for t in texts]
    singles = [[t] for t in range(3, len(tok))]
    for _ in range(count):
        seq = []
        for _ in range(rng.randint(0, 5)):
            seq += rng.choice(pieces) if rng.random() < 0.6 else rng.choice(singles)
        yield seq


def test_what_a_hypothesis_earns_is_its_leftmost_longest_phrases(tok):
    """Over random hypotheses, the boost a finished one keeps is the characters of the phrases a leftmost-longest
    scan of its bytes finds."""
    end = _end(tok)
    boost = HotwordBoost([PHRASES], tok, 1.0, end, 1)
    spelled = token_bytes(tok)
    wanted = [p.encode() for p in PHRASES]
    for seq in _hypotheses(tok, 0, 150):
        data = b"".join(spelled[t] or b"" for t in seq)
        assert _total(boost, seq, end) == _leftmost_longest(data, wanted), tok.convert_ids_to_tokens(seq)


def test_every_tokens_gain_is_the_step_of_the_match(tok):
    """What the processor adds to each token of the whole vocabulary is that token's change of the match's worth,
    stepped alone through its bytes: the tokens it computes (those that can go on with the match, or hold a
    phrase's first character) and the one value every other token gets agree with the match token by token."""
    end = _end(tok)
    boost = HotwordBoost([PHRASES], tok, 1.0, end, 1)
    vocab = len(tok)
    root = boost.tries[0].text

    def worth(seq):
        match = boost._text_match(0, tuple(seq), root)
        return match.banked + match.node.weight

    for seq in _hypotheses(tok, 1, 30):
        gains = _gains(boost, seq, vocab)
        stepped = torch.tensor([worth(seq + [t]) - worth(seq) for t in range(vocab)], dtype=gains.dtype)
        assert torch.equal(gains, stepped), tok.convert_ids_to_tokens(seq)


def test_phrases_are_split_between_the_two_matches():
    """A phrase holding a character of a script written without spaces is matched on bytes, with letters or digits of
    any spaced script at an edge too (their word rules kept there, per whole character); one with none of those
    characters keeps the token-id match and its word rules."""
    assert is_text_phrase("通义千问") and is_text_phrase("小米14手机") and is_text_phrase("ありがとう")
    assert is_text_phrase("iPhone手机") and is_text_phrase("小米14") and is_text_phrase("《三体》")
    assert is_text_phrase("Москва大学") and is_text_phrase("咖啡é") and is_text_phrase("Ａ手机")
    assert not is_text_phrase("Qwen") and not is_text_phrase("Москва") and not is_text_phrase("")


def test_a_phrase_sharing_text_with_a_byte_phrase_joins_it_on_bytes():
    """A phrase of a spaced script inside, around or overlapping a phrase matched on bytes is matched on bytes too
    (on the token ids both matches had paid for the text they share); others stay on token ids: those the word rules
    keep from sharing text with it ("GPT" is never found inside "GPT4模型"), and those whose edges the byte match
    cannot keep the rules of."""
    listed = ["iPhone手机", "iPhone", "iPhone Pro", "Pro Max", "e手", "Qwen", "Café", "华为", "GPT", "GPT4模型"]
    assert byte_phrases(listed) == {"iPhone手机", "iPhone", "iPhone Pro", "Pro Max", "e手", "华为", "GPT4模型"}
    assert byte_phrases(["Qwen", "Kubernetes"]) == set()


def test_both_matches_add_up_and_the_search_sees_every_spelling(tok):
    """A list of both kinds: each phrase is paid by its own match, once; `tokens` holds the spelling of every
    phrase alone (a search that scores only some candidates must see them)."""
    end = _end(tok)
    both = HotwordBoost([["千问", "hello"]], tok, 1.0, end, 1)
    hello = _ids(tok, "hello")
    assert _total(both, hello + _ids(tok, "千问"), end) == len(hello) + 2.0
    listed = set(both.tokens(0).tolist())
    assert set(_ids(tok, "千问")) <= listed and set(hello) <= listed


def test_token_bytes_match_the_tokenizers_own_decoding(tok):
    """The bytes read from the vocabulary are what the tokenizer decodes, for every token that decodes to whole
    characters; special tokens spell nothing."""
    spelled = token_bytes(tok)
    for t in range(len(tok)):
        data = spelled[t]
        if t in tok.all_special_ids:
            assert data is None
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert tok.decode([t]) == text, t


@pytest.mark.parametrize("beams", [1, 2])
def test_the_boost_turns_the_near_miss_into_the_merged_phrase(tmp_path_factory, beams):
    """Through the model's search: an LLM that says "我用通义好", with "我用通义千问吧" two logits behind at the branch,
    writes the listed "通义千问" once boosted, though its tokens ("我用通义" "千问吧") are none of the phrase's own."""
    import llmasr
    from llmasr.models.decoding import DecodeConfig
    from llmasr.testing.scripted_llm import ScriptedLLM
    from llmasr.testing.tiny_llm import write_tiny_llm_dir
    from llmasr.testing.tiny_recipe import random_batch, tiny_model_section

    llm_dir = write_tiny_llm_dir(tmp_path_factory.mktemp("tiny_zh"), texts=CORPUS, vocab_size=420)
    torch.manual_seed(0)
    model = llmasr.build_model(tiny_model_section(llm_dir, ctc_weight=0.3)).eval()
    tok, end = model.prompt.tokenizer, model.prompt.end_id
    (head,), (small,), (rest,) = (_ids(tok, t) for t in ("我用通义", "好", "千问吧"))
    script = {None: {head: 30.0}, head: {small: 30.0, rest: 28.0}, small: {end: 30.0}, rest: {end: 30.0}}
    batch = random_batch(model, ["我用通义千问吧"], frames=[30], seed=1)
    cfg = DecodeConfig(num_beams=beams, ctc_weight=0.0, hotword_boost=1.5)
    with torch.no_grad(), ScriptedLLM(model, script):
        plain = model.transcribe(batch, cfg)
        batch.hotwords = [["通义千问"]]
        listed = model.transcribe(batch, cfg)
    assert plain.llm == ["我用通义好"] and listed.llm == ["我用通义千问吧"]


def test_a_sentencepiece_vocabulary_is_read_as_its_text():
    """A SentencePiece (Metaspace) vocabulary, as Llama's and Mistral's: "▁" reads as the space it stands for, and
    a phrase merged with its neighbours is found there too."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spm = Tokenizer(models.BPE(unk_token="<unk>"))
    spm.pre_tokenizer, spm.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    spm.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"]))
    sp = PreTrainedTokenizerFast(tokenizer_object=spm, unk_token="<unk>", eos_token="</s>")
    end = sp.convert_tokens_to_ids("</s>")
    merged = _ids(sp, "我用通义千问吧")
    assert [sp.convert_ids_to_tokens(t) for t in merged] == ["▁我用通义", "千问", "吧"]
    assert token_bytes(sp)[merged[0]] == " 我用通义".encode()
    boost = HotwordBoost([["通义千问"]], sp, 1.0, end, 1)
    assert _total(boost, merged, end) == 4.0
    assert _total(boost, _ids(sp, "我用通义 你好"), end) == 0.0


def test_an_added_token_spells_its_text():
    """A token added to the vocabulary (tokenizer.add_tokens, not special) spells its text: a phrase written with it
    is found, as the token-id match had found it; a special one spells nothing."""
    tok = train_bpe_tokenizer(CORPUS, vocab_size=420)
    tok.add_tokens(["通义千问"])
    tok.add_tokens(["<|audio|>"], special_tokens=True)
    added, audio, end = tok.convert_tokens_to_ids("通义千问"), tok.convert_tokens_to_ids("<|audio|>"), _end(tok)
    assert token_bytes(tok)[added] == "通义千问".encode() and token_bytes(tok)[audio] is None
    boost = HotwordBoost([["通义千问"]], tok, 1.0, end, 1)
    for text in ("我用通义千问吧", "通义千问"):
        seq = _ids(tok, text)
        assert added in seq and _total(boost, seq, end) == 4.0, text
    assert _total(boost, _ids(tok, "通义") + [audio] + _ids(tok, "千问"), end) == 0.0


def test_a_vocabulary_of_byte_pieces_is_read():
    """A tokenizer whose pieces are the tokens' bytes (tiktoken-based, as Qwen-1's remote-code tokenizer) is read as
    those bytes, a token holding part of a character included; it had failed the decode (a string pattern applied
    to bytes)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}

    class BytePieces(PreTrainedTokenizerFast):
        def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
            pieces = super().convert_ids_to_tokens(ids, skip_special_tokens)
            special = {t.content for t in self.added_tokens_decoder.values()}
            read = [
                p if p in special else bytes(byte_of[c] for c in p)
                for p in (pieces if isinstance(ids, list) else [pieces])
            ]
            return read if isinstance(ids, list) else read[0]

    base = train_bpe_tokenizer(CORPUS, vocab_size=420)
    tok = BytePieces(tokenizer_object=base.backend_tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    rare = _ids(tok, "彧")
    assert all(isinstance(tok.convert_ids_to_tokens(t), bytes) for t in rare)
    assert token_bytes(tok) == token_bytes(base) and b"".join(token_bytes(tok)[t] for t in rare) == "彧".encode()
    end = _end(tok)
    boost = HotwordBoost([["通义千问", "王彧"]], tok, 1.0, end, 1)
    assert _total(boost, _ids(tok, "我用通义千问吧"), end) == 4.0
    assert _total(boost, _ids(tok, "王") + rare, end) == 2.0


def test_what_a_list_keeps_is_bounded_by_its_trie_not_the_vocabulary():
    """The answers a list keeps for the search (its trie's memo) are per place of the trie and per byte: with every
    place's row computed, however many tokens begin with a phrase's character, there are at most 256 byte steps and
    a few answers per place. A step per place and token had been kept too: up to the vocabulary times the trie over
    a long decode."""
    from llmasr.models.hotword_text import Place, text_gains

    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in rng.sample(range(20000), 1500)]
    corpus = [f"千{c}" for c in chars] * 2 + [f"{c}千" for c in chars] * 2 + ["千问"] * 3
    tok = train_bpe_tokenizer(corpus, vocab_size=3500)  # thousands of tokens hold 千
    boost = HotwordBoost([["千问"]], tok, 1.0, _end(tok), 1)
    root = boost.tries[0].text
    places, todo = [], [root]
    while todo:
        places.append(todo.pop())
        todo.extend(places[-1].children.values())
    for place in places:
        for after_word in (False, True):
            text_gains(root, Place(place, b"", after_word), boost.index)
    assert len(boost.index.holding["千"]) > len(places) * 260
    assert len(root.memo) <= len(places) * (256 + 4)


def test_a_phrase_written_decomposed_is_found_composed():
    """A list copied from decomposed text (NFD, as macOS writes file names: "ガ" as "カ" and a combining mark) is
    matched in the composed form the LLM writes and Qwen's tokenizers normalize to (NFC); the token-id match had
    found it through the tokenizer's normalizer, the byte match had not."""
    import unicodedata

    from tokenizers import normalizers

    tok = train_bpe_tokenizer(["ガイドブックを読む", "東京ガイド", "ありがとう"] * 30, vocab_size=340)
    tok.backend_tokenizer.normalizer = normalizers.NFC()
    end = _end(tok)
    decomposed = unicodedata.normalize("NFD", "ガイド")
    assert decomposed != "ガイド" and is_text_phrase(decomposed)
    boost = HotwordBoost([[decomposed]], tok, 1.0, end, 1)
    for text in ("ガイド", "東京ガイド", "ガイドブック"):
        assert _total(boost, _ids(tok, text), end) == 3.0, text


def test_tokens_added_after_a_decode_are_read():
    """What is read from a tokenizer is read again once tokens are added to it (add_tokens after a first decode): the
    added token had stayed unread, spelling nothing, and the phrase written with it earned nothing."""
    tok = train_bpe_tokenizer(CORPUS, vocab_size=420)
    end = _end(tok)
    assert _total(HotwordBoost([["通义千问"]], tok, 1.0, end, 1), _ids(tok, "我用通义千问吧"), end) == 4.0
    tok.add_tokens(["通义千问"])
    seq = _ids(tok, "我用通义千问吧")
    assert tok.convert_tokens_to_ids("通义千问") in seq
    boost = HotwordBoost([["通义千问"]], tok, 1.0, end, 1)
    earned = [float(_gains(boost, seq[:n], len(tok))[t]) for n, t in enumerate([*seq, end])]
    assert sum(earned) == 4.0


@pytest.mark.parametrize("beams", [1, 3])
def test_boosted_batched_equals_one_by_one_with_chinese_lists(tmp_path_factory, beams):
    """Chinese lists, a phrase of each match among them, under CTC guidance (the guide scores each list's
    spellings): a batch decodes as its utterances alone, and the boost changes what it writes."""
    import llmasr
    from llmasr.models.decoding import DecodeConfig
    from llmasr.testing.tiny_llm import write_tiny_llm_dir
    from llmasr.testing.tiny_recipe import random_batch, tiny_model_section

    llm_dir = write_tiny_llm_dir(tmp_path_factory.mktemp("tiny_zh_batch"), texts=CORPUS, vocab_size=420)
    torch.manual_seed(0)
    model = llmasr.build_model(tiny_model_section(llm_dir, ctc_weight=0.3)).eval()
    targets = ["我用通义千问吧", "阿里云的语音识别", "他说通义千问好", "你好世界"]
    batch = random_batch(model, targets, frames=[12, 20, 16, 9], seed=5)
    batch.hotwords = [["通义千问", "千问"], [], ["阿里云", "语音识别", "hello"], ["你好世界", "世界"]]
    cfg = DecodeConfig(num_beams=beams, ctc_weight=0.5, hotword_boost=6.0, max_new_tokens=8)
    with torch.no_grad():
        together = model.transcribe(batch, cfg).llm
        alone = [model.transcribe(batch.select([i]), cfg).llm[0] for i in range(len(targets))]
        unboosted = model.transcribe(batch, DecodeConfig(num_beams=beams, ctc_weight=0.5, hotword_boost=0.0,
                                                         max_new_tokens=8)).llm  # fmt: skip
    assert together == alone
    assert unboosted != together


# Other scripts and phrase lists: kana and kanji with nested, prefix and repeated phrases and one of one character;
# Thai; digits, Latin, a space and full-width punctuation inside phrases; characters no token holds whole (彧, and
# the four-byte 𠀀 of extension B).
OTHER_LISTS = {
    "japanese": (
        ["東京都に住んでいます", "ありがとうございます", "音声認識の研究", "東京タワーへ行く", "京都大学"],
        ["東京", "東京都", "京都", "京都大学", "ありがとう", "音声認識", "タワー", "研", "研"],
        ["東京都", "京都大学", "ありがとう", "東京タワー", "音声認識", "研究", "東京京都"],
    ),
    "thai": (
        ["สวัสดีครับ", "ภาษาไทย", "กรุงเทพมหานคร", "ขอบคุณมาก"],
        ["สวัสดี", "กรุงเทพ", "กรุงเทพมหานคร", "ไทย", "ครับ"],
        ["สวัสดีครับ", "กรุงเทพ", "ภาษาไทย", "กรุงเทพมหานคร"],
    ),
    "mixed": (
        ["我的小米14手机", "华为P60 Pro手机很好", "你好，世界！", "通义 千问", "阿里云ECS服务"],
        ["小米14手机", "华为P60 Pro手机", "你好，世界", "通义 千问", "阿里云ECS服务", "云", "米"],
        ["我的小米14手机", "华为P60 Pro手机", "你好，世界！", "通义 千问", "阿里云ECS服务"],
    ),
    "rare": (
        ["今天天气很好", "我们去公园", "你好世界"],
        ["彧", "王彧", "𠀀𠀁", "鑫彧", "彧彧彧", "今天", "天天", "天"],
        ["王彧", "彧彧", "𠀀𠀁", "鑫", "今天天气", "天天天"],
    ),
    # ASCII letters and digits at the edges, with their word rules; "iPhone", "GPT-4" and "iPhone Pro" share text
    # with phrases matched on bytes, and join them there; a digit after "小米14" breaks its match back to "小米" and
    # "14", where "145号" goes on
    "latin_edges": (
        ["我的iPhone", "机很好", "手", "iPhone手机", "小米14和", "小米145号", "用Qwen大模型", "xiPhone", "GPT-4模型"],
        ["iPhone手机", "iPhone", "小米14", "小米", "Qwen大模型", "GPT-4", "4模型", "iPhone Pro", "机很"]
        + ["小米14手机", "145号"],
        ["我的iPhone手机很好", "小米145号", "小米14和", "用Qwen大模型", "xiPhone手机", "GPT-4模型", "iPhone Pro", "4"],
    ),
    # letters of other spaced scripts at the edges (Latin with diacritics, Cyrillic, Greek, full-width), read per
    # whole character: many are spelled in byte tokens here, so a character's first bytes come before it is known to
    # be a letter or punctuation ("Ａ" is EF BC A1, "，" EF BC 8C)
    "unicode_edges": (
        ["我在Москва大学", "Café咖啡很好", "大学Café，好", "ＡＢ手机", "手机Ωμέγα", "小米14，", "αβ手机"],
        ["Москва大学", "Café咖啡", "Café", "大学Café", "Ａ手机", "手机Ω", "小米14", "小米", "αβ手机", "β手"],
        [
            "我在Москва大学",
            "ПодМосква大学",
            "xCafé咖啡",
            "大学Cafés",
            "大学Café，好",
            "ＡＡ手机",
            "，Ａ手机",
            "ÜαβＡ手机Ωβ",
        ]
        + ["小米14ü", "小米14я", "小米14Ａ", "小米14，", "ЯiPhone手机", "αβ手机ü"],
    ),
}


@pytest.mark.parametrize("name", sorted(OTHER_LISTS))
def test_other_scripts_and_lists_earn_their_leftmost_longest_phrases_token_by_token(name):
    """For each corpus and list, the boost a finished hypothesis keeps is what a leftmost-longest scan of its bytes
    finds, and every token's gain over the whole vocabulary is the match stepped through its bytes (after random
    hypotheses, and after each token of the texts)."""
    corpus, phrases, texts = OTHER_LISTS[name]
    tok = train_bpe_tokenizer(corpus * 30, vocab_size=400)
    end = _end(tok)
    boost = HotwordBoost([phrases], tok, 1.0, end, 1)
    assert boost.tries[0].tokens is None  # every phrase on bytes
    spelled = token_bytes(tok)
    wanted = [p.encode() for p in phrases]
    for seq in _hypotheses(tok, 0, 60, texts):
        data = b"".join(spelled[t] for t in seq)
        assert _total(boost, seq, end) == _leftmost_longest(data, wanted), tok.convert_ids_to_tokens(seq)
    root, vocab = boost.tries[0].text, len(tok)

    def worth(seq):
        match = boost._text_match(0, tuple(seq), root)
        return match.banked + match.node.weight

    prefixes = [ids[:n] for ids in (_ids(tok, t) for t in texts) for n in range(1, len(ids))]
    for seq in [*_hypotheses(tok, 1, 10, texts), *prefixes]:
        gains = _gains(boost, seq, vocab)
        stepped = torch.tensor([worth(seq + [t]) - worth(seq) for t in range(vocab)], dtype=gains.dtype)
        assert torch.equal(gains, stepped), tok.convert_ids_to_tokens(seq)


def test_latin_edges_keep_their_word_rules_on_bytes():
    """A phrase with ASCII letters or digits at an edge is matched on bytes (the tokenizer merges its Chinese end with
    the text after it: "我的iPhone" "手" "机很好") and keeps the word rules there: it begins only where no word is
    under way ("xiPhone手机" holds none) and a phrase ending in a digit is complete only where its number ends ("小米14"
    is not in "小米145"). On token ids "iPhone手机" had earned nothing in the merged text, and "小米14" with "小米"
    listed had been paid twice, once by each match."""
    corpus = OTHER_LISTS["latin_edges"][0]
    tok = train_bpe_tokenizer(corpus * 30, vocab_size=400)
    end = _end(tok)
    assert [tok.decode([t]) for t in _ids(tok, "我的iPhone手机很好")] == ["我的iPhone", "手", "机很好"]
    boost = HotwordBoost([["iPhone手机", "小米14", "小米"]], tok, 1.0, end, 1)
    assert boost.tries[0].tokens is None
    assert _total(boost, _ids(tok, "我的iPhone手机很好"), end) == 6 * 0.25 + 2
    assert _total(boost, _ids(tok, "xiPhone手机"), end) == 0.0
    assert _total(boost, _ids(tok, "小米145"), end) == 2.0
    assert _total(boost, _ids(tok, "小米14和"), end) == 2 + 2 * 0.25
    # a Latin phrase no byte phrase shares text with keeps the token match, as before
    both = HotwordBoost([["小米", "Qwen"]], tok, 1.0, end, 1)
    assert both.tries[0].tokens is not None and both.tries[0].text is not None


def test_word_rules_read_whole_characters_of_every_script():
    """The word rules on bytes read whole characters, a word character being a letter, mark or digit of any script
    written with spaces: "iPhone手机" does not begin after "ü", "Я", "α" or a full-width "Ａ" (all spelled in byte
    tokens here) as it does not after "x", and "小米14" is not complete before them, while a full-width comma ends
    its word as a space does. Read as ASCII's, the letters had been no word characters: "MüiPhone手机" earned the
    phrase, and "小米14ü" "小米14" too."""
    corpus = OTHER_LISTS["latin_edges"][0]
    tok = train_bpe_tokenizer(corpus * 30, vocab_size=400)
    end = _end(tok)
    assert all(token_bytes(tok)[t] in (b"\xc3", b"\xbc") for t in _ids(tok, "ü"))  # two byte tokens
    boost = HotwordBoost([["iPhone手机", "小米14", "小米"]], tok, 1.0, end, 1)
    phrase = 6 * 0.25 + 2
    for before in ("x", "Mü", "Я", "α", "Ａ", "é"):
        assert _total(boost, _ids(tok, before + "iPhone手机"), end) == 0.0, before
    for before in ("，", "。", " ", "手"):
        assert _total(boost, _ids(tok, before + "iPhone手机"), end) == phrase, before
    for after in ("x", "ü", "я", "Ａ", "５"):
        assert _total(boost, _ids(tok, "小米14" + after), end) == 2.0, after
    for after in ("，", "。", "!", "手"):
        assert _total(boost, _ids(tok, "小米14" + after), end) == 2 + 2 * 0.25, after


def test_a_group_sharing_text_with_other_scripts_letters_at_its_edges_is_on_bytes_and_paid_once():
    """A phrase with a letter of another spaced script at an edge ("Café咖啡", "Москва大学") is matched on bytes with
    the phrases it shares text with ("Café", "大学"), the word rules read per whole character: the text they share is
    paid once, and "Москва大学" is not found inside "ПодМосква大学". A spaced script's letters are paid a quarter each,
    as ASCII's are (its words run several letters a token), a Chinese character one: "Москва大学" earns 3.5 (it had
    earned 8, each Cyrillic letter a Chinese character's worth). Held on token ids, where the merged "大学" of
    "Москва大学" is no token of its own, the phrase had earned a token's worth per token."""
    from tokenizers import normalizers

    corpus = ["Café", "咖啡", "Москва", "大学", "Café", "ПодМосква"] * 30
    tok = train_bpe_tokenizer(corpus, vocab_size=360)
    tok.backend_tokenizer.normalizer = normalizers.NFC()
    end = _end(tok)
    for listed, text, worth in (
        (["Café咖啡", "Café"], "Café咖啡", 4 * 0.25 + 2),
        (["大学", "Москва大学"], "Москва大学", 6 * 0.25 + 2),
    ):
        seq = _ids(tok, text)
        assert [tok.decode([t]) for t in seq] == [text[:-2], text[-2:]]
        assert byte_phrases(listed) == set(listed), listed
        boost = HotwordBoost([listed], tok, 1.0, end, 1)
        assert boost.tries[0].tokens is None and _total(boost, seq, end) == worth, listed
    boost = HotwordBoost([["Москва大学"]], tok, 1.0, end, 1)
    assert _total(boost, _ids(tok, "ПодМосква大学"), end) == 0.0


def test_phrases_share_text_as_composed():
    """Phrases are told to share text as composed (NFC), the form both matches find them in: "Pokémon" typed
    decomposed beside "Pokémon宝可梦" joins it on bytes. Read as written, it had been paid by both matches. "é" is
    paid a quarter, as the other letters are (it had been paid one, 5.5 in all). "大学Café"
    typed decomposed ends in a combining mark, a word character as the composed "é" is: on bytes it keeps its word
    rule either way."""
    import unicodedata

    from tokenizers import normalizers

    tok = train_bpe_tokenizer(["Pokémon", "宝可梦", "Pokémon"] * 30, vocab_size=340)
    tok.backend_tokenizer.normalizer = normalizers.NFC()
    end, seq = _end(tok), _ids(tok, "Pokémon宝可梦")
    assert [tok.decode([t]) for t in seq] == ["Pokémon", "宝可梦"]
    decomposed = unicodedata.normalize("NFD", "Pokémon")
    once = _total(HotwordBoost([["Pokémon宝可梦"]], tok, 1.0, end, 1), seq, end)
    assert _total(HotwordBoost([["Pokémon宝可梦", decomposed]], tok, 1.0, end, 1), seq, end) == once == 7 * 0.25 + 3
    assert byte_phrases(["Pokémon宝可梦", decomposed]) == {"Pokémon宝可梦", decomposed}
    assert is_text_phrase(unicodedata.normalize("NFD", "大学Café"))


def test_a_long_chain_of_phrases_sharing_text_is_sorted_at_once():
    """Which phrases go on bytes is found in one pass over the list's text: a chain of 1,500 phrases, each
    overlapping the next ("<2><1>", "<1><0>", "<0>手"), had been walked one link a round, every round rereading all
    chosen so far (tens of seconds)."""
    import time

    listed = ["<0>手"] + [f"<{i + 1}><{i}>" for i in range(1500)]
    start = time.perf_counter()
    assert byte_phrases(listed) == set(listed)
    assert time.perf_counter() - start < 2.0


def test_a_phrase_held_on_token_ids_keeps_there_only_what_it_can_share_text_with():
    """A phrase held on token ids by a letter of another spaced script at an edge ("Proé") keeps there with it the
    phrases whose text it shares where the word rules let both be found ("Pro", inside it), but not those it reaches
    only through text no match begins in: "o手机" does not begin after the "r" of "Pro", so "Pro" and "o手机" never
    pay for the same "o", and "o手机" stays on bytes, found in "我o手机" however it was merged. It had been taken onto
    token ids with them."""
    tok = train_bpe_tokenizer(["Pro", "Proé", "我o手机很好"] * 30, vocab_size=330)
    end = _end(tok)
    listed = ["o手机", "Pro", "Proé"]
    assert byte_phrases(listed) == {"o手机"}
    boost = HotwordBoost([listed], tok, 1.0, end, 1)
    assert _total(boost, _ids(tok, "我o手机很好"), end) == 0.25 + 2
    proe = _ids(tok, "Proé")
    assert _total(boost, proe, end) == _total(HotwordBoost([["Pro", "Proé"]], tok, 1.0, end, 1), proe, end) == len(proe)
    # nor does "Pro" join "o手机" on bytes without "Proé": the two are never found sharing an "o"
    assert byte_phrases(["o手机", "Pro"]) == {"o手机"}


def test_however_the_text_is_cut_into_tokens_the_match_finds_its_leftmost_longest_phrases():
    """Tokens step the match through their characters and classes read once per token (TokenIndex.plans), and after
    a character a token before them began, through the bytes that finish it and the Plan of the rest: over texts cut
    into tokens at every byte (so characters split every way), with stray continuation bytes inside them, characters
    cut short and bytes that are no character, the match banks what a leftmost-longest scan of the bytes finds."""
    from llmasr.models.hotword_text import Place, step_token, text_trie
    from llmasr.models.hotword_tokens import TokenIndex

    rng = random.Random(0)
    texts = OTHER_LISTS["unicode_edges"][2] + OTHER_LISTS["latin_edges"][2] + ["小米14Ａ手机", "xЯiPhone手机"]
    said = [t.encode() for t in texts]
    for data in list(said):  # a stray continuation byte inside a character or between two; a character cut short
        for _ in range(6):
            at = rng.randint(0, len(data))
            said.append(data[:at] + rng.choice([b"\x80", b"\xa1"]) + data[at:])
            said.append(data[: at - 1] + data[at:] if at else data[1:])
    pieces = {data[i : i + n] for data in said for n in range(1, 7) for i in range(len(data) - n + 1)}
    odd = [b"\xed\xa0\x80", b"\xff", b"\xe6\x89", b"\xbc\xa1\xe6"]  # no character; cut short
    vocab = [None, *sorted(pieces), *odd]  # id 0 spells nothing: it ends the text
    ids = {data: i for i, data in enumerate(vocab)}
    phrases = OTHER_LISTS["unicode_edges"][1] + OTHER_LISTS["latin_edges"][1]
    index, root, wanted = TokenIndex(vocab), text_trie(phrases), [p.encode() for p in phrases]
    for _ in range(3000):
        data, seq, at = rng.choice(said), [], 0
        while at < len(data):
            n = min(rng.randint(1, 6), len(data) - at)
            seq.append(ids[data[at : at + n]] if rng.random() < 0.95 else rng.randrange(1, len(vocab)))
            at += n
        place, total = Place(root), 0.0
        for token in [*seq, 0]:
            gained, place = step_token(root, place, index, token)
            total += gained
        spelled = b"".join(vocab[t] for t in seq)
        assert total == _leftmost_longest(spelled, wanted), [vocab[t] for t in seq]
