"""The decoding benchmarks (decode_speed, hotword_lists, hotword_boost, hotword_search_cost, ctc_guidance_cost,
ctc_tiktoken, timestamps, vad_speed, vad_gate_plan, decode_startup, confidence_cost, ctc_gate, pseudo_labels): each
--quick mode writes results of the right structure. No assertion is about speed."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))


def test_decode_speed_quick_reports_every_mode(tmp_path, capsys):
    import decode_speed

    argv = ["--quick", "--beam", "2", "--json-out", str(tmp_path / "d.json"), "--num-workers", "0"]
    assert decode_speed.main(argv) == 0
    res = json.loads((tmp_path / "d.json").read_text())
    assert [m["mode"] for m in res["modes"]] == ["greedy", "beam 2", "greedy + CTC 0.5", "beam 2 + CTC 0.5"]
    assert [m["search"] for m in res["modes"]][2:] == [
        "greedy + CTC prefix scoring (ctc_weight 0.5)", "beam 2 + CTC prefix scoring (ctc_weight 0.5)",
    ]  # fmt: skip
    for m in res["modes"]:
        assert m["utterances"] == 6 and m["utts_per_second"] > 0 and m["rtf"] > 0 and 0 <= m["truncated"] <= 6
    out = capsys.readouterr().out
    assert "| beam 2 + CTC 0.5 |" in out and "Reproduce: `python bench/decode_speed.py --quick --beam 2" in out


def test_confidence_cost_times_decoding_with_and_without(tmp_path, capsys):
    import confidence_cost

    argv = ["--clips", "2", "--rounds", "1", "--beams", "1", "--json-out", str(tmp_path / "c.json")]
    level = logging.getLogger("llmasr").level
    assert confidence_cost.main(argv) == 0
    assert logging.getLogger("llmasr").level == level  # left at ERROR, it silenced every later test's warnings
    (mode,) = json.loads((tmp_path / "c.json").read_text())["modes"]
    assert mode["beams"] == 1 and mode["without"] > 0 and mode["with"] > 0
    assert "| beam 1 |" in capsys.readouterr().out


def test_hotword_search_cost_quick_times_both_matches(capsys):
    import hotword_search_cost

    assert hotword_search_cost.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| 10 | bytes (Chinese) |" in out and "| 10 | token ids (English) |" in out
    assert "| 10 | bytes (Latin + Chinese) |" in out
    assert out.rstrip().splitlines()[-2:][0] == "python bench/hotword_search_cost.py --quick"
    assert out.rstrip().splitlines()[-1].startswith("Commit: ")  # the commit it measured, last


def test_hotword_lists_quick_prints_its_tables(capsys):
    import hotword_lists

    assert hotword_lists.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| word |", "| char |", "| 10-phrase"))]
    last = out.rstrip().splitlines()[-2:]
    assert len(rows) == 3 and last[0] == "python bench/hotword_lists.py --quick" and last[1].startswith("Commit: ")


def test_ctc_guidance_cost_quick_decodes_every_row(tmp_path, capsys):
    import ctc_guidance_cost

    assert ctc_guidance_cost.main(["--quick", "--json-out", str(tmp_path / "c.json")]) == 0
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["rows_decoded_right"] == res["rows"] == 2
    assert res["steps"] > res["tokens_per_row"] and res["candidates_per_row_step"] >= 1
    assert "Reproduce: `python bench/ctc_guidance_cost.py --quick`" in capsys.readouterr().out


def test_ctc_tiktoken_times_both_merges_on_the_same_ids(tmp_path, capsys):
    import ctc_tiktoken

    assert ctc_tiktoken.main(["--lengths", "20", "90", "--texts", "2", "--json-out", str(tmp_path / "t.json")]) == 0
    res = json.loads((tmp_path / "t.json").read_text())
    assert [r["chars"] for r in res["rows"]] == [20, 90] and all(r["heap_ms"] > 0 < r["scan_ms"] for r in res["rows"])
    assert res["command"] == "python bench/ctc_tiktoken.py --lengths 20 90 --texts 2"
    assert "Reproduce: `python bench/ctc_tiktoken.py --lengths 20 90 --texts 2`" in capsys.readouterr().out


def test_hotword_boost_chooses_the_lowest_wer_within_the_leak_and_u_wer_limits(tmp_path, capsys):
    import hotword_boost

    def row(boost, wer, u_wer, leaked):
        return {"boost": boost, "wer": wer, "b_wer": 0.5 - boost / 10, "u_wer": u_wer, "leaked": leaked,
                "distractors": 100}  # fmt: skip

    rows = [row(0, 0.050, 0.030, 0), row(1, 0.036, 0.024, 0), row(2, 0.025, 0.023, 1), row(2.5, 0.027, 0.029, 1)]
    assert hotword_boost.choose(rows) == 2  # not 2.5, the lowest B-WER: more errors over all words
    assert hotword_boost.choose([*rows, row(3, 0.020, 0.030, 2)]) == 2  # 2 leaks of 100: over the limit
    assert hotword_boost.choose([*rows, row(3, 0.020, 0.036, 0)]) == 2  # U-WER 0.6 points above boost 0's
    assert hotword_boost.choose([*rows, row(3, 0.025, 0.023, 0)]) == 2  # a tie goes to the smaller boost
    assert hotword_boost.choose([row(1, 0.1, 0.1, 5)]) is None
    assert hotword_boost.main(["--quick", "--boosts", "2", "--json-out", str(tmp_path / "h.json")]) == 0
    res = json.loads((tmp_path / "h.json").read_text())
    # boost 0 is always decoded: its U-WER is the rule's limit (without it the limit had been skipped)
    assert [r["boost"] for r in res["runs"]] == [0, 2] and res["runs"][0]["distractors"] > 0
    assert "Reproduce: `python bench/hotword_boost.py --quick --boosts 2`" in capsys.readouterr().out


def test_hotword_boost_refuses_a_manifest_with_too_much_bad_data(tmp_path):
    """A manifest whose bad lines pass the bad-data limit (hotword lists that are text, not lists) had been tabled
    on the lines left, where `llmasr decode` fails it."""
    import hotword_boost

    model, cfg, opts, manifest = hotword_boost.quick_setup(tmp_path)
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join(rows + [json.dumps({**json.loads(r), "hotwords": "seven"}) for r in rows]) + "\n")
    with pytest.raises(SystemExit, match=r"^boost 0: .*too much bad data.*--max-bad-fraction"):
        hotword_boost.run(model, cfg, opts, manifest, [0.0, 2.0], tmp_path / "out")
    # the flag the refusal names is the bench's too: with it the half that reads is tabled
    loose = dataclasses.replace(opts, max_bad_fraction=0.6)
    assert hotword_boost.run(model, cfg, loose, manifest, [0.0, 2.0], tmp_path / "out2")
    with pytest.raises(SystemExit):
        hotword_boost.main(["--quick", "--max-bad-fraction", "1.5"])


def test_timestamps_quick_measures_single_clips_and_joined_ones(tmp_path, capsys, monkeypatch):
    import tempfile

    import timestamps

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert timestamps.main(["--quick", "--json-out", str(tmp_path / "t.json")]) == 0
    # --quick's model folder had stayed in /tmp, one more on every suite run
    assert not list(tmp.glob("bench-timestamps-*"))
    res = json.loads((tmp_path / "t.json").read_text())
    single, long = res["single"], res["long"]
    assert (
        single["clips"] == 6 and single["unaligned"] + single["first_start"]["n"] + single["other_word"]["first"] == 6
    )
    assert {"median_s", "mean_abs_s", "p90_abs_s"} <= set(single["first_start"]) or single["first_start"]["n"] == 0
    assert single["wer"] >= 0 and single["insertions"] >= 0
    assert long["utterances"] == 1 and long["clips"] == 6 and long["windows"] >= 1
    assert res["command"] == "python bench/timestamps.py --quick"
    assert "first word start - speech onset" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_timestamps_reads_a_noisy_demo_clips_speech_span_off_its_clean_synthesis(tmp_path):
    """At 10 dB SNR the noise floor is within 30 dB of the peak: the span had ended at the clip's last frame, a
    fraction of a second after the speech, and the README's word-end errors measured that."""
    import timestamps

    from llmasr.demo.synth import synthesize_one

    item = {"key": "c0", "target": "seven three nine", "voice": "en-us+m3", "rate": 170, "pitch": 50,
            "noise_seed": 3}  # fmt: skip
    synthesize_one({**item, "snr_db": 10.0}, str(tmp_path / "noisy.wav"))
    synthesize_one({**item, "snr_db": None}, str(tmp_path / "clean.wav"))
    row = {"key": "c0", "source": "noisy.wav", "target": item["target"], "voice": item["voice"], "rate": 170,
           "pitch": 50, "snr_db": 10.0}  # fmt: skip
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    ((wave, text, span, noise),) = timestamps._read(tmp_path / "m.jsonl", 1)
    clean = timestamps.clean_synthesis(row)
    assert text == item["target"] and len(clean) == len(wave)
    assert span == timestamps.speech_span(clean, timestamps.RATE)
    assert span[1] < len(wave) / timestamps.RATE - 0.1  # the speech ends before the noise does
    # the clip's background, to pad it with: the noisy clip less its clean speech, at the level it had in the clip
    tail = wave[int(span[1] * timestamps.RATE) + 160 :]
    assert noise.std() == pytest.approx(tail.std(), rel=0.25) and noise.std() > 20 * 1e-4
    pad = timestamps.padding(noise, 0.7, np.random.default_rng(0))
    assert pad.shape == (int(0.7 * timestamps.RATE),) and pad.std() == pytest.approx(noise.std(), rel=0.25)


def test_vad_speed_quick_times_every_part(tmp_path, capsys):
    import vad_speed

    out = tmp_path / "vad.json"
    assert vad_speed.main(["--quick", "--json-out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["audio_seconds"] == 20.0 and res["segments"] >= 1
    assert set(res["llmasr"]) == {"features", "network", "endpoints", "total"}
    assert "x real time" in capsys.readouterr().out


def test_vad_speed_times_funasr_on_the_one_thread_llmasr_runs_on(tmp_path, monkeypatch):
    """FunASR's AutoModel sets torch's threads to its `ncpu` (default 4) as it builds the model
    (funasr/auto/auto_model.py); a stand-in doing the same records the threads its generate ran on."""
    import importlib.machinery
    import types

    import vad_speed

    seen = []

    class AutoModel:
        def __init__(self, **kwargs):
            torch.set_num_threads(kwargs.get("ncpu", 4))

        def generate(self, input):
            seen.append(torch.get_num_threads())
            return [{"value": []}]

    funasr = types.ModuleType("funasr")
    funasr.AutoModel, funasr.__spec__ = AutoModel, importlib.machinery.ModuleSpec("funasr", None)
    monkeypatch.setitem(sys.modules, "funasr", funasr)
    out = tmp_path / "vad.json"
    assert vad_speed.main(["--quick", "--json-out", str(out)]) == 0
    assert seen == [1, 1] and json.loads(out.read_text())["funasr"]["threads"] == 1


def test_vad_gate_plan_quick_makes_one_plan_every_way(tmp_path, capsys):
    import vad_gate_plan

    out = tmp_path / "gate.json"
    assert vad_gate_plan.main(["--quick", "--workers", "0", "2", "--json-out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["same_plan"] and sorted(res["runs"]) == ["0", "2"] and res["audio_seconds"] == 18.0
    assert all(r["seconds"] > 0 for r in res["runs"].values())
    assert "| loader workers | seconds | x real time |" in capsys.readouterr().out


def test_decode_startup_quick_times_every_stage_per_line(tmp_path, capsys):
    import decode_startup

    assert decode_startup.main(["--quick", "--json-out", str(tmp_path / "s.json")]) == 0
    res = json.loads((tmp_path / "s.json").read_text())
    (run,) = res["runs"]
    stages = ["Manifest.open", "decoding_prompt", "DecodeRows", "decode start-up"]
    assert run["lines"] == 200 and list(run["seconds"]) == stages
    assert all(run["seconds"][s] > 0 and run["us_per_line"][s] == run["seconds"][s] / 200 * 1e6 for s in stages)
    assert "Reproduce: `python bench/decode_startup.py --quick`" in capsys.readouterr().out


def test_decode_startup_ranks_times_each_rank_and_its_share(tmp_path, capsys):
    import decode_startup

    assert decode_startup.main(["--quick", "--ranks", "2", "--json-out", str(tmp_path / "s.json")]) == 0
    (run,) = json.loads((tmp_path / "s.json").read_text())["runs"]
    assert run["lines"] == 200 and run["ranks"] == 2 and len(run["rank_seconds"]) == 2
    assert run["seconds"]["decode start-up"] == max(run["rank_seconds"]) > 0
    assert sum(run["rank_prompts"]) >= 200 and max(run["rank_prompts"]) < 200  # each rank tokenized its share
    assert "| 200 | 2 |" in capsys.readouterr().out


def test_ctc_gate_quick_decodes_every_set_both_ways(tmp_path, capsys):
    import ctc_gate

    assert ctc_gate.main(["--quick", "--json-out", str(tmp_path / "g.json")]) == 0
    res = json.loads((tmp_path / "g.json").read_text())
    assert [s["set"] for s in res["sets"]] == ["utterances", "one-word clips"]
    whole, words = res["sets"]
    assert whole["utterances"] == 6 and words["utterances"] > 0  # the first and last word of each timed utterance
    for s in res["sets"]:
        assert 0 <= s["emptied_with_words"] <= s["emptied"] <= s["utterances"]
    assert list(res["non_speech"]) == ["silence", "noise_low", "noise_loud", "tone_440hz"]
    for texts in res["non_speech"].values():  # the gate only ever empties a text
        assert texts["on"] in ("", texts["off"])
    assert "Reproduce: `python bench/ctc_gate.py --quick`" in capsys.readouterr().out


def test_pseudo_labels_quick_runs_every_threshold_on_each_set(tmp_path, capsys):
    import pseudo_labels

    assert pseudo_labels.main(["--quick", "--snr-db", "0", "--json-out", str(tmp_path / "p.json")]) == 0
    res = json.loads((tmp_path / "p.json").read_text())
    assert [s["set"] for s in res["sets"]] == ["as recorded", "white noise at 0 dB SNR"]
    for s in res["sets"]:
        got = s["thresholds"]
        assert [t["threshold"] for t in got] == list(pseudo_labels.THRESHOLDS)
        assert got[0]["lines"] == 6 and got[0]["kept"] > 0  # no threshold: every transcript written (not empty)
        assert all(a["kept"] >= b["kept"] for a, b in zip(got, got[1:]))  # a higher bar keeps fewer
    assert "Reproduce: `python bench/pseudo_labels.py --quick --snr-db 0`" in capsys.readouterr().out
