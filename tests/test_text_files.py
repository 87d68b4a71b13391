"""Every text file llmasr reads or writes is UTF-8 whatever the locale: transcripts, hotwords, prompts and paths are
often not ASCII, and a server's locale is often not UTF-8 (GBK, Latin-1, or C with UTF-8 mode off). A file written in
the locale's encoding is misread as UTF-8 later, or fails to write at all (the Transcriber's temporary manifest did)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llmasr"


def text_calls_without_an_encoding(root: Path) -> list[str]:
    """`read_text`, `write_text`, `open` and `os.fdopen` calls in text mode that name no encoding."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            keywords = {k.arg for k in node.keywords}
            if "encoding" in keywords:
                continue
            if name in ("read_text", "write_text"):
                bad = len(node.args) <= (0 if name == "read_text" else 1)
            elif name == "fdopen" or (name == "open" and isinstance(func, ast.Name)):
                mode = (
                    node.args[1]
                    if len(node.args) > 1
                    else next((k.value for k in node.keywords if k.arg == "mode"), None)
                )
                text = "r" if mode is None else mode.value if isinstance(mode, ast.Constant) else "?"
                bad = "b" not in text and len(node.args) <= 3
            else:
                continue
            if bad:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {name}")
    return found


def test_every_text_file_is_opened_as_utf8():
    assert text_calls_without_an_encoding(PACKAGE) == []


def test_the_check_finds_what_it_looks_for(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "import os\nfrom pathlib import Path\n"
        "Path('a').read_text()\nPath('a').write_text('x')\nopen('a', 'w')\nos.fdopen(3, 'w')\n"
        "Path('a').read_text(encoding='utf-8')\nopen('a', 'rb')\nPath('a').read_bytes()\n",
        encoding="utf-8",
    )
    assert text_calls_without_an_encoding(pkg) == [
        "pkg/m.py:3 read_text", "pkg/m.py:4 write_text", "pkg/m.py:5 open", "pkg/m.py:6 fdopen",
    ]  # fmt: skip


def test_json_lines_names_the_line_of_each_fault(tmp_path):
    from llmasr.text_files import json_lines

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n  \n[2]\n')  # a BOM, blank lines skipped
    assert list(json_lines(path)) == [(1, {"a": 1}), (4, [2])]
    path.write_bytes(b'{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"rows.jsonl:2: malformed JSON: Expecting value at the end of the line"):
        list(json_lines(path))
    path.write_bytes('{"a": "你好"}\n'.encode("gbk"))
    with pytest.raises(KeyError, match=r"rows.jsonl:1: not UTF-8 text .*GB18030"):
        list(json_lines(path, KeyError))


def test_json_lines_says_what_a_line_holds_where_one_is_no_json(tmp_path):
    """`forms`: what a line of the file holds, said after a line that is not JSON (a plain list of paths), not after
    other faults; the caller had matched "malformed JSON" in the message to add it."""
    from llmasr.text_files import json_lines

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"noise/a.wav\n")
    with pytest.raises(ValueError, match=r"rows.jsonl:1: malformed JSON: .* of the line \(one \{\"x\"\} a line\)$"):
        list(json_lines(path, forms='one {"x"} a line'))
    path.write_bytes('{"a": "你好"}\n'.encode("gbk"))
    with pytest.raises(KeyError, match=r"GB18030") as err:
        list(json_lines(path, KeyError, forms='one {"x"} a line'))
    assert "a line)" not in str(err.value)


def test_key_text_lines_reads_kaldi_and_hyp_tables_alike(tmp_path):
    from llmasr.text_files import key_text_lines

    path = tmp_path / "text"
    # a BOM where `cat` joined files, CRLF, a tab between key and text, runs of spaces inside kept, a key alone
    path.write_bytes("\ufeffu1 hello  world\r\n\n\ufeffu2\tni hao \r\nu3\n".encode())
    assert list(key_text_lines(path)) == [(1, "u1", "hello  world"), (3, "u2", "ni hao"), (4, "u3", "")]
    path.write_bytes("u1 你好\n".encode("gbk"))
    with pytest.raises(KeyError, match=r"text:1: not UTF-8 text .*GB18030"):
        list(key_text_lines(path, KeyError))


def test_json_lines_reads_a_gzipped_file_and_names_one_cut_short(tmp_path):
    import gzip

    from llmasr.text_files import json_lines

    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n' * 2000))
    assert len(list(json_lines(path))) == 2000
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(KeyError, match=r"rows.jsonl.gz: not a complete gzip file \(.*\)"):
        list(json_lines(path, KeyError))
    path.write_bytes(b'{"a": 1}\n')  # plain text named .gz
    with pytest.raises(KeyError, match=r"rows.jsonl.gz: not a complete gzip file"):
        list(json_lines(path, KeyError))


def test_text_line_is_one_line_as_every_reader_takes_it(tmp_path):
    """A BOM and the line's ends are no part of it; a line that is not UTF-8 names its file and line, and standard
    input ("-") is no file name to give iconv."""
    from llmasr.text_files import text_line

    assert text_line("\ufeff a b \r\n".encode(), "x.txt", 1) == "a b"
    gbk = "中文名字.wav\n".encode("gbk")
    with pytest.raises(KeyError, match=r"x.txt:2: not UTF-8 text .*iconv -f GB18030 -t UTF-8 x.txt"):
        text_line(gbk, tmp_path / "x.txt", 2, KeyError)
    with pytest.raises(ValueError, match=r"^-:3: not UTF-8 text .*iconv -f GB18030 -t UTF-8 FILE > FILE.utf8$"):
        text_line(gbk, "-", 3)
