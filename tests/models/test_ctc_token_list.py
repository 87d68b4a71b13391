"""Token-list CTC vocabularies (llmasr.models.ctc_token_list); their reading and spelling through
build_ctc_tokenizer: tests/models/test_ctc.py."""

import json
import logging

from llmasr.models.ctc_token_list import TokenListCTCTokenizer


def test_a_token_standing_twice_is_named_with_both_ids(tmp_path, caplog):
    """A repeated entry's later id is a head row no text spells: it had been taken without a word."""
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(["<blank>", "a", "b", "a", "<unk>", "b"]))
    with caplog.at_level(logging.WARNING, logger="llmasr"):
        tok = TokenListCTCTokenizer(str(path))
    assert tok.encode("a b") == [1, 2] and tok.vocab_size == 6  # the first ids spell; the head keeps every row
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(
        f"CTC vocabulary {path}: 2 token(s) stand more than once ('a' at ids 1 and 3, 'b' at ids 2 and 5): "
    )
    caplog.clear()
    path.write_text(json.dumps(["<blank>", "a", "b", "<unk>"]))
    with caplog.at_level(logging.WARNING, logger="llmasr"):
        TokenListCTCTokenizer(str(path))
    assert not caplog.records
