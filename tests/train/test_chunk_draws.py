"""A Paraformer-streaming encoder trained by `llmasr train` (a tiny FunASR SANMEncoderChunkOpt directory): each
training batch runs a chunk configuration drawn as FunASR draws it, the run's checkpoints keep the draw, and a
resumed run draws what the uninterrupted run drew (llmasr.models.sanm_chunk.ChunkDraw)."""

import pytest
import yaml
from check_runner import run_check

from llmasr.recipe import load_recipe
from llmasr.testing.tiny_corpus import tiny_recipe_dict, write_tiny_corpus
from llmasr.testing.tiny_funasr import tiny_streaming_conf, write_funasr_dir
from llmasr.train.trainer import train


@pytest.fixture(scope="module")
def streaming(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    enc = write_funasr_dir(root / "enc", model="ParaformerStreaming", encoder_conf=tiny_streaming_conf())
    return enc, write_tiny_corpus(root / "train", n=20)  # 5 batches: 3 updates of 2


def recipe(tiny_llm_dir, streaming, run, *overrides, **kw):
    enc, corpus = streaming
    data = tiny_recipe_dict(tiny_llm_dir, train=[corpus], output_dir=run, encoder_dir=enc, **kw)
    return load_recipe(data=data, overrides=list(overrides))


def test_training_draws_configurations_and_a_resume_draws_the_same(tiny_llm_dir, streaming, drawn, tmp_path):
    whole = train(recipe(tiny_llm_dir, streaming, tmp_path / "whole"), "zero0")["history"]
    assert [h["update"] for h in whole] == [1, 2, 3]
    uninterrupted = list(drawn)
    assert len(uninterrupted) == 5 and set(uninterrupted) == {0, 1}  # both configurations train (FunASR's draw)

    drawn.clear()
    cut = recipe(tiny_llm_dir, streaming, tmp_path / "cut", save_every_updates=1)
    train(cut, "zero0", stop_after_updates=2)  # saved after update 1; update 2 is lost and redone by the resume
    assert drawn == uninterrupted[:4]
    drawn.clear()
    assert [h["update"] for h in train(cut, "zero0", resume="latest")["history"]] == [2, 3]
    assert drawn == uninterrupted[2:]  # the resume continues the draw of the checkpoint's update

    drawn.clear()
    train(recipe(tiny_llm_dir, streaming, tmp_path / "other", seed=1), "zero0")
    assert drawn != uninterrupted  # the run's seed chooses the draw


def test_train_chunks_first_trains_configuration_0_only(tiny_llm_dir, streaming, drawn, tmp_path):
    train(recipe(tiny_llm_dir, streaming, tmp_path / "run", "model.encoder.conf.train_chunks=first"), "zero0")
    assert drawn == [0] * 5


def test_check_shows_the_configurations_training_runs(tiny_llm_dir, streaming, tmp_path, capsys):
    data = tiny_recipe_dict(tiny_llm_dir, train=[streaming[1]], output_dir=tmp_path / "run", encoder_dir=streaming[0])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    base = ["--config", str(path), "--deepspeed", "zero2", "--out", str(tmp_path / "out")]
    code, out, err = run_check(capsys, *base)
    assert code == 0, err
    assert (
        "streaming encoder chunks (model.encoder.conf.context: chunked)\n"
        "  0: chunk_size 12, stride 8, pad_left 0, look-back 4\n"
        "  1: chunk_size 15, stride 10, pad_left 0, look-back 4\n"
        "  training: one of 2 configurations drawn per batch, alike on every rank (train_chunks: random, FunASR's)\n"
        "  evaluation, validation, decoding, export: configuration 0\n"
    ) in out
    code, out, err = run_check(capsys, *base, "model.encoder.conf.train_chunks=first")
    assert (
        code == 0 and "  training: configuration 0 only (train_chunks: first; FunASR draws one of 2 per batch)" in out
    )
    code, out, err = run_check(capsys, *base, "model.encoder.freeze=true")
    assert code == 0 and "  training: configuration 0 (the encoder is frozen: it runs as in evaluation)" in out
    assert "context is full" not in out
    code, out, err = run_check(capsys, *base, "model.encoder.freeze=true", "model.encoder.conf.context=full")
    said = "  warning: model.encoder.conf.context is full over the frozen Paraformer-streaming encoder of "
    assert code == 0 and said in out and "a frozen encoder cannot learn it" in out, err
    code, out, err = run_check(capsys, *base, "model.encoder.conf.train_chunks=al")
    assert code != 0 and "model.encoder.conf: train_chunks must be one of random, first" in err + out


def test_a_resume_may_switch_train_chunks_and_train_log_says_so(tiny_llm_dir, streaming, drawn, tmp_path):
    """model.encoder.conf.train_chunks may change on a resume (the weights are the same): a run that trained on
    configuration 0 alone (train_chunks: first, or an llmasr that drew none) draws from the seed's start from there,
    one that drew goes on with configuration 0; train.log says which, and how to go on as it trained."""
    from llmasr.models.sanm_chunk import ChunkDraw

    run = tmp_path / "run"
    first = recipe(tiny_llm_dir, streaming, run, "model.encoder.conf.train_chunks=first", save_every_updates=1)
    train(first, "zero0", stop_after_updates=2)
    drawn.clear()
    drawing = recipe(tiny_llm_dir, streaming, run, save_every_updates=1)
    assert [h["update"] for h in train(drawing, "zero0", resume="latest")["history"]] == [2, 3]
    reference = ChunkDraw(2, seed=drawing.train.seed)
    assert drawn == [reference.next() for _ in drawn]
    log = (run / "train.log").read_text()
    assert (
        "its run trained the streaming encoder on chunk configuration 0 alone (train_chunks: first); from here "
        "training draws one of 2 configurations per batch (model.encoder.conf.train_chunks: random). To go on as it "
        "trained, set model.encoder.conf.train_chunks: first"
    ) in log

    drawn.clear()
    again = recipe(tiny_llm_dir, streaming, run, "model.encoder.conf.train_chunks=first", epochs=2)
    train(again, "zero0", resume="latest")
    assert drawn and set(drawn) == {0}
    assert (
        "its run drew a chunk configuration per training batch; from here the streaming encoder trains on "
        in (run / "train.log").read_text()
    )
