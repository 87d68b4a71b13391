"""Fun-ASR-Nano's ChatML jsonl (FunASR's Nano fine-tuning data, as its scp2jsonl writes it) read as a manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from llmasr.data.manifest import BadRecord, Manifest


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMASR_CACHE_DIR", str(tmp_path / "cache"))


def nano_line(audio: str, target: str | None = "你好", task: str = "语音转写：", **extra) -> dict:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"{task}<|startofspeech|>!{audio}<|endofspeech|>"},
    ]
    if target is not None:
        messages.append({"role": "assistant", "content": target})
    return {"messages": messages, **extra}


def write_lines(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_nano_lines_give_audio_task_transcript_and_duration(tmp_path):
    (tmp_path / "wav").mkdir()
    sf.write(tmp_path / "wav" / "IT0011W0002.wav", np.zeros(23200, dtype=np.float32), 16000)
    seconds = 23200 / 16000
    frames = int((seconds * 1000 - 25) // 10 + 1)  # scp2jsonl's speech_length
    path = write_lines(tmp_path / "train.jsonl", [
        nano_line("wav/IT0011W0002.wav", "几点了？", speech_length=frames, text_length=3),
        nano_line(str(tmp_path / "wav" / "IT0011W0002.wav"), "What time is it?", task="语音转写成英文：", key="en1",
                  hotwords=["几点"]),
    ])  # fmt: skip
    m = Manifest.open(path)
    a, b = m[0], m[1]
    assert (a.key, a.source, a.target, a.prompt, a.target_len) == (
        "IT0011W0002", str(tmp_path / "wav" / "IT0011W0002.wav"), "几点了？", "语音转写：", 3)  # fmt: skip
    assert a.duration == pytest.approx(seconds, abs=0.011)
    assert (b.key, b.prompt, b.hotwords, b.duration) == ("en1", "语音转写成英文：", ["几点"], None)
    assert a.system == "You are a helpful assistant."  # the line's own, which its prompt then uses
    d = m.durations()  # the sampler's duration hints, read without parsing every line in full
    assert d[0] == pytest.approx(seconds, abs=0.011) and np.isnan(d[1])
    assert m.fill_durations() == [] and m.durations()[1] == pytest.approx(seconds)


def test_the_nano_forms_funasr_reads_are_read_alike(tmp_path):
    """FunASR's Nano data takes one-element lists for key, speech_length and text_length, and hotwords as a list or
    one text joined by commas, asr_hotwords before hotwords: these lines had all been bad, or a key renamed."""
    path = write_lines(tmp_path / "nano.jsonl", [
        nano_line("wav/1.wav", key=["spk1_utt7"], speech_length=[145], text_length=[2]),
        nano_line("wav/2.wav", hotwords="通义, 千问"),
        nano_line("wav/3.wav", hotwords=""),
        nano_line("wav/4.wav", hotwords=["甲"], asr_hotwords=["乙", "丙"]),
    ])  # fmt: skip
    m = Manifest.open(path)
    assert (m[0].key, m[0].target_len) == ("spk1_utt7", 2) and m[0].duration == pytest.approx(1.47, abs=0.011)
    assert [m[i].hotwords for i in (1, 2, 3)] == [["通义", "千问"], [], ["乙", "丙"]]


def test_a_decoding_manifest_may_leave_out_the_assistant(tmp_path):
    path = write_lines(tmp_path / "test.jsonl", [nano_line("a.wav", target=None)])
    assert Manifest.open(path, need_target=False)[0].target is None
    with pytest.raises(BadRecord, match=r"test.jsonl:1: .*no 'assistant' message \(its content is the transcript\)"):
        Manifest.open(path)[0]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["messages"].append({"role": "user", "content": "again"}),
         r"messages\[3\]: a second 'user' message; llmasr reads one turn a line"),
        (lambda r: r["messages"][1].update(content="语音转写：no audio here"),
         r"the user message must hold the audio once .* found 0"),
        (lambda r: r["messages"][1].update(content=r["messages"][1]["content"] + " please"),
         r"text after <\|endofspeech\|> in the user message \('please'\)"),
        (lambda r: r["messages"][1].update(content="<|startofspeech|>!https://x.cn/a.wav<|endofspeech|>"),
         r"audio 'https://x.cn/a.wav' is a URL; llmasr reads local files"),
        (lambda r: r["messages"][0].update(role="tool"), r"messages\[0\]: role 'tool'; expected one of system"),
        (lambda r: r["messages"][2].update(content=None), r"messages\[2\] \(assistant\): content must be a string"),
        (lambda r: r.update(messages="hello"), r"field 'messages' must be a list"),
        (lambda r: r.update(speech_length="145"), r"field 'speech_length' must be a number"),
    ],
)  # fmt: skip
def test_bad_nano_lines_name_the_line_and_the_fault(tmp_path, change, message):
    rec = nano_line("a.wav")
    change(rec)
    path = write_lines(tmp_path / "bad.jsonl", [nano_line("ok.wav"), rec])
    m = Manifest.open(path)
    assert m[0].key == "ok"
    with pytest.raises(BadRecord, match=r"bad.jsonl:2: .*" + message):
        m[1]


def rendered_prompts(tmp_path, tiny_llm_dir, lines: list[dict]) -> list[str]:
    """The texts the dataset renders for `lines` (on a.wav, written here) with the recipe's system message
    "You are a helpful assistant."."""
    from llmasr.data.dataset import SpeechDataset
    from llmasr.data.frontend import FrontendConfig
    from llmasr.models.prompt import PromptBuilder
    from llmasr.models.tokenizer import load_tokenizer

    sf.write(tmp_path / "a.wav", np.zeros(8000, dtype=np.float32), 16000)
    m = Manifest.open(write_lines(tmp_path / "m.jsonl", lines))
    tok = load_tokenizer(tiny_llm_dir)
    pb = PromptBuilder(tok, task="语音转写：", system="You are a helpful assistant.")
    ds = SpeechDataset(m, FrontendConfig(), train=False, prompt_builder=pb)
    return [tok.decode(ds[i]["text_ids"]) for i in range(len(lines))]


def test_a_lines_system_message_reaches_its_prompt(tmp_path, tiny_llm_dir):
    """The dataset renders a ChatML line with its own system message; a line without one gets the recipe's."""
    own = nano_line("a.wav", "hello")
    own["messages"][0]["content"] = "You transcribe court hearings."
    plain = nano_line("a.wav", "hello")
    del plain["messages"][0]
    texts = rendered_prompts(tmp_path, tiny_llm_dir, [own, plain])
    assert "court hearings" in texts[0] and "helpful" not in texts[0]
    assert "helpful" in texts[1]


def test_a_funasr_lines_own_system_message_reaches_its_prompt(tmp_path, tiny_llm_dir):
    """A FunASR jsonl line's `system` (how pseudo-labels write a ChatML line's) is rendered as the ChatML line's is."""
    own = {"key": "a", "source": "a.wav", "target": "hello", "system": "You transcribe court hearings."}
    plain = {"key": "b", "source": "a.wav", "target": "hello"}
    texts = rendered_prompts(tmp_path, tiny_llm_dir, [own, plain])
    assert [u.system for u in Manifest.open(tmp_path / "m.jsonl")] == ["You transcribe court hearings.", None]
    assert "court hearings" in texts[0] and "helpful" not in texts[0]
    assert "helpful" in texts[1]
    with pytest.raises(BadRecord, match=r"m2.jsonl:1: field 'system' must be a string, got int 3"):
        Manifest.open(write_lines(tmp_path / "m2.jsonl", [{**own, "system": 3}]))[0]
