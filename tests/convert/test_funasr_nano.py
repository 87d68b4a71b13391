"""`llmasr convert funasr`: a Fun-ASR-Nano directory becomes an exported llmasr model that decodes as FunASR does.

Always on: tests/fixtures/funasr_nano_parity.pt (written by tests/fixtures/make_nano_fixture.py with FunASR's own
FunASRNano): the converted model's greedy ids on the pinned features equal FunASR's, batched and one by one.
Opt-in (LLMASR_PARITY=1 and funasr importable): the same on a fresh directory, against FunASR now.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from llmasr.cli import main as cli_main
from llmasr.config_io import ConfigError
from llmasr.convert.funasr_nano import ConvertError, convert_funasr
from llmasr.data.collate import Collator
from llmasr.export.exported import load_exported
from llmasr.models.adaptor_blocks import funasr_nano_token_len
from llmasr.testing.tiny_nano import CTC_VOCAB, write_nano_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "funasr_nano_parity.pt"


def feature_batch(model, feats: list[torch.Tensor], hotwords: list[list[str]] | None = None):
    """An inference batch of the given features (and each one's hotword list), through the prompt builder and
    collator decoding uses."""
    prompts = [model.prompt.encode(None, hotwords=h) for h in hotwords or [[]] * len(feats)]
    items = [
        {"key": f"utt{i}", "index": i, "feats": f.numpy().astype(np.float32), "target": "x",
         "text_ids": np.asarray(enc.ids, dtype=np.int64), "audio_pos": enc.audio_pos,
         "target_start": enc.target_start, "ctc_ids": None, "duration": 1.0, "hotwords": enc.hotwords}
        for i, (f, enc) in enumerate(zip(feats, prompts, strict=True))
    ]  # fmt: skip
    return Collator(model.prompt.pad_id)(items)


def until_end(ids: list[int], end_id: int) -> list[int]:
    return ids[: ids.index(end_id) + 1] if end_id in ids else ids


def check_parity(
    src: Path, out: Path, feats: list[torch.Tensor], expected: list[list[int]], max_new: int, hotwords=None
) -> None:
    if not out.exists():
        convert_funasr(src, out)
    model = load_exported(out)
    end = model.prompt.end_id
    # FunASR's greedy search has no repetition stop (the random stand-in loops), so ours runs without it too.
    search = {"max_new_tokens": max_new, "repeat_limit": 0}
    batched = model.generate_ids(feature_batch(model, feats, hotwords), **search)
    alone = [model.generate_ids(feature_batch(model, [f], hotwords and [hotwords[i]]), **search)[0]
             for i, f in enumerate(feats)]  # fmt: skip
    for i, ref in enumerate(expected):
        assert until_end(batched[i], end) == until_end(ref, end), f"utterance {i} batched"
        assert until_end(alone[i], end) == until_end(ref, end), f"utterance {i} alone"


def check_ctc_parity(out: Path, feats: list[torch.Tensor], log_probs: list[torch.Tensor], texts: list[str]) -> None:
    """The converted CTC head's log-probabilities (alone and batched; FunASR's are stored as float16) and greedy texts
    are FunASR's (less its special tokens' tags)."""
    model = load_exported(out)
    with torch.no_grad():
        batch = feature_batch(model, feats)
        enc, enc_lens, _, _ = model.encode_audio(batch.feats, batch.feat_lens)
        batched = model.ctc_head(enc, enc_lens)
        one = [feature_batch(model, [f]) for f in feats]
        alone = [model.ctc_head(*model.encode_audio(b.feats, b.feat_lens)[:2]) for b in one]
    for i, ref in enumerate(log_probs):
        assert int(enc_lens[i]) == ref.shape[0]
        torch.testing.assert_close(batched[i, : ref.shape[0]], ref.float(), atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(alone[i][0], ref.float(), atol=1e-3, rtol=1e-3)
    # FunASR writes a special token's tag (<|startoftranscript|>, <|en|>, ...) into its text; llmasr drops them
    assert model.ctc_texts(batched, enc_lens) == [re.sub(r"<\|[^|]*\|>", "", t) for t in texts]


def unpack_fixture(fixture: dict, src: Path) -> Path:
    for name, text in fixture["files"].items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text, encoding="utf-8")
    torch.save({"state_dict": fixture["state_dict"]}, src / "model.pt")
    return src


def test_pinned_funasr_greedy_ids(tmp_path):
    fixture = torch.load(FIXTURE, weights_only=True)
    assert FIXTURE.stat().st_size < 400_000
    assert len({tuple(i) for i in fixture["ids"]}) == len(fixture["ids"]), "the ids must depend on the audio"
    src = unpack_fixture(fixture, tmp_path / "nano")
    check_parity(src, tmp_path / "out", fixture["feats"], fixture["ids"], fixture["max_new"])
    check_ctc_parity(tmp_path / "out", fixture["feats"], fixture["ctc_log_probs"], fixture["ctc_texts"])


def test_pinned_funasr_greedy_ids_with_hotwords_in_nanos_own_prompt(tmp_path):
    """An utterance's hotwords go into the prompt as FunASRNano.get_prompt writes them, so the ids are FunASR's."""
    fixture = torch.load(FIXTURE, weights_only=True)
    assert fixture["ids_hotwords"][:2] != fixture["ids"][:2], "the lists must change the output"
    src = unpack_fixture(fixture, tmp_path / "nano")
    check_parity(src, tmp_path / "out", fixture["feats"], fixture["ids_hotwords"], fixture["max_new"],
                 fixture["hotwords"])  # fmt: skip


def test_pinned_funasr_ctc_tokenizer_ids(tmp_path):
    """The converted CTC vocabulary encodes as FunASR's SenseVoiceTokenizer (tiktoken) does, and decodes back."""
    fixture = torch.load(FIXTURE, weights_only=True)
    src = unpack_fixture(fixture, tmp_path / "nano")
    convert_funasr(src, tmp_path / "out")
    tok = load_exported(tmp_path / "out").ctc_tokenizer
    for text, ids in zip(fixture["ctc_encode_texts"], fixture["ctc_encoded"], strict=True):
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == text
    assert any(
        len(ids) < len(text.encode("utf-8")) for text, ids in zip(fixture["ctc_encode_texts"], fixture["ctc_encoded"])
    )  # merges ran


@pytest.mark.parity
@pytest.mark.skipif(
    os.environ.get("LLMASR_PARITY") != "1" or importlib.util.find_spec("funasr") is None,
    reason="opt-in: set LLMASR_PARITY=1 and install funasr (see tests/fixtures/make_nano_fixture.py)",
)
def test_live_against_funasr_nano(tmp_path):
    spec = importlib.util.spec_from_file_location("make_nano_fixture", FIXTURES / "make_nano_fixture.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    src = write_nano_dir(tmp_path / "nano", encoder_conf=make.ENCODER, frontend_conf=make.FRONTEND, llm_hidden=32,
                         seed=11)  # fmt: skip
    g = torch.Generator().manual_seed(12)
    feats = [torch.randn(n, 24, generator=g) for n in (31, 7, 18)]
    check_parity(src, tmp_path / "out", feats, make.funasr_nano_ids(src, feats), make.MAX_NEW)
    lists = [["你好"], [], ["world", "语音"]]
    expected = make.funasr_nano_ids(src, feats, hotwords=lists)
    check_parity(src, tmp_path / "out", feats, expected, make.MAX_NEW, lists)
    check_ctc_parity(tmp_path / "out", feats, *make.funasr_nano_ctc(src, feats))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("nano")
    src = write_nano_dir(root / "src")
    assert cli_main(["convert", "funasr", str(src), str(root / "out")]) == 0
    return src, root / "out"


def test_out_llm_loads_with_transformers_alone_and_holds_the_llm_weights(converted):
    from transformers import AutoModelForCausalLM

    src, out = converted
    llm = AutoModelForCausalLM.from_pretrained(str(out / "llm"))
    state = torch.load(src / "model.pt", weights_only=True)["state_dict"]
    for key, value in llm.state_dict().items():
        assert torch.equal(value, state["llm." + key].float()), key
    assert llm.generation_config.eos_token_id == llm.config.eos_token_id  # <|im_end|>


def test_out_llm_keeps_the_llms_own_generation_config(tmp_path):
    """A plain transformers generate() on OUT/llm samples as the source LLM's generation_config.json says (Qwen3
    ships sampling defaults); the LLM rebuilt from its config.json had a default one. Its end tokens are the prompt's
    first, then the LLM's others (the export had kept the first alone, so generate ran past an answer the LLM ended
    with its other end token)."""
    from transformers import GenerationConfig

    from llmasr.testing.tiny_nano import LLM_DIR

    src = write_nano_dir(tmp_path / "src")
    own = json.loads((src / LLM_DIR / "generation_config.json").read_text())
    eos = own["eos_token_id"]
    own.update(do_sample=True, temperature=0.6, top_k=20, eos_token_id=[eos, eos - 1] if isinstance(eos, int) else eos)
    (src / LLM_DIR / "generation_config.json").write_text(json.dumps(own))
    convert_funasr(src, tmp_path / "out")
    got = GenerationConfig.from_pretrained(str(tmp_path / "out" / "llm"))
    assert (got.do_sample, got.temperature, got.top_k, got.eos_token_id) == (True, 0.6, 20, [eos, eos - 1])


def test_prompt_is_nanos_own(converted):
    """FunASR writes `...user\\n语音转写：<audio><|im_end|>\\n<|im_start|>assistant\\n`: no newline before the audio."""
    _, out = converted
    model = load_exported(out)
    tok = model.prompt.tokenizer
    enc = model.prompt.encode(None)
    before = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n语音转写："
    assert enc.ids[: enc.audio_pos] == tok.encode(before)
    assert enc.ids[enc.audio_pos :] == tok.encode("<|im_end|>\n<|im_start|>assistant\n")
    assert tok.convert_ids_to_tokens(model.prompt.end_id) == "<|im_end|>"


def test_only_the_first_fake_token_len_adaptor_frames_enter_the_prompt(converted):
    _, out = converted
    model = load_exported(out)
    lens = torch.tensor([40, 23, 9, 1])
    assert funasr_nano_token_len(lens).tolist() == [5, 3, 2, 1]  # FunASR's three (L - 1) // 2 + 1 halvings
    x = torch.randn(4, 40, model.adaptor.input_dim)
    with torch.no_grad():
        capped, capped_lens = model.adaptor(x, lens)
        model.adaptor.audio_token_cap = "none"
        full, full_lens = model.adaptor(x, lens)
    assert capped_lens.tolist() == [5, 3, 2, 1] and full_lens.tolist() == lens.tolist()
    # The adaptor's transformer blocks see every frame; only the first outputs are kept.
    for b, n in enumerate(capped_lens.tolist()):
        torch.testing.assert_close(capped[b, :n], full[b, :n])


def test_decode_command_on_the_converted_directory(converted, tmp_path):
    from llmasr.commands.decode import main as decode_main
    from llmasr.testing.tiny_corpus import write_tiny_corpus

    _, out = converted
    data = write_tiny_corpus(tmp_path / "corpus", n=3)
    rc = decode_main(["--model", str(out), "--data", str(data), "--output", str(tmp_path / "hyp"),
                      "--num-workers", "0", "--max-new-tokens", "4"])  # fmt: skip
    assert rc == 0
    assert json.loads((tmp_path / "hyp" / "wer.json").read_text())["utterances"] == 3


def test_ctc_branch_converts_with_its_vocabulary(converted, caplog):
    src, out = converted
    desc = yaml.safe_load((out / "llmasr_model.yaml").read_text())
    assert desc["ctc"]["vocab"] == "ctc_vocab.tiktoken" and desc["ctc"]["vocab_size"] == CTC_VOCAB
    assert desc["ctc"]["decoder"] == {"n_layer": 1, "ffn_dim": 48, "n_head": 8, "dropout": 0.0}
    assert desc["ctc"]["detach_encoder"] is True  # the tiny config's detach_ctc_decoder, as Nano's
    assert (out / "ctc_vocab.tiktoken").read_bytes() == (src / "multilingual.tiktoken").read_bytes()
    model = load_exported(out)
    assert model.ctc_tokenizer.blank_id == CTC_VOCAB - 1 and model.ctc_head.detach_encoder
    state = torch.load(src / "model.pt", weights_only=True)["state_dict"]
    head = model.ctc_head.state_dict()
    assert torch.equal(head["proj.weight"], state["ctc.ctc_lo.weight"].float())
    assert torch.equal(head["decoder.blocks.0.norm1.weight"], state["ctc_decoder.blocks.0.norm1.weight"].float())
    assert len(head) == sum(k.startswith(("ctc_decoder.", "ctc.")) for k in state)


def test_ctc_branch_without_its_vocabulary_is_left_out_naming_where_it_looked(tmp_path, caplog):
    src = write_nano_dir(tmp_path / "src")
    (src / "multilingual.tiktoken").unlink()
    with caplog.at_level(logging.WARNING, logger="llmasr.convert.funasr_nano"):
        convert_funasr(src, tmp_path / "out")
    text = caplog.text
    assert "ctc (2 tensors), ctc_decoder (" in text and "no CTC head" in text
    assert f"vocabulary is missing (looked for {src / 'multilingual.tiktoken'}" in text
    assert yaml.safe_load((tmp_path / "out" / "llmasr_model.yaml").read_text())["ctc"] is None


def test_ctc_tensors_the_head_does_not_hold_are_named_as_left_out(tmp_path, caplog):
    """With the branch converted, a tensor under `ctc.` beside ctc_lo is not taken silently."""
    src = write_nano_dir(tmp_path / "src")
    state = torch.load(src / "model.pt", weights_only=True)
    state["state_dict"]["ctc.extra.weight"] = torch.zeros(3)
    torch.save(state, src / "model.pt")
    with caplog.at_level(logging.WARNING, logger="llmasr.convert.funasr_nano"):
        convert_funasr(src, tmp_path / "out")
    assert "ctc.extra (1 tensors): not part of the CTC head" in caplog.text
    assert "ctc_decoder (" not in caplog.text  # the branch itself converted
    desc = yaml.safe_load((tmp_path / "out" / "llmasr_model.yaml").read_text())
    assert desc["source"]["left_out"] == ["ctc.extra"] and desc["ctc"]["vocab"] == "ctc_vocab.tiktoken"


def test_decode_timestamps_on_the_converted_directory(converted, tmp_path):
    """Nano's CTC branch gives word times on the converted model (as FunASR's gives its timestamps), its own
    transcripts, and rescores a beam's n-best."""
    from llmasr.commands.decode import main as decode_main
    from llmasr.testing.tiny_corpus import write_tiny_corpus

    _, out = converted
    data = write_tiny_corpus(tmp_path / "corpus", n=3)
    rc = decode_main(["--model", str(out), "--data", str(data), "--output", str(tmp_path / "hyp"), "--timestamps",
                      "--ctc", "--num-workers", "0", "--max-new-tokens", "3"])  # fmt: skip
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "hyp" / "results.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["timestamps"]]
    assert timed, rows
    for r in timed:
        assert [w for w, _, _ in r["timestamps"]] == r["hyp"].split()
        assert all(0 <= start <= end <= r["duration"] + 0.1 for _, start, end in r["timestamps"])
    ctc = json.loads((tmp_path / "hyp" / "ctc" / "wer.json").read_text())  # and the CTC branch's own transcripts
    assert ctc["utterances"] == 3 and ctc["branch"] == "ctc"
    rc = decode_main(["--model", str(out), "--data", str(data), "--output", str(tmp_path / "beam"), "--beam", "2",
                      "--num-workers", "0", "--max-new-tokens", "3"])  # fmt: skip
    assert rc == 0 and "beam 2 + CTC n-best rescoring" in (tmp_path / "beam" / "wer.txt").read_text()


def test_audio_longer_than_nanos_segments_decodes_in_windows(converted, tmp_path):
    """OUT records Nano's 30 s segments as its longest audio, so a 70 s recording is cut into windows."""
    import soundfile as sf

    from llmasr.commands.decode import main as decode_main

    _, out = converted
    assert yaml.safe_load((out / "llmasr_model.yaml").read_text())["training"]["longest_seconds"] == 30.0
    rng = np.random.default_rng(0)
    wave = np.concatenate([rng.normal(0, 0.1, 16000 * 20) if i % 2 == 0 else np.zeros(16000) for i in range(7)])
    sf.write(tmp_path / "long.wav", wave.astype(np.float32), 16000)
    (tmp_path / "long.jsonl").write_text(json.dumps({"key": "long", "source": "long.wav", "target": "x"}) + "\n")
    rc = decode_main(["--model", str(out), "--data", str(tmp_path / "long.jsonl"), "--output", str(tmp_path / "hyp"),
                      "--num-workers", "0", "--max-new-tokens", "2"])  # fmt: skip
    assert rc == 0
    row = json.loads((tmp_path / "hyp" / "results.jsonl").read_text())
    assert row["duration"] == pytest.approx(83.0) and row["windows"] >= 3


def _edit_config(src: Path, **changes) -> None:
    config = yaml.safe_load((src / "config.yaml").read_text(encoding="utf-8"))
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    (src / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": "SenseVoiceSmall"}, "converts FunASR's LLM-ASR model FunASRNano"),
        ({"audio_adaptor": "QFormer"}, "audio_adaptor is 'QFormer'"),
        ({"audio_adaptor_conf__llm_dim": 99}, "audio_adaptor_conf.llm_dim is 99 but the LLM's config.json"),
        ({"audio_encoder_conf__output_size": 48}, "takes 32-dim encoder frames (downsample_rate 1) but"),
        ({"tokenizer_conf__init_param_path": "${llm_conf.nowhere}"}, "names no key of the config"),
        ({"ctc_decoder": "Linear"}, "ctc_decoder is 'Linear'; the converter maps `Transformer` only"),
        ({"ctc_decoder_conf__downsample_rate": 2}, "ctc_decoder_conf.downsample_rate is 2"),
        ({"ctc_decoder_conf__llm_dim": 24}, "ctc_decoder_conf.llm_dim is 24 but the CTC layer (ctc.ctc_lo) takes"),
        ({"ctc_conf__blank_id": 0}, "ctc_conf.blank_id is 0; llmasr's tiktoken CTC vocabulary has the blank last"),
        ({"ctc_vocab_size": 60515}, "gives ctc_vocab_size 60515 over the encoder's 32-dim frames"),
    ],
)
def test_what_cannot_be_converted_is_refused_with_what_and_why(tmp_path, change, message):
    src = write_nano_dir(tmp_path / "src")
    if "tokenizer_conf__init_param_path" in change:  # a reference inside a section the converter reads
        change = {"llm_conf__init_param_path": change["tokenizer_conf__init_param_path"]}
        (src / "configuration.json").unlink()
    _edit_config(src, **change)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")):
        convert_funasr(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_llm_hidden_size_that_disagrees_with_the_adaptor_is_named(tmp_path):
    src = write_nano_dir(tmp_path / "src")
    cfg = json.loads((src / "Qwen3-0.6B" / "config.json").read_text())
    (src / "Qwen3-0.6B" / "config.json").write_text(json.dumps({**cfg, "hidden_size": 96}))
    with pytest.raises(ConfigError, match=r"outputs 64-dim embeddings but the LLM's config.json has hidden_size 96"):
        convert_funasr(src, tmp_path / "out")


def test_funasr_lora_tensors_are_refused(tmp_path):
    src = write_nano_dir(tmp_path / "src")
    state = torch.load(src / "model.pt", weights_only=True)
    state["state_dict"]["llm.model.layers.0.self_attn.q_proj.lora_A"] = torch.zeros(4, 64)
    torch.save(state, src / "model.pt")
    with pytest.raises(ConvertError, match="LoRA tensor"):
        convert_funasr(src, tmp_path / "out")


def test_out_over_the_model_being_converted_is_refused(tmp_path):
    """--overwrite replaces OUT whole: OUT as the source directory (or a folder holding it) would delete it."""
    src = write_nano_dir(tmp_path / "src")
    before = sorted(p.name for p in src.iterdir())
    for out, why in ((src, "is"), (tmp_path, "holds")):
        with pytest.raises(ConvertError, match=f"OUT {out}: {why} {src.resolve()}, which the conversion reads"):
            convert_funasr(src, out, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_as_the_current_folder_is_written_in_place(tmp_path, monkeypatch, overwrite):
    """`llmasr convert funasr SRC .`: "." has no name, so the staging folder was made inside OUT, and replacing OUT
    at the end deleted the converted model (and with --overwrite, what the folder held). The folder stays, the
    model is in it, nothing is left beside it."""
    src = write_nano_dir(tmp_path / "src")
    here = tmp_path / "here"
    here.mkdir()
    if overwrite:
        (here / "old.txt").write_text("replaced")
    monkeypatch.chdir(here)
    assert convert_funasr(src, ".", overwrite=overwrite) == Path(".")
    assert (here / "llmasr_model.yaml").is_file() and (here / "llm" / "config.json").is_file()
    assert not (here / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "src"]  # no staging folder left
    load_exported(here)


def test_references_resolve_and_configuration_json_maps_the_llm(tmp_path):
    """The released config writes `${...}` references; configuration.json names the LLM directory."""
    src = write_nano_dir(tmp_path / "src")
    (src / "Qwen3-0.6B").rename(src / "qwen")
    metas = json.loads((src / "configuration.json").read_text())
    metas["file_path_metas"]["llm_conf"]["init_param_path"] = "qwen"
    (src / "configuration.json").write_text(json.dumps(metas))
    convert_funasr(src, tmp_path / "out")
    assert (tmp_path / "out" / "llm" / "model.safetensors").is_file()


def test_audio_token_cap_refuses_ctc_compress():
    from llmasr.config_io import from_dict
    from llmasr.models.config import AdaptorConfig

    with pytest.raises(ConfigError, match="audio_token_cap: 'funasr_nano' counts the encoder's frames"):
        from_dict(AdaptorConfig, {"audio_token_cap": "funasr_nano", "ctc_compress": "avg"}, "model.adaptor")
