"""`llmasr convert funasr`: what a converted Fun-ASR-Nano directory holds (the LLM for plain transformers, Nano's own
prompt and audio token count, the CTC branch) and the decode command on it."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
import yaml

from llmasr.cli import main as cli_main
from llmasr.convert.funasr_nano import convert_funasr
from llmasr.models.adaptor_blocks import funasr_nano_token_len
from llmasr.models.exported import load_exported
from llmasr.testing.tiny_funasr import as_deepspeed_checkpoint
from llmasr.testing.tiny_nano import CTC_VOCAB, write_nano_dir


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


def test_out_llm_keeps_the_llms_own_end_tokens_and_decodes_greedily(tmp_path):
    """OUT/llm's generation_config.json is the source LLM's (the LLM rebuilt from its config.json had a default one),
    as an export writes it: its end tokens are the prompt's first, then the LLM's others (the export had kept the
    first alone, so generate ran past an answer the LLM ended with its other end token), and a plain transformers
    generate() writes the likeliest transcript, not a sample of the chat model's sampling defaults (Qwen3 ships
    do_sample, temperature 0.6, top_k 20)."""
    from transformers import GenerationConfig

    from llmasr.testing.tiny_nano import LLM_DIR

    src = write_nano_dir(tmp_path / "src")
    own = json.loads((src / LLM_DIR / "generation_config.json").read_text())
    eos = own["eos_token_id"]
    own.update(do_sample=True, temperature=0.6, top_k=20, eos_token_id=[eos, eos - 1] if isinstance(eos, int) else eos)
    (src / LLM_DIR / "generation_config.json").write_text(json.dumps(own))
    convert_funasr(src, tmp_path / "out")
    got = GenerationConfig.from_pretrained(str(tmp_path / "out" / "llm"))
    unset = GenerationConfig()  # this transformers' defaults: sampling settings left unset
    assert (got.do_sample, got.eos_token_id) == (False, [eos, eos - 1])
    assert (got.temperature, got.top_k) == (unset.temperature, unset.top_k)


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


def test_a_directory_whose_model_pt_deepspeed_saved_converts_as_the_file_does(converted, tmp_path):
    """Fun-ASR-Nano fine-tuned with FunASR's DeepSpeed trainer leaves model.pt as a folder (ZeRO-2 here): the
    conversion had called it missing; it converts to the same model as the weights file."""
    src, out = converted
    ds_src = shutil.copytree(src, tmp_path / "src")
    as_deepspeed_checkpoint(ds_src)
    assert cli_main(["convert", "funasr", str(ds_src), str(tmp_path / "out")]) == 0
    want, got = load_exported(out).state_dict(), load_exported(tmp_path / "out").state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_ctc_branch_without_its_vocabulary_is_left_out_naming_where_it_looked(tmp_path, caplog):
    src = write_nano_dir(tmp_path / "src")
    (src / "multilingual.tiktoken").unlink()
    with caplog.at_level(logging.WARNING, logger="llmasr.convert.funasr_nano"):
        convert_funasr(src, tmp_path / "out")
    text = caplog.text
    assert "ctc (2 tensors), ctc_decoder (" in text and "no CTC head" in text
    assert (
        f"vocabulary is missing (looked for {src / 'multilingual.tiktoken'})" in text
    )  # once, though two rules reach it
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


def test_every_converted_file_is_readable_as_the_umask_says(converted, tmp_path):
    """safetensors writes 0600 whatever the umask: the converted weights had been readable by their writer alone
    (a colleague's fine-tune or a container's other user could not read them), while the YAML beside them was not."""
    import stat

    _, out = converted
    (tmp_path / "plain").write_text("x")  # the mode a new file gets here
    expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in out.rglob("*") if p.is_file()}
    assert "encoder.safetensors" in modes and "llm/model.safetensors" in modes
    assert modes == dict.fromkeys(modes, oct(expected))


def test_llm_tensors_of_mixed_dtypes_keep_their_precision_at_fp32(tmp_path):
    """A model.pt whose LLM holds float32 tensors beside bf16 ones: the LLM had been staged in the dtype of its first
    tensor (bf16), so --dtype fp32 got the float32 ones rounded to bf16."""
    from transformers import AutoModelForCausalLM

    src = write_nano_dir(tmp_path / "src")
    saved = torch.load(src / "model.pt", weights_only=True)
    key = "llm.model.norm.weight"
    exact = 1.0 + torch.arange(saved["state_dict"][key].numel(), dtype=torch.float32) * 1e-4  # not bf16 values
    saved["state_dict"][key] = exact
    torch.save(saved, src / "model.pt")
    convert_funasr(src, tmp_path / "out", dtype="fp32")
    llm = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "llm"))
    assert torch.equal(llm.state_dict()["model.norm.weight"], exact)
