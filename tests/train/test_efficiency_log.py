"""Efficiency figures in train.log and TensorBoard, the peak table, and progress without a terminal."""

import io
import time

import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.train import progress as progress_module
from llmasr.train.efficiency import Interval, device_peak, mfu, table_peak
from llmasr.train.flops import StepCount
from llmasr.train.progress import Progress, memory_gb, parse_log_line
from llmasr.train.trainer import train

FIGURES = {"utt/s", "audio_s/s", "tok/s", "mfu", "tflops", "pad_audio", "pad_llm", "data_wait"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "train", n=16)


def run(tiny_llm_dir, corpus, run_dir, preset="zero0", **train_keys):
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=run_dir, epochs=2, max_updates=4, **train_keys)
    r = load_recipe(data=data)
    result = train(r, preset)
    lines = (run_dir / "train.log").read_text().splitlines()
    return result, [parse_log_line(line) for line in lines if " train update=" in line]


def test_log_lines_hold_the_efficiency_figures_and_stderr_no_redraws(tiny_llm_dir, corpus, tmp_path, capfd):
    # Under pytest stderr is not a terminal: as in a cluster job's log, plain lines and no bar.
    result, rows = run(tiny_llm_dir, corpus, tmp_path / "run", progress_every_s=0)
    err = capfd.readouterr().err
    assert "\r" not in err
    assert err.count(" progress update ") == len(result["history"]) == 4
    assert [row["update"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        assert FIGURES <= set(row)
        assert row["mfu"] == "n/a"  # a CPU has no peak unless the recipe gives one
        assert row["skipped_steps"] == 0 and isinstance(row["skipped_steps"], int)  # a count: it read 0.0000
        assert row["tok/s"] > 0 and row["tflops"] > 0 and row["audio_s/s"] > 0
        assert 0 <= row["pad_audio"] < 1 and 0 <= row["pad_llm"] < 1 and 0 <= row["data_wait"] <= 1
    # batches of several utterances of different lengths carry padding on both sides
    assert any(row["pad_audio"] > 0 for row in rows) and any(row["pad_llm"] > 0 for row in rows)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"llm_tokens_per_s", "audio_s_per_s", "tflops", "pad_audio", "pad_llm", "data_wait"}
    assert {f"throughput/{t}" for t in expected} <= tags
    assert "throughput/mfu" not in tags  # nothing to plot without a peak
    assert [e.step for e in events.Scalars("throughput/llm_tokens_per_s")] == [1, 2, 3, 4]


def test_mfu_against_a_recipe_peak(tiny_llm_dir, corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, rows = run(tiny_llm_dir, corpus, tmp_path / "run", peak_tflops=0.001)
    assert all(row["mfu"] > 0 for row in rows)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()  # unrounded values: the log line keeps four decimals, too few for a ratio of small numbers
    mfu, tflops = events.Scalars("throughput/mfu"), events.Scalars("throughput/tflops")
    assert [e.step for e in mfu] == [e.step for e in tflops] == [row["update"] for row in rows]
    for m, t in zip(mfu, tflops):  # achieved FLOP/s over the peak the recipe gave
        assert m.value == pytest.approx(t.value / 0.001, rel=1e-3)


def test_zero3_counts_as_zero0(tiny_llm_dir, corpus, tmp_path):
    """Under ZeRO-3 the weights are partitioned and gathered around each module's forward: the same batches cost the
    same FLOPs as unpartitioned (the counter reads a weight's full size, ds_numel, where DeepSpeed sets it)."""
    plain, _ = run(tiny_llm_dir, corpus, tmp_path / "zero0")
    sharded, _ = run(tiny_llm_dir, corpus, tmp_path / "zero3", preset="zero3")
    assert [h["count"] for h in sharded["history"]] == [h["count"] for h in plain["history"]]
    assert all(h["count"].flops > 0 for h in plain["history"])


def test_a_resumed_run_replaces_the_updates_logged_after_its_checkpoint(tmp_path):
    """A run stopped at update 10 whose last checkpoint was update 5: the resumed run logs 6-10 again, and
    TensorBoard holds those, not two curves over the same updates."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    quiet = io.StringIO()
    first = Progress(tmp_path, 0, 10, 0, log_every=100, stream=quiet)
    for u in range(1, 11):
        first.update(u, 0, {"loss": 10.0 - u}, {"llm": 1e-5}, {})
    first.close()
    time.sleep(1.1)  # the resumed run's events file is another
    resumed = Progress(tmp_path, 0, 10, 5, log_every=100, stream=quiet)
    for u in range(6, 11):
        resumed.update(u, 0, {"loss": 100.0 + u}, {"llm": 1e-5}, {})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    steps = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert steps == [(u, 10.0 - u) for u in range(1, 6)] + [(u, 100.0 + u) for u in range(6, 11)]


def test_progress_bar_only_on_a_terminal(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stats = {"loss": 1.0, "n_utts": 2, "audio_seconds": 3.0}
    for stream, redraws in ((Terminal(), True), (io.StringIO(), False)):
        progress = Progress(tmp_path / type(stream).__name__, 0, 3, log_every=1, progress_every_s=3600, stream=stream)
        for update in (1, 2, 3):
            progress.update(update, 0, stats, {"llm": 1e-4}, {})
        progress.close()
        text = stream.getvalue()
        assert ("\r" in text) == redraws
        if not redraws:  # the first line waits for progress_every_s; the last update always has one
            assert text.count("progress update") == 1 and "progress update 3/3 (100%)" in text


def test_peaks():
    assert table_peak("NVIDIA H100 80GB HBM3", torch.bfloat16) == pytest.approx(989.4e12)
    assert table_peak("NVIDIA H100 PCIe", torch.float16) == pytest.approx(756e12)
    assert table_peak("NVIDIA H200 NVL", torch.bfloat16) == pytest.approx(835e12)  # "H200" had matched first
    assert table_peak("NVIDIA A100-SXM4-80GB", torch.float32) == pytest.approx(19.5e12)
    assert table_peak("Tesla V100-SXM2-32GB", torch.bfloat16) is None  # no bf16 on that chip
    assert table_peak("Some Future GPU", torch.bfloat16) is None
    assert table_peak("NVIDIA L40S", torch.bfloat16) == pytest.approx(362.1e12)
    assert table_peak("NVIDIA L4", torch.bfloat16) == pytest.approx(121e12)
    assert table_peak("NVIDIA GeForce RTX 4090", torch.float16) == pytest.approx(165.2e12)


def test_peaks_match_whole_model_names():
    """A fragment inside another model's name is not that model: a workstation RTX A1000 had A100's 312 TFLOP/s (its MFU
    understated many times over), a GB200 the B200's peak."""
    assert table_peak("NVIDIA RTX A1000", torch.bfloat16) is None
    assert table_peak("NVIDIA GB200", torch.bfloat16) == pytest.approx(2500e12)
    assert table_peak("NVIDIA GH200 480GB", torch.bfloat16) == pytest.approx(989.4e12)
    assert table_peak("NVIDIA A100 80GB PCIe", torch.bfloat16) == pytest.approx(312e12)
    peak, line = device_peak(torch.device("cpu"), torch.float32, None)
    assert peak is None and "n/a" in line and "train.peak_tflops" in line
    peak, line = device_peak(torch.device("cpu"), torch.float32, 2.5)
    assert peak == 2.5e12 and "2.5" in line


def test_bad_keys_are_refused(tiny_llm_dir, corpus, tmp_path):
    for key, value in (("peak_tflops", 0), ("progress_every_s", -1)):
        with pytest.raises(ConfigError, match=f"train.{key}"):
            load_recipe(data=tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path, **{key: value}))


def test_validation_and_saving_are_not_training_time():
    interval = Interval(start=time.monotonic() - 10.0)
    interval.add({"n_utts": 20, "audio_seconds": 40.0}, wait_s=1.0)
    interval.aside_s = 8.0  # 8 of the 10 s went to validation and a checkpoint
    figures = interval.figures(None)
    assert figures["utt/s"] == pytest.approx(10.0, rel=0.01) and figures["audio_s/s"] == pytest.approx(20.0, rel=0.01)
    assert figures["data_wait"] == pytest.approx(0.5, rel=0.01) and figures["mfu"] == "n/a"


def test_utterances_ctc_has_no_path_for_are_counted_and_named(tiny_llm_dir, tmp_path, caplog):
    """A transcript with more CTC labels than its audio has encoder frames gets CTC loss 0 (zero_infinity): the run
    says so once, naming the utterance, and each train line counts such utterances."""
    import json
    import logging

    manifest = write_tiny_corpus(tmp_path / "corpus", n=8)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[3]["target"] = " ".join(["seven eight nine"] * 60)  # hundreds of labels over a second of audio
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tiny_recipe_dict(
        tiny_llm_dir, train=[manifest], output_dir=tmp_path / "run", ctc_weight=0.3, epochs=1, grad_accum=1,
        max_seconds=100.0,
    )  # fmt: skip
    data["data"]["augment"] = {"speed_perturb": {"enable": True, "factors": [1.0, 1.1]}}  # the run passes it on
    with caplog.at_level(logging.WARNING, logger="llmasr.train.progress"):
        train(load_recipe(data=data), "zero0")
    warned = [r.getMessage() for r in caplog.records if "more CTC labels than encoder frames" in r.getMessage()]
    assert len(warned) == 1 and rows[3]["key"] in warned[0] and "speed_perturb's fastest factor 1.1" in warned[0]
    lines = [parse_log_line(line) for line in (tmp_path / "run" / "train.log").read_text().splitlines()]
    counted = [row.get("ctc_unaligned", 0) for row in lines if "update" in row and "loss" in row]
    assert sum(counted) == 1  # one epoch: the utterance is seen once, the others align


SLOW_LOADER_RANK = """
import os, sys, time
sys.path.insert(0, {root!r})
from llmasr.cli import entry
from llmasr.data import dataset

if os.environ["RANK"] == "1":  # this rank's loader takes 0.15 s an utterance; rank 0's is as fast as ever
    real = dataset.SpeechDataset._features

    def slow(self, *args, **kwargs):
        time.sleep(0.15)
        return real(self, *args, **kwargs)

    dataset.SpeechDataset._features = slow
sys.exit(entry())
"""


@pytest.mark.slow
def test_data_wait_is_the_slowest_ranks(tiny_llm_dir, corpus, tmp_path):
    """A loader that is slow on rank 1 alone holds every rank up, rank 0 in the gradient all-reduce, where its loader
    clock does not see it: data_wait read 0.02 (rank 0's own wait) while the run trained at rank 1's loading pace."""
    from pathlib import Path

    import yaml

    from llmasr.testing.launcher import launch_train

    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "unused", epochs=1)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(data))
    script = tmp_path / "rank.py"
    script.write_text(SLOW_LOADER_RANK.format(root=str(Path(__file__).resolve().parents[2])))
    launch_train(recipe_file, "zero0", tmp_path / "run", entry=(str(script),))
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    rows = [parse_log_line(line) for line in lines if " train update=" in line]
    assert rows and all(row["data_wait"] > 0.5 for row in rows), [row["data_wait"] for row in rows]


def test_device_memory_is_logged_for_a_cuda_rank_only(tmp_path, monkeypatch):
    """A CPU run on a host with CUDA (DS_ACCELERATOR=cpu) had logged mem/device_peak_gb=0 for a device it never
    used; a CUDA rank logs its own device's peak."""
    peaks = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: peaks.append(device) or 3 * 2**30)
    assert set(memory_gb(torch.device("cpu"))) == {"mem/host_peak_gb"}
    gpu = torch.device("cuda", 1)
    assert memory_gb(gpu)["mem/device_peak_gb"] == 3.0 and peaks == [gpu]
    seen = []
    monkeypatch.setattr(progress_module, "memory_gb", lambda device=None: seen.append(device) or {})
    for device in (torch.device("cpu"), gpu):
        progress = Progress(tmp_path / str(device), 0, 1, log_every=1, stream=io.StringIO(), device=device)
        progress.update(1, 0, {"loss": 1.0}, {"llm": 1e-4}, {})
        progress.close()
    assert seen == [torch.device("cpu"), gpu]


def test_mfu_weighs_each_dtype_by_its_own_peak(tiny_llm_dir, corpus, tmp_path, monkeypatch, caplog):
    """train.precision fp32 with model.llm.dtype bfloat16: the LLM's matmuls run in bf16 beside the fp32 encoder, so
    MFU is the time the bf16 FLOPs take at the bf16 peak plus the fp32 ones at the fp32 peak, over the time taken.
    It had taken every FLOP at the engine's fp32 peak: a device's bf16 peak is ~15x its fp32 one, so MFU came out
    many times too high (above 1 on a real run)."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmasr.train import efficiency

    peaks = {torch.float32: 0.001, torch.bfloat16: 0.016, torch.float16: 0.016}  # TFLOP/s, as a table row gives

    def device_peak(device, dtype, given):
        return peaks[dtype] * 1e12, f"peak of {dtype} for the test"

    monkeypatch.setattr(efficiency, "device_peak", device_peak)
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=tmp_path / "run", epochs=1, max_updates=3)
    data["model"]["encoder"]["freeze"] = True
    data["model"]["llm"]["dtype"] = "bfloat16"  # frozen base with LoRA: allowed at precision fp32
    with caplog.at_level(logging.INFO, logger="llmasr.train"):
        result = train(load_recipe(data=data), "zero0")
    counts = [h["count"] for h in result["history"]]
    assert all(0 < c.bf16_flops < c.flops for c in counts) and all(c.fp16_flops == 0 for c in counts)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    mfu, tflops = events.Scalars("throughput/mfu"), events.Scalars("throughput/tflops")
    assert len(mfu) == len(tflops) == len(counts)
    for m, t, c in zip(mfu, tflops, counts):
        seconds = c.flops / (t.value * 1e12)
        ideal = (c.flops - c.bf16_flops) / (peaks[torch.float32] * 1e12) + c.bf16_flops / (peaks[torch.bfloat16] * 1e12)
        assert m.value == pytest.approx(ideal / seconds, rel=1e-3)
    said = {r.getMessage() for r in caplog.records}  # train.log names the peak of each dtype that runs
    assert {"peak of torch.float32 for the test", "peak of torch.bfloat16 for the test"} <= said


def test_mfu_is_not_known_without_a_peak_for_a_dtype_that_ran():
    count = StepCount(flops=10e12, bf16_flops=8e12)
    assert mfu(count, 1.0, {torch.float32: 1e12, torch.bfloat16: 16e12}) == pytest.approx(2.5)
    assert mfu(count, 1.0, {torch.float32: 1e12, torch.bfloat16: None}) == "n/a"  # a V100 has no bf16
    assert mfu(count, 2.0, 5e12) == pytest.approx(1.0)  # train.peak_tflops: one peak for every dtype
    assert mfu(StepCount(flops=8e12, bf16_flops=8e12), 1.0, {torch.float32: None, torch.bfloat16: 16e12}) == 0.5
    assert mfu(count, 1.0, None) == mfu(StepCount(), 1.0, {torch.float32: None}) == "n/a"


def test_the_unaligned_warning_names_speed_perturbation_when_it_is_on(tmp_path, caplog):
    """A speed factor above 1 shortens the audio and not its transcript, so a line that aligns at speed 1 can lose
    its CTC path: the once-a-run warning names speed perturbation as well as the transcript when it is on."""
    import logging

    from llmasr.data.augment import AugmentConfig

    aug = AugmentConfig()
    assert aug.squeeze == 1.0  # off by default
    aug.speed_perturb.enable = True
    aug.speed_perturb.factors = [0.9, 1.0, 1.15]
    assert aug.squeeze == 1.15
    stats = {"loss": 1.0, "ctc_unaligned": 1, "ctc_unaligned_keys": ["utt3"]}
    messages = {}
    for squeeze in (1.0, aug.squeeze):
        caplog.clear()
        progress = Progress(tmp_path / str(squeeze), 0, 1, stream=io.StringIO(), speed_squeeze=squeeze)
        with caplog.at_level(logging.WARNING, logger="llmasr.train.progress"):
            progress.update(1, 0, stats, {"llm": 1e-4}, {})
        progress.close()
        (messages[squeeze],) = [r.getMessage() for r in caplog.records if "CTC labels" in r.getMessage()]
    assert "utt3" in messages[1.0] and "speed" not in messages[1.0]
    assert "data.augment.speed_perturb" in messages[1.15] and "1.15" in messages[1.15]


def test_the_eta_counts_the_validations_ahead_once_one_is_timed(tmp_path, monkeypatch, caplog):
    """Before the first validation eta_s is the training left and the validations ahead are counted apart
    (eta_untimed_valid); after it, each one ahead adds the mean pass, and the training pace leaves the passes out
    (the pace over all the time had held no validation before the first, and one too many on its way out)."""
    import logging
    import types

    now = [100.0]
    monkeypatch.setattr(
        progress_module, "time", types.SimpleNamespace(monotonic=lambda: now[0], strftime=time.strftime)
    )
    p = Progress(tmp_path, 0, total_updates=10, validations=[5, 10], stream=io.StringIO(), progress_every_s=0)
    stats, rows = {"loss": 1.0}, []
    caplog.set_level(logging.INFO, logger="llmasr.train")
    for update in range(1, 11):
        now[0] += 2.0  # two seconds an update
        p.update(update, 0, dict(stats), {}, {})
        rows.append(parse_log_line(caplog.records[-1].getMessage()))
        if update in (5, 10):
            now[0] += 30.0  # the validation pass
            p.validated(30.0)
    p.close()
    assert rows[0]["eta_s"] == 18.0 and rows[0]["eta_untimed_valid"] == 2  # 9 updates x 2 s; 2 passes untimed
    assert rows[4]["eta_s"] == 10.0 and rows[4]["eta_untimed_valid"] == 2  # update 5's own pass is still ahead
    assert rows[5]["eta_s"] == 8.0 + 30.0 and "eta_untimed_valid" not in rows[5]  # 4 updates and the last pass
    assert rows[9]["eta_s"] == 30.0  # the last update: its validation left
    assert "eta 18s + 2 validation(s)" in p.stream.getvalue()


def test_a_real_run_s_untimed_validations_are_the_ones_it_runs(tiny_llm_dir, corpus, tmp_path):
    """The trainer tells the eta the validations it will run (check_course.validation_updates): at update 1 every
    one of them is ahead and untimed, and the key goes once the first has run."""
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], valid=[corpus], output_dir=tmp_path / "run", epochs=2,
                            max_updates=5, valid_every_updates=2, save_every_updates=2, keep_last=0)  # fmt: skip
    data["data"]["valid_max_utts"] = 2
    train(load_recipe(data=data), "zero0")
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    rows = [parse_log_line(line) for line in lines if " train update=" in line]
    validated = [parse_log_line(line)["update"] for line in lines if " valid update=" in line]
    assert validated[0] == 2 and len(validated) >= 2  # every 2 updates, and where the run ends
    assert rows[0]["eta_untimed_valid"] == len(validated)
    assert rows[1]["eta_untimed_valid"] == len(validated)  # update 2's pass runs after its line
    assert all("eta_untimed_valid" not in r for r in rows[2:])
    # resumed after update 2 (its checkpoint): the validations still ahead of the resumed run, counted from it
    train(load_recipe(data=data), "zero0", resume="update_00000002")
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if "resumed from" in line)
    rows = [parse_log_line(line) for line in lines[start:] if " train update=" in line]
    again = [parse_log_line(line)["update"] for line in lines[start:] if " valid update=" in line]
    assert rows[0]["update"] == 3 and again == validated[1:]
    assert rows[0]["eta_untimed_valid"] == len(again)
