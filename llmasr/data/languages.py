"""One key for each language a manifest line names: lhotse's recipes write a supervision's language as a name
("English", "Mandarin"), FunASR jsonl lines as a code ("en", "<|en|>"), other corpora as a three-letter code ("eng",
"cmn"); results group lines by this key, so one language is one group whichever way its lines spell it.

The key is the ISO 639-1 code where the language has one (else the code SenseVoice and Whisper use: "yue", "haw").
A BCP 47 tag whose subtags after the language are a script and/or a region ("zh-CN", "zh_TW", "zh-Hans", "en-US",
FLEURS's "cmn_hans_cn") is its language: SenseVoice's and Whisper's language tokens have no regions, the lines are
scored alike, and a test set joined from corpora that write "zh" and "zh-CN" is one language (decode's summary lists
the labels each group gathers). A label not in the table (a dialect, a name not listed, "zh-en" for code-switched
lines: "en" is no region) is kept as written, case-folded: guessing would merge groups a user kept apart on purpose.
"""

from __future__ import annotations

import re

# code: (English name, other names and codes). The languages Whisper names, with their ISO 639-2 codes (/T and /B)
# and the names lhotse's and other corpora's recipes write.
_TABLE = {
    "af": ("afrikaans", "afr"), "am": ("amharic", "amh"), "ar": ("arabic", "ara"), "as": ("assamese", "asm"),
    "az": ("azerbaijani", "aze"), "ba": ("bashkir", "bak"), "be": ("belarusian", "bel"), "bg": ("bulgarian", "bul"),
    "bn": ("bengali", "ben", "bangla"), "bo": ("tibetan", "bod", "tib"), "br": ("breton", "bre"),
    "bs": ("bosnian", "bos"), "ca": ("catalan", "cat", "valencian"), "cs": ("czech", "ces", "cze"),
    "cy": ("welsh", "cym", "wel"), "da": ("danish", "dan"), "de": ("german", "deu", "ger", "deutsch"),
    "el": ("greek", "ell", "gre"), "en": ("english", "eng"), "es": ("spanish", "spa", "castilian", "español"),
    "et": ("estonian", "est"), "eu": ("basque", "eus", "baq"), "fa": ("persian", "fas", "per", "farsi"),
    "fi": ("finnish", "fin"), "fo": ("faroese", "fao"), "fr": ("french", "fra", "fre", "français"),
    "ga": ("irish", "gle"), "gl": ("galician", "glg"), "gu": ("gujarati", "guj"), "ha": ("hausa", "hau"),
    "he": ("hebrew", "heb"), "hi": ("hindi", "hin"), "hr": ("croatian", "hrv"),
    "ht": ("haitian creole", "hat", "haitian"), "hu": ("hungarian", "hun"), "hy": ("armenian", "hye", "arm"),
    "id": ("indonesian", "ind"), "is": ("icelandic", "isl", "ice"), "it": ("italian", "ita", "italiano"),
    "ja": ("japanese", "jpn", "日本語"), "jv": ("javanese", "jav", "jw"), "ka": ("georgian", "kat", "geo"),
    "kk": ("kazakh", "kaz"), "km": ("khmer", "khm"), "kn": ("kannada", "kan"), "ko": ("korean", "kor", "한국어"),
    "la": ("latin", "lat"), "lb": ("luxembourgish", "ltz", "letzeburgesch"), "ln": ("lingala", "lin"),
    "lo": ("lao", "lao"), "lt": ("lithuanian", "lit"), "lv": ("latvian", "lav"), "mg": ("malagasy", "mlg"),
    "mi": ("maori", "mri", "mao"), "mk": ("macedonian", "mkd", "mac"), "ml": ("malayalam", "mal"),
    "mn": ("mongolian", "mon"), "mr": ("marathi", "mar"), "ms": ("malay", "msa", "may"),
    "mt": ("maltese", "mlt"), "my": ("burmese", "mya", "bur", "myanmar"), "nb": ("norwegian bokmål", "nob"),
    "ne": ("nepali", "nep"), "nl": ("dutch", "nld", "dut", "flemish"), "nn": ("nynorsk", "nno", "norwegian nynorsk"),
    "no": ("norwegian", "nor"), "oc": ("occitan", "oci"), "pa": ("punjabi", "pan", "panjabi"),
    "pl": ("polish", "pol"), "ps": ("pashto", "pus", "pushto"), "pt": ("portuguese", "por", "português"),
    "ro": ("romanian", "ron", "rum", "moldavian", "moldovan"), "ru": ("russian", "rus", "русский"),
    "sa": ("sanskrit", "san"), "sd": ("sindhi", "snd"), "si": ("sinhala", "sin", "sinhalese"),
    "sk": ("slovak", "slk", "slo"), "sl": ("slovenian", "slv", "slovene"), "sn": ("shona", "sna"),
    "so": ("somali", "som"), "sq": ("albanian", "sqi", "alb"), "sr": ("serbian", "srp"), "su": ("sundanese", "sun"),
    "sv": ("swedish", "swe"), "sw": ("swahili", "swa"), "ta": ("tamil", "tam"), "te": ("telugu", "tel"),
    "tg": ("tajik", "tgk"), "th": ("thai", "tha"), "tk": ("turkmen", "tuk"), "tl": ("tagalog", "tgl"),
    "tr": ("turkish", "tur"), "tt": ("tatar", "tat"), "uk": ("ukrainian", "ukr"), "ur": ("urdu", "urd"),
    "uz": ("uzbek", "uzb"), "vi": ("vietnamese", "vie"), "yi": ("yiddish", "yid"), "yo": ("yoruba", "yor"),
    "zh": ("chinese", "zho", "chi", "mandarin", "cmn", "中文", "汉语", "普通话"),
    "yue": ("cantonese", "粤语"), "haw": ("hawaiian",),  # no ISO 639-1 code: ISO 639-3's, as SenseVoice and Whisper
}  # fmt: skip

_KEYS = {name: code for code, names in _TABLE.items() for name in names} | {code: code for code in _TABLE}

# ISO 3166-1 alpha-2: the region subtags of BCP 47 ("en" or "ja" is none, so "zh-en" stays a label of its own)
_REGIONS = frozenset(
    """
ad ae af ag ai al am ao aq ar as at au aw ax az ba bb bd be bf bg bh bi bj bl bm bn bo bq br bs bt bv bw by bz ca cc
cd cf cg ch ci ck cl cm cn co cr cu cv cw cx cy cz de dj dk dm do dz ec ee eg eh er es et fi fj fk fm fo fr ga gb gd
ge gf gg gh gi gl gm gn gp gq gr gs gt gu gw gy hk hm hn hr ht hu id ie il im in io iq ir is it je jm jo jp ke kg kh
ki km kn kp kr kw ky kz la lb lc li lk lr ls lt lu lv ly ma mc md me mf mg mh mk ml mm mn mo mp mq mr ms mt mu mv mw
mx my mz na nc ne nf ng ni nl no np nr nu nz om pa pe pf pg ph pk pl pm pn pr ps pt pw py qa re ro rs ru rw sa sb sc
sd se sg sh si sj sk sl sm sn so sr ss st sv sx sy sz tc td tf tg th tj tk tl tm tn to tr tt tv tw tz ua ug um us uy
uz va vc ve vg vi vn vu wf ws ye yt za zm zw
""".split()
)


def language_key(label) -> str | None:
    """The key of a line's language label (FunASR's "<|en|>", "en", "EN", "eng" and "English" are all "en", and so
    are "en-US" and "en_GB"); a label not in the table as written, case-folded; None for a blank one."""
    text = bare_label(label)
    return _KEYS.get(text) or _tagged(text) or text or None


def bare_label(label) -> str:
    """A label as the table is looked up by: FunASR's tag brackets and the case gone ("<|EN|>" -> "en")."""
    return str(label).strip().removeprefix("<|").removesuffix("|>").strip().casefold()


def _tagged(text: str) -> str | None:
    """The language of a tag "LANG[-EXTLANG][-SCRIPT][-REGION]" ("-" or "_": "zh-CN", "zh_Hant_TW", "es-419",
    "zh-yue": Cantonese), None when it has other subtags (a variant, private use, a second language)."""
    lang, *rest = re.split(r"[-_]", text)
    if not rest or lang not in _KEYS:
        return None
    if lang == "zh" and rest[0] in ("cmn", "yue"):  # an extended language subtag: the Chinese language itself
        lang, rest = rest[0], rest[1:]
    if rest and len(rest[0]) == 4 and rest[0].isalpha():  # a script: Hans, Hant, Latn
        rest = rest[1:]
    if rest and (rest[0] in _REGIONS or (len(rest[0]) == 3 and rest[0].isdigit())):  # a region: CN, 419
        rest = rest[1:]
    return None if rest else _KEYS[lang]
