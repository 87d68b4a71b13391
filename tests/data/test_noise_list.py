"""The noise list of data.augment.noise: the forms it is written in, and what a list that cannot be one is told."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import soundfile as sf

from llmasr.config_io import ConfigError, from_dict
from llmasr.data.augment import AugmentConfig
from llmasr.data.noise_list import read_noise_list

SR = 16000


def noise_wav(path, seconds=1.0):
    sf.write(path, (np.random.default_rng(0).standard_normal(int(SR * seconds)) * 0.1).astype(np.float32), SR)
    return path


def lhotse_recording(source: str) -> dict:
    return {"id": "n", "sources": [{"type": "file", "channels": [0], "source": source}], "sampling_rate": SR,
            "num_samples": SR, "duration": 1.0, "channel_ids": [0]}  # fmt: skip


def test_lhotse_recordings_and_a_gzipped_list_are_read(tmp_path, monkeypatch):
    """MUSAN as lhotse prepares it (musan_recordings_noise.jsonl.gz) and icefall's cuts of it had been refused: the
    gzip bytes as "not UTF-8 text; save it as UTF-8", a recording as needing 'source'. A relative recording path is
    read from the working directory, as lhotse opens it, else beside the list."""
    noise_wav(tmp_path / "n.wav")
    (tmp_path / "cwd").mkdir()
    noise_wav(tmp_path / "cwd" / "there.wav")
    monkeypatch.chdir(tmp_path / "cwd")
    records = [lhotse_recording("n.wav"), lhotse_recording("there.wav"),
               {"id": "c", "start": 0, "duration": 1.0, "channel": 0, "type": "MonoCut",
                "recording": lhotse_recording(str(tmp_path / "n.wav"))}]  # fmt: skip
    path = tmp_path / "recordings.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    want = [str(tmp_path / "n.wav"), str(tmp_path / "cwd" / "there.wav"), str(tmp_path / "n.wav")]
    assert read_noise_list(path, must_exist=True) == want


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ({"audio_filepath": "n.wav"}, "missing field 'source' (an audio path); the line has 'audio_filepath', which "
                                      "llmasr does not read: rename it 'source'"),
        ({"path": "n.wav"}, "the line has 'path', which llmasr does not read: rename it 'source'"),
        ({"source": ""}, "field 'source' must be an audio path, got ''"),
        (["n.wav"], "a noise record must be a JSON object, got list"),
        ({"id": "n", "sources": [{"type": "url", "source": "https://x/n.wav"}]},
         "lhotse recording source type 'url' is not supported (only 'file'): llmasr reads local files"),
        # a noise draw is a whole file: a command (read as its file on a cut's line) stays refused here
        ({"id": "n", "sources": [{"type": "command", "source": "sox n.wav -t wav - trim 1"}]},
         "lhotse recording source type 'command' is not supported (only 'file'): its command 'sox n.wav"),
        (lhotse_recording("n.wav") | {"transforms": [{"name": "Speed", "kwargs": {"factor": 0.9}}]},
         "lhotse recording transform 'Speed' is not supported (leave the perturbed copies out"),
    ],
)  # fmt: skip
def test_a_record_in_another_form_is_refused_naming_its_line_and_what_to_write(tmp_path, line, said):
    """A NeMo list or one keyed 'path' had been told only that it needs 'source', not which field it gave."""
    noise_wav(tmp_path / "n.wav")
    path = tmp_path / "noise.jsonl"
    path.write_text(json.dumps({"source": "n.wav"}) + "\n" + json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        read_noise_list(path, must_exist=True)
    assert str(err.value).startswith(f"{path}:2: ") and said in str(err.value)


def test_a_plain_list_of_paths_is_told_what_a_noise_list_holds(tmp_path):
    path = tmp_path / "noise.list"
    path.write_text("n.wav\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"noise.list:1: malformed JSON: .*a noise list holds one \{\"source\""):
        read_noise_list(path)


def test_a_directory_is_called_one_not_missing(tmp_path):
    """A folder of noise files given as the list, or listed in it, had been called "not found"."""
    (tmp_path / "musan").mkdir()
    noise_wav(tmp_path / "musan" / "n.wav")
    with pytest.raises(ConfigError, match="augment.noise.manifest: a directory, not a noise list"):
        from_dict(AugmentConfig, {"noise": {"enable": True, "manifest": str(tmp_path / "musan")}}, "augment")
    with pytest.raises(ConfigError, match="a directory, not a noise list"):
        read_noise_list(tmp_path / "musan")
    path = tmp_path / "noise.jsonl"
    path.write_text('{"source": "musan"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=f"noise.jsonl:1: a directory, not an audio file: {tmp_path / 'musan'}"):
        read_noise_list(path, must_exist=True)


def test_crlf_blank_lines_and_a_bom_on_any_line_are_read(tmp_path):
    """Lists joined with `cat` from files saved with a BOM: only the first line's had been taken off."""
    noise_wav(tmp_path / "a.wav")
    noise_wav(tmp_path / "b.wav")
    bom = b"\xef\xbb\xbf"
    (tmp_path / "noise.jsonl").write_bytes(bom + b'{"source": "a.wav"}\r\n\r\n' + bom + b'{"source": "b.wav"}\r\n')
    assert read_noise_list(tmp_path / "noise.jsonl", must_exist=True) == [str(tmp_path / "a.wav"),
                                                                           str(tmp_path / "b.wav")]  # fmt: skip


def test_a_path_written_from_the_working_directory_is_named_as_such(tmp_path, monkeypatch):
    """A list whose relative paths were written from the working directory, as FunASR opens them, had been told only
    "not found" with the path read beside the list."""
    (tmp_path / "noise").mkdir()
    noise_wav(tmp_path / "noise" / "n.wav")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "noise" / "list.jsonl"
    path.write_text('{"source": "noise/n.wav"}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        read_noise_list(path, must_exist=True)
    said = str(err.value)
    assert f"list.jsonl:1: not found: {tmp_path / 'noise' / 'noise' / 'n.wav'} (noise/n.wav is a file from the " in said
    assert f"relative path from the manifest's folder, {tmp_path / 'noise'}:" in said
