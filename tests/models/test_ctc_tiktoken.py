"""The tiktoken-format CTC vocabulary (Fun-ASR-Nano's CTC branch) and the CTC head's decoder layers.

Parity of the ids with FunASR's own tokenizer is pinned in tests/convert/test_funasr_nano_parity.py; here the rules are
checked on vocabularies small enough to work out by hand."""

from __future__ import annotations

import pytest
import torch

from llmasr.config_io import ConfigError, from_dict
from llmasr.models.config import ModelConfig
from llmasr.models.ctc import CTCHead, build_ctc_tokenizer
from llmasr.models.ctc_config import CTCConfig, CTCDecoderConfig
from llmasr.models.ctc_tiktoken import TiktokenCTCTokenizer, write_ranks


def vocabulary(path, merges: list[bytes]) -> str:
    """Single bytes at their own values as ranks, then `merges` ranked 256, 257, ..."""
    return str(write_ranks(path, [bytes([b]) for b in range(256)] + merges))


@pytest.fixture
def vocab(tmp_path):
    return vocabulary(tmp_path / "v.tiktoken", [b"ab", b"bc", b"abc", b" a", b"\xe4\xbd"])


def test_merges_take_the_lowest_rank_first_then_the_leftmost(vocab, tmp_path):
    tok = build_ctc_tokenizer(CTCConfig(vocab=vocab))
    assert isinstance(tok, TiktokenCTCTokenizer)
    assert tok.encode("abc") == [258]  # a whole piece that is a token
    assert tok.encode("abcb") == [258, ord("b")]  # ab (256), then ab+c (258); c+b is no token
    assert tok.encode("abab") == [256, 256]  # two equal pairs: the leftmost first
    low = build_ctc_tokenizer(CTCConfig(vocab=vocabulary(tmp_path / "low.tiktoken", [b"bc", b"ab"])))
    assert low.encode("abc") == [ord("a"), 256]  # bc ranks lower than ab although ab comes first


def test_pieces_are_cut_as_sensevoice_cuts_them(vocab):
    tok = build_ctc_tokenizer(CTCConfig(vocab=vocab))
    assert tok.encode("x a") == [ord("x"), 259]  # " a" is one piece: the space goes with the word after it
    assert tok.encode("ab,ab") == [256, ord(","), 256]  # punctuation is a piece of its own
    assert tok.encode("a1") == [ord("a"), ord("1")]  # letters and digits never merge across pieces
    assert tok.encode_unit("abc", spaced=True) == (tok.encode(" abc"), [])


def test_decode_joins_bytes_drops_specials_and_the_blank(vocab):
    tok = TiktokenCTCTokenizer(vocab, vocab_size=270)
    assert (tok.n_tokens, tok.vocab_size, tok.blank_id) == (261, 270, 269)
    text = "ab 你好 🙂"
    ids = tok.encode(text)
    assert 260 in ids and tok.decode(ids) == text  # CJK bytes, one of them merged
    assert tok.decode([256, 265, 269, 256]) == "abab"  # 265: a special token; 269: the blank
    assert tok.decode(tok.encode("你")[:1]) == "\ufffd"  # a label sequence cut inside a character
    assert tok.decode_ctc([256, 256, 269, 256, 269, 269]) == "abab"


def test_vocabulary_size(vocab):
    tok = build_ctc_tokenizer(CTCConfig(vocab=vocab))
    assert (tok.vocab_size, tok.blank_id) == (262, 261)  # unset: the file's tokens, then the blank
    with pytest.raises(ConfigError, match=r"model.ctc.vocab_size is 261, but the file's tokens alone take ids 0..260"):
        TiktokenCTCTokenizer(vocab, vocab_size=261)


@pytest.mark.parametrize(
    "text, message",
    [
        ("YQ== 0\nYg== x\n", r"line 2: invalid literal for int"),
        ("YQ== 0\n!!!! 1\n", r"line 2: .*'!!!! 1'"),
        ("YQ== 0 extra\n", r"line 1: expected `<base64 token> <rank>`, got 3 field"),
        ("YQ== 0\nYQ== 1\n", r"line 2: token b'a' is listed twice"),
        ("YQ== 0\n", r"255 of the 256 single bytes have no token"),
        ("\n\n", r"no tokens"),
        ("\xff\xfe binary", r"not a text file of `<base64 token> <rank>` lines"),
    ],
)
def test_a_bad_vocabulary_file_is_named_with_its_line(tmp_path, text, message):
    """Each a ConfigError, bad input (exit status 2): they had been ValueErrors, an internal error's status 1."""
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=message) as err:
        build_ctc_tokenizer(CTCConfig(vocab=str(path)))
    assert str(path) in str(err.value)


def test_vocab_size_is_a_tiktoken_key_only():
    cfg = from_dict(CTCConfig, {"vocab": "v.tiktoken", "vocab_size": 300}, "model.ctc")
    assert cfg.vocab_size == 300
    with pytest.raises(ConfigError, match=r"model.ctc.vocab_size: sets the head's size for a .tiktoken vocabulary"):
        from_dict(CTCConfig, {"vocab": "llm", "vocab_size": 300}, "model.ctc")
    with pytest.raises(ConfigError, match=r"model.ctc.decoder.n_head: must be >= 1, got 0"):
        from_dict(ModelConfig, {"ctc": {"decoder": {"n_head": 0}}}, "model")


def test_head_decoder_layers_run_before_the_projection():
    torch.manual_seed(0)
    head = CTCHead(16, 11, decoder=CTCDecoderConfig(n_layer=2, ffn_dim=24, n_head=4)).eval()
    assert sorted({k.split(".")[0] for k in head.state_dict()}) == ["decoder", "proj"]
    assert "decoder.blocks.1.self_attn.linear_q.weight" in head.state_dict()  # FunASR's ctc_decoder.* names
    enc, lens = torch.randn(2, 9, 16), torch.tensor([9, 5])
    lp = head(enc, lens)
    assert lp.shape == (2, 9, 11)
    torch.testing.assert_close(lp[1, :5], head(enc[1:, :5], lens[1:])[0])  # padding changes no valid frame
    plain = CTCHead(16, 11)
    plain.proj.load_state_dict(head.proj.state_dict())
    assert not torch.allclose(plain(enc, lens), lp)  # the layers are not skipped


def reference_merge(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """The rule spelled out the slow way: scan every adjacent pair, join the lowest-ranked (the leftmost on a tie)."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while True:
        found = [(ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:])) if a + b in ranks]
        if not found:
            return [ranks[p] for p in parts]
        _, i = min(found)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def test_merge_order_equals_the_pairwise_scan_on_random_vocabularies():
    """llmasr's heap-ordered merge gives the scan's ids on random vocabularies and texts, long pieces included."""
    import random

    from llmasr.models.ctc_tiktoken import merge

    rng = random.Random(0)
    for trial in range(30):
        alphabet = [bytes([b]) for b in rng.sample(range(97, 105), 4)]
        ranks = {bytes([b]): b for b in range(256)}
        while len(ranks) < 256 + 25:  # tokens built from tokens, ranked in random order
            token = rng.choice(list(ranks)[256:] + alphabet) + rng.choice(list(ranks)[256:] + alphabet)
            ranks.setdefault(token, 256 + rng.randrange(10_000))
        for length in (2, 7, 60, 300):
            piece = b"".join(rng.choice(alphabet) for _ in range(length))
            assert merge(piece, ranks) == reference_merge(piece, ranks), (trial, piece)
