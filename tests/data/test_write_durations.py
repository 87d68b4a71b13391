"""`llmasr data check MANIFEST --write-durations OUT`: the manifest again, each line without a duration given the
one its audio probes to, every other byte kept and every line written."""

import gzip
import json

import numpy as np
import pytest
import soundfile as sf

from llmasr.commands.data_check import main
from llmasr.data.manifest import Manifest
from llmasr.data.write_durations import with_duration


def corpus(tmp_path):
    for name, seconds in (("a", 1.0), ("b", 1.5), ("c", 2.25)):
        sf.write(tmp_path / f"{name}.wav", np.zeros(int(16000 * seconds), dtype=np.float32), 16000)
    lines = [
        {"key": "a", "source": "a.wav", "target": "one", "duration": 1.0},
        {"key": "b", "source": "b.wav", "target": "二 three"},
        {"key": "gone", "source": "gone.wav", "target": "four"},
        {"key": "c_tail", "source": "c.wav", "target": "five", "start": 0.25},
        {"messages": [{"role": "user", "content": "<|startofspeech|>!c.wav<|endofspeech|>"},
                      {"role": "assistant", "content": "six"}]},
    ]  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    return path


def test_lines_without_a_duration_get_the_probed_one_and_nothing_else_changes(tmp_path, capsys):
    path = corpus(tmp_path)
    out = tmp_path / "train_dur.jsonl"
    assert main([str(path), "--write-durations", str(out)]) == 1  # the missing file is a bad line: exit 1, as before
    printed = capsys.readouterr().out
    assert f"wrote {out}: 3 line(s) given the duration probed, 1 already stating one, 1 left without" in printed
    before = path.read_text(encoding="utf-8").splitlines()
    after = out.read_text(encoding="utf-8").splitlines()
    assert len(after) == len(before) and after[0] == before[0] and after[2] == before[2]
    for i, seconds in ((1, 1.5), (3, 2.0), (4, 2.25)):
        assert after[i] == before[i][:-1] + f', "duration": {seconds}}}'
    durations = Manifest.open(out).durations()
    assert np.isnan(durations).tolist() == [False, False, True, False, False]
    assert Manifest.open(out)[3].duration == pytest.approx(2.0)  # a segment from its start to the file's end


def test_a_gz_out_is_written_gzipped(tmp_path, capsys):
    path = corpus(tmp_path)
    out = tmp_path / "train_dur.jsonl.gz"  # every manifest reader opens a .gz name as gzip
    assert main([str(path), "--write-durations", str(out)]) == 1
    capsys.readouterr()
    assert Manifest.open(out).durations()[[0, 1, 3, 4]].tolist() == pytest.approx([1.0, 1.5, 2.0, 2.25])
    assert gzip.decompress(out.read_bytes()).decode().splitlines()[0] == path.read_text().splitlines()[0]


def test_write_durations_goes_beside_its_one_manifest(tmp_path, capsys):
    path = corpus(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(SystemExit):
        main([str(path), str(path), "--write-durations", str(tmp_path / "o.jsonl")])
    assert "--write-durations: check one manifest" in capsys.readouterr().err
    assert main([str(path), "--write-durations", str(tmp_path / "elsewhere" / "o.jsonl")]) == 2
    assert "write it beside" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere" / "o.jsonl").exists()


def test_with_duration_keeps_the_line_and_refuses_what_is_no_object():
    assert with_duration(b'{"key": "x"}', 1.23456789) == b'{"key": "x", "duration": 1.234568}'
    assert with_duration(b"{}", 2) == b'{"duration": 2.0}'
    with pytest.raises(ValueError):
        with_duration(b"[1, 2]", 1.0)


def test_start_up_names_the_command_when_it_probes_many_headers(tmp_path, monkeypatch, caplog):
    from llmasr.data import screen
    from llmasr.data.config import DataConfig

    path = corpus(tmp_path)
    monkeypatch.setattr(screen, "PROBES_WORTH_A_NOTE", 3)
    with caplog.at_level("INFO", logger="llmasr"):
        screen.start_tracker(Manifest.open(path), DataConfig(max_bad_fraction=0.5), name="train", indices=None,
                             rank=0, world_size=1)  # fmt: skip
    assert "train: 4 lines state no duration: their audio headers were probed" in caplog.text
    assert "--write-durations OUT" in caplog.text
    caplog.clear()
    out = tmp_path / "with.jsonl"
    main([str(path), "--write-durations", str(out)])
    with caplog.at_level("INFO", logger="llmasr"):
        screen.start_tracker(Manifest.open(out), DataConfig(max_bad_fraction=0.5), name="train", indices=None,
                             rank=0, world_size=1)  # fmt: skip
    assert "state no duration" not in caplog.text


def test_write_durations_out_is_refused_before_the_audio_is_probed(tmp_path, capsys, monkeypatch):
    """A folder, or a path elsewhere, is refused at once (2), not after probing every line's audio."""
    import llmasr.commands.data_check as data_check

    path = corpus(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    checked = []
    monkeypatch.setattr(data_check, "check_data", lambda *a, **kw: checked.append(a))
    for out, why in [(tmp_path / "elsewhere", "a folder, not a file"), (tmp_path / "x" / "o.jsonl", "write it beside")]:
        assert main([str(path), "--write-durations", str(out)]) == 2
        assert f"--write-durations {out}: " in (err := capsys.readouterr().err) and why in err
    assert checked == []
