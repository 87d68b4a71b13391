"""An export of a model whose CTC head spells a token list through a FunASR seg_dict carries the seg_dict, and the
reloaded directory spells text as the run did."""

from __future__ import annotations

import json

from llmasr.export.export import export_model
from llmasr.models.ctc import build_ctc_tokenizer
from llmasr.models.ctc_config import CTCConfig
from llmasr.models.exported import load_exported, read_description
from llmasr.testing.run_dirs import model_section, train_run
from llmasr.testing.tiny_funasr import tiny_sanm_conf, write_funasr_dir

TOKENS = ["<blank>", "<s>", "</s>", "z@@", "ero", "t@@", "wo", "one", "<unk>"]
SEG_DICT = "zero z@@ ero\ntwo t@@ wo\none one\n"


def test_an_export_carries_the_seg_dict(tmp_path, tiny_llm_dir, train_corpus):
    files = tmp_path / "vocab"
    files.mkdir()
    (files / "tokens.json").write_text(json.dumps(TOKENS))
    (files / "seg_dict").write_text(SEG_DICT)
    enc = write_funasr_dir(tmp_path / "enc", encoder_conf=tiny_sanm_conf())
    section = model_section(tiny_llm_dir, enc, encoder_lora=False)
    section["ctc"].update(vocab=str(files / "tokens.json"), seg_dict=str(files / "seg_dict"))
    run = train_run(tmp_path / "run", section, train_corpus).run_dir
    out = export_model(run, tmp_path / "model", dtype="fp32")
    desc = read_description(out)
    assert (out / desc["ctc"]["seg_dict"]).read_text() == (files / "seg_dict").read_text()
    got = load_exported(out).ctc_tokenizer
    ran = build_ctc_tokenizer(CTCConfig(vocab=str(files / "tokens.json"), seg_dict=str(files / "seg_dict")))
    assert type(got).__name__ == "SegDictCTCTokenizer"
    assert got.encode("zero two one") == ran.encode("zero two one") == [3, 4, 5, 6, 7]
