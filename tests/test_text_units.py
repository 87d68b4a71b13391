"""How scoring reads a text: the normaliser's rules, one pass against its rules read a character at a time, and
the scripts written without spaces."""

import random
import unicodedata

from llmasr.scoring import score_utterance
from llmasr.text_units import normalize


def test_normalize():
    assert normalize("  Hello,   WORLD!  ") == "hello world"
    assert normalize("Don't stop — it's \u201cfine\u201d.") == "don't stop it's fine"
    assert normalize("'quoted'") == "quoted"
    # beside characters of a script written without spaces a right single quote closes a quotation: it is no unit
    assert (
        normalize("他说\u2018好\u2019吧") == "他说 好 吧"
        and normalize("それは\u2019いい\u2019です") == "それは いい です"
    )
    assert score_utterance("他说\u2018好\u2019吧", "他说好吧").errors == 0
    assert normalize("我用python\u2019s库") == "我用python's库"
    assert normalize("ＡＢＣ１２３") == "abc123"  # NFKC folds full-width forms
    assert normalize("Straße") == "strasse"  # casefold
    assert normalize("İSTANBUL") == normalize("istanbul") == "istanbul"  # no combining dot left by casefold
    # the two cases of a letter casefold leaves decomposed are one string: "ΐ" against "Ϊ́" (Greek "Μαΐου" in capitals)
    assert normalize("\u0390") == normalize("\u03aa\u0301") == "\u0390"
    assert score_utterance("Μαΐου", "ΜΑΪ́ΟΥ").errors == 0 and score_utterance("ΐ", "Ϊ́", metric="cer").ref_len == 1
    assert normalize("你好，世界。") == "你好 世界"
    assert normalize("a\tb\nc") == "a b c"
    # format characters inside a word leave it whole (a soft hyphen, Persian's zero-width non-joiner, a BOM); a
    # zero-width space is a word boundary
    assert normalize("\ufeffco\u00adoperate") == "cooperate"
    assert normalize("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645") == "\u0645\u06cc\u062e\u0648\u0627\u0647\u0645"
    assert normalize("one\u200btwo") == "one two"
    assert score_utterance("co\u00adoperate", "cooperate").errors == 0
    # variation selectors and enclosing marks only change how a character is drawn: no unit of their own
    assert normalize("I \u2764\ufe0f you") == "i you" and normalize("1\ufe0f\u20e3 one") == "1 one"
    assert score_utterance("我爱你\u2764\ufe0f", "我爱你").errors == 0
    assert score_utterance("葛\U000e0100城", "葛城").ref_len == 2  # an ideographic variation sequence


def test_a_spacing_accent_leaves_no_unit_and_one_typed_for_an_apostrophe_is_one():
    """NFKC turns a spacing accent ("¨", "´", "¯") into a space and a combining mark: the mark alone had stood as a
    word of the reference ("hello ¨ world": 3 words, one deleted) or glued onto the next ("don´t": "don" and "́t"). An
    acute or grave accent between two letters is the apostrophe it was typed for."""
    s = score_utterance("hello \u00a8 world", "hello world")
    assert (s.ref_len, s.errors) == (2, 0)
    assert normalize("don\u00b4t") == normalize("don`t") == normalize("don't") == "don't"
    assert normalize("rock \u00b4n\u00b4 roll \u00af") == "rock n roll"
    assert normalize("他说\u00b4好") == "他说 好" and score_utterance("他说\u00b4好", "他说好").ref_len == 3

    # every code point alone leaves no lone combining mark
    def lone_mark(cp: int) -> bool:
        text = normalize(f"a {chr(cp)} b")
        return any(unicodedata.category(c)[0] == "M" and text[j - 1] == " " for j, c in enumerate(text))

    # the code points that are marks or that NFKC opens with a space (a spacing accent): the only ones that can
    chars = (chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)
    marks = [c for c in chars if unicodedata.category(c)[0] == "M" or unicodedata.normalize("NFKC", c)[:1] == " "]
    assert len(marks) > 2000
    lone = [hex(ord(c)) for c in marks if lone_mark(ord(c))]
    assert lone == []
    assert normalize("cafe\u0301") == "café" and normalize("नमस्ते") == "नमस्ते"  # marks on a letter stay


def _normalize_char_by_char(text: str) -> str:
    """normalize's rules read one character at a time, as it had run them: the oracle its one-pass form must equal."""
    import re

    from llmasr import text_units

    text = text_units._ACCENT_APOSTROPHE.sub("'", text)
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold().replace("i\u0307", "i"))
    text = text_units._TAGS.sub(" ", text)
    out, n = [], len(text)
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if ch in text_units._APOSTROPHES:
            inside = 0 < i < n - 1 and all(
                c.isalnum() and not text_units.is_no_space_char(c) for c in text[i - 1 : i + 2 : 2]
            )
            out.append("'" if inside else " ")
        elif ch in ".,\u066b\u066c" and 0 < i < n - 1 and text[i - 1 : i + 2 : 2].isdecimal():
            if ch in ".\u066b":
                out.append(ch)
        elif cat[0] in ("P", "S") or cat == "Cc" or ch == "\u200b":
            out.append(" ")
        elif cat in ("Cf", "Me") or "\ufe00" <= ch <= "\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef":
            continue
        elif cat[0] == "M" and (not out or out[-1].isspace()):
            continue
        else:
            out.append(ch)
    return re.sub(r"\s+", " ", "".join(out)).strip()


def test_normalize_equals_its_rules_read_one_character_at_a_time():
    # the characters whose fate hangs on their neighbours (apostrophes, number separators, combining marks) beside
    # letters, digits, spaces, punctuation, tags and the characters normalize drops
    pool = list(
        "aZ1\u0663 \u3000\t'\u2019\u02bc.,\u066b\u066c\uff0c\uff0e\ufe50\u00b4`-!?\u0130\u0390\u03aa\u6211\u0e01"
    )
    pool += list("\u0e48\u093e\u094d\u0301\u0308\u20e3\ufe0f\u200b\u200c\u200d\u00ad\ufeff\u00a8\u1680\u2028[]<>")
    pool += ["[noise]", "<unk>", "\U000e0100", "x", "don't", "3.5"]
    rng = random.Random(0)
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 12))) for _ in range(20000)]
    texts += [f"a{chr(cp)}b \u0301{chr(cp)}\u0301 1{chr(cp)}2" for cp in range(0x3000) if not 0xD800 <= cp <= 0xDFFF]
    assert [normalize(t) for t in texts] == [_normalize_char_by_char(t) for t in texts]


def test_every_code_point_is_a_no_space_character_exactly_when_a_range_holds_it():
    from llmasr.text_units import NO_SPACE_RANGES, is_no_space_char

    held = {cp for lo, hi in NO_SPACE_RANGES for cp in range(lo, hi + 1)}
    wrong = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and is_no_space_char(chr(cp)) != (cp in held)]
    assert wrong == []
