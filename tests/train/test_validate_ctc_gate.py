"""decode.ctc_gate in validation under ZeRO-3 (synced_gpus): a rank whose batch the gate empties whole still runs
generate beside the other ranks (models.ctc_gate.searched_rows), or the rank that searches would wait for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmasr.scoring import score_corpus

SCRIPT = """
import json, sys
sys.path.insert(0, {tests_dir!r})
import torch
from llmasr.models.decoding import DecodeConfig
from llmasr.train.process_group import exit_rank
from test_validate import TARGETS, build_model, make_batches, make_engine, oracle_head, pooled_rows
from llmasr.train.validate import validate

llm_dir, out = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
model = build_model(llm_dir)
batches = pooled_rows(make_batches(model))
model._modules["ctc_head"] = oracle_head(model, lambda t: "" if t == TARGETS[5] else t)  # the last batch: silence
engine = make_engine(model, "zero3", world_size=2)
rank = torch.distributed.get_rank()
cfg = DecodeConfig(max_new_tokens=4, ctc_gate=True)
metrics = validate(engine, [batches[0]] if rank == 0 else [batches[2]], cfg)
json.dump(metrics, open(out + f".{{rank}}", "w"))
exit_rank(0)
"""


@pytest.mark.slow
def test_a_rank_whose_batch_the_gate_empties_still_searches_beside_the_other(tiny_llm_dir, tmp_path):
    from test_validate import TARGETS  # beside this file (pytest puts its folder on sys.path)

    from llmasr.testing.launcher import launch_script

    script = tmp_path / "gated_validate.py"
    script.write_text(SCRIPT.format(tests_dir=str(Path(__file__).parent)))
    out = tmp_path / "metrics.json"
    launch_script(script, tiny_llm_dir, out)
    got = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]
    assert got[0] == got[1] and got[0]["n_utts"] == 3 and got[0]["ctc_gated"] == 1
    # the gated utterance scored as empty, every word of it deleted, whatever the LLM wrote for the other two
    ref_len = score_corpus([(t, "") for t in [*TARGETS[:2], TARGETS[5]]], "auto")[0].ref_len
    assert round(got[0]["wer"] * ref_len) >= len(TARGETS[5].split())


def test_validation_counts_what_the_gate_emptied(tiny_llm_dir):
    """One process: the pool's metrics say how many utterances the gate left empty (train.log's valid line), so a
    head that still hears nothing shows as that, not only as a high error rate; without the gate, no count."""
    from test_validate import TARGETS, build_model, make_batches, oracle_head, plain_engine

    from llmasr.models.decoding import DecodeConfig
    from llmasr.train.validate import validate

    model = build_model(tiny_llm_dir)
    batches = make_batches(model)
    model._modules["ctc_head"] = oracle_head(model, lambda t: "" if t in TARGETS[1:3] else t)
    gated = validate(plain_engine(model), batches, DecodeConfig(max_new_tokens=4, ctc_gate=True))
    assert gated["ctc_gated"] == 2 and gated["n_utts"] == len(TARGETS)
    assert "ctc_gated" not in validate(plain_engine(model), batches, DecodeConfig(max_new_tokens=4))
