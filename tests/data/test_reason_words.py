"""One bad line, one reason: `llmasr data check`, training's start-up screen (what its refusal, the bad-data
summary and the ranks' comparison name) and loading at batch time (training's batches, decoding's bad.jsonl) word
the same fault of the same line alike, so a node's `llmasr data check` says what training said there."""

import logging
import re

from speech_fakes import FakePromptBuilder, write_manifest, write_wav

from llmasr.config_io import from_dict
from llmasr.data.bad_data import BadItem
from llmasr.data.bad_reasons import reason_category
from llmasr.data.check import check_data
from llmasr.data.check_report import format_report
from llmasr.data.config import DataConfig
from llmasr.data.dataset import SpeechDataset
from llmasr.data.frontend import FrontendConfig
from llmasr.data.loader import build_dataloader
from llmasr.data.manifest import Manifest
from llmasr.data.screen import screen


def cfg(**batching):
    return from_dict(
        DataConfig, {"num_workers": 0, "batching": {"max_seconds": 20.0, "max_duration": 10.0, **batching}}, "data"
    )


def test_data_check_the_screen_and_loading_word_a_bad_line_alike(tmp_path):
    write_wav(tmp_path / "a.wav", 1.0)
    write_wav(tmp_path / "empty.wav", 0.0)
    write_wav(tmp_path / "vad.wav", 0.01)
    (tmp_path / "corrupt.wav").write_bytes(b"not audio at all" * 10)
    lines = [
        {"key": "ok", "source": "a.wav", "target": "hi"},
        {"key": "gone", "source": "gone.wav", "target": "hi", "duration": 1.0},  # the screen's stat finds it
        {"key": "gone_probed", "source": "gone.wav", "target": "hi"},  # the screen's header probe finds it
        {"key": "corrupt", "source": "corrupt.wav", "target": "hi"},  # an unreadable header
        {"key": "empty", "source": "empty.wav", "target": "hi"},
        {"key": "blank", "source": "a.wav", "target": "  "},
        {"key": "short", "source": "vad.wav", "target": "hi"},  # 160 samples: no feature frame
    ]
    path = str(write_manifest(tmp_path / "m.jsonl", lines))
    checked = {b["key"]: b["reason"] for b in check_data([path], cfg(), FrontendConfig()).bad}
    screened = {b.key: b.reason for b in screen(Manifest.open(path))[0]}
    ds = SpeechDataset(Manifest.open(path), FrontendConfig(), prompt_builder=FakePromptBuilder(), train=True)
    loaded = {it.key: it.reason for it in (ds[i] for i in range(len(lines))) if isinstance(it, BadItem)}
    assert set(checked) == set(loaded) == {"gone", "gone_probed", "corrupt", "empty", "blank", "short"}
    assert set(screened) == set(checked) - {"short"}  # a clip's length shows when it loads (or is probed)
    for key, reason in checked.items():
        assert loaded[key] == reason, key
        assert screened.get(key, reason) == reason, key
    assert checked["gone"] == f"audio {tmp_path / 'gone.wav'}: file not found"
    assert checked["corrupt"].startswith(f"audio {tmp_path / 'corrupt.wav'}: unreadable or corrupt audio (")
    assert {key: reason_category(r) for key, r in checked.items()} == {
        "gone": "audio file not found",
        "gone_probed": "audio file not found",
        "corrupt": "unreadable or corrupt audio",
        "empty": "empty audio",
        "blank": "empty target",
        "short": "audio too short",
    }  # the by_reason keys, as before


def test_data_check_and_train_log_name_a_line_too_long_alike(tmp_path, caplog):
    """A line past a Whisper window below data.batching.max_duration: the check named the window first, train.log
    the recipe's key first."""
    whisper = FrontendConfig(kind="whisper", n_mels=80, chunk_seconds=2.0)
    write_wav(tmp_path / "long.wav", 3.0)
    write_wav(tmp_path / "a.wav", 1.0)
    path = str(write_manifest(tmp_path / "m.jsonl", [
        {"key": "long", "source": "long.wav", "target": "hello there", "duration": 3.0},
        {"key": "a", "source": "a.wav", "target": "hello", "duration": 1.0},
    ]))  # fmt: skip
    data = cfg(max_duration=40.0)
    checked = re.search(r"longer than (.*): 1 lines, skipped", format_report(check_data([path], data, whisper)))
    with caplog.at_level(logging.WARNING, logger="llmasr.data"):
        build_dataloader(data, [path], whisper, prompt_builder=FakePromptBuilder(), train=True)
    trained = re.search(r"1 longer than (.*) \(first: ", caplog.text)
    assert checked and trained and checked.group(1) == trained.group(1), (checked, trained)
    assert trained.group(1) == "data.batching.max_duration = 40 s (the Whisper window, 2 s, caps it)"
