"""One key for each language a manifest line names: lhotse's recipes write a supervision's language as a name
("English", "Mandarin"), FunASR jsonl lines as a code ("en", "<|en|>"), other corpora as a three-letter code ("eng",
"cmn"); results group lines by this key, so one language is one group whichever way its lines spell it.

The key is the ISO 639-1 code where the language has one (else the code SenseVoice and Whisper use: "yue", "haw");
a label not in the table (a region tag such as "en-US", a dialect, a name not listed) is kept as written,
case-folded: guessing would merge groups a user kept apart on purpose.
"""

from __future__ import annotations

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

_KEYS = {name: code for code, names in _TABLE.items() for name in names}


def language_key(label) -> str | None:
    """The key of a line's language label (FunASR's "<|en|>", "en", "EN", "eng" and "English" are all "en"); a label
    not in the table as written, case-folded; None for a blank one."""
    text = str(label).strip().removeprefix("<|").removesuffix("|>").strip().casefold()
    return _KEYS.get(text, text) or None
