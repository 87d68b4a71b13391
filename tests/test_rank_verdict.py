"""Start-up steps one rank can fail alone (a weight file or DeepSpeed JSON only its node lacks, or holds otherwise)
end in one gather: every rank stops, one message names the rank, its node and the cause. Ranks are threads here
(llmasr.testing.thread_ranks); tests/recipes/test_multirank.py launches real ones."""

import socket

import pytest

from llmasr.config_io import ConfigError
from llmasr.models.state_dict import CheckpointMismatchError
from llmasr.rank_verdict import RankFailure, flat, run_together
from llmasr.testing.thread_ranks import run_ranks
from llmasr.train import engine


def counted(gather, calls):
    def g(obj):
        calls.append(obj)
        return gather(obj)

    return g


def test_one_ranks_failure_stops_every_rank_naming_its_rank_node_and_cause(monkeypatch):
    monkeypatch.setenv("CROSS_RANK", "3")  # the launcher's number for the node
    cause = CheckpointMismatchError("/node1/enc/model.pt: cannot be read as a weights-only torch checkpoint")

    def step(rank):
        if rank == 1:
            raise cause
        return "model"

    out = run_ranks(3, lambda r, gather: run_together("build the model", lambda: step(r), gather))
    assert out[1] is cause  # the failing rank its own error
    for r in (0, 2):
        assert isinstance(out[r], RankFailure) and isinstance(out[r], ConfigError)
        assert str(out[r]) == (f"rank 1 (node {socket.gethostname()}#3) could not build the model; every rank stops "
                               f"with it:\n  {cause}")  # fmt: skip


@pytest.mark.parametrize("cause, status", [(RuntimeError("cpu_adam failed to build"), 1), (ConfigError("bad key"), 2)])
def test_every_rank_exits_with_the_failed_ranks_status(cause, status):
    """A launcher reports the status of whichever rank it meets first: the ranks that did not fail exit with the
    failed rank's status (1 for an internal error, 2 for bad input), not always 2."""
    from llmasr.errors import exit_status

    def step(rank):
        if rank == 1:
            raise cause
        return "model"

    out = run_ranks(2, lambda r, gather: run_together("build", lambda: step(r), gather))
    assert isinstance(out[0], RankFailure) and out[1] is cause
    assert exit_status(out[0]) == exit_status(out[1]) == status


def test_ranks_that_all_succeed_go_on_after_one_gather_and_one_rank_does_not_gather():
    calls = []
    out = run_ranks(2, lambda r, gather: run_together("build", lambda: r * 10, counted(gather, calls)))
    assert out == [0, 10] and len(calls) == 2  # one gather on each rank
    assert run_together("build", lambda: 7, None) == 7
    with pytest.raises(ValueError, match="alone"):
        run_together("build", lambda: (_ for _ in ()).throw(ValueError("alone")), None)


def test_several_failures_name_the_first_and_count_the_rest():
    def step(rank):
        if rank:
            raise OSError(2, "No such file or directory", f"/node{rank}/ds.json")
        return 1

    out = run_ranks(3, lambda r, gather: run_together("read the config", lambda: step(r), gather))
    assert str(out[0]).startswith("rank 1 (node ") and "(and 1 other rank(s)) could not read the config" in str(out[0])
    assert str(out[0]).endswith("\n  /node1/ds.json: No such file or directory")  # the file the OSError names
    assert isinstance(out[1], OSError) and isinstance(out[2], OSError)


def test_a_config_that_differs_on_one_rank_stops_every_rank_naming_the_keys():
    configs = [{"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0},
               {"zero_optimization": {"stage": 3}, "gradient_clipping": 1.0, "bf16": {"enabled": True}}]  # fmt: skip
    out = run_ranks(2, lambda r, gather: run_together("read the DeepSpeed config", lambda: configs[r], gather,
                                                      same=flat, same_what="DeepSpeed configs"))  # fmt: skip
    for err in out:
        assert type(err) is ConfigError, err
        assert (
            "rank 1 (node " in str(err)
            and "rank 0 (node " in str(err)
            and "read different DeepSpeed configs" in str(err)
        )
        assert str(err).splitlines()[1:] == ["  bf16.enabled: True on rank 1, '(absent)' on rank 0",
                                             "  zero_optimization.stage: 3 on rank 1, 2 on rank 0"]  # fmt: skip
    same = run_ranks(2, lambda r, gather: run_together("read", lambda: dict(configs[0]), gather, same=flat))
    assert same == [configs[0], configs[0]]


def test_flat_names_every_leaf_by_its_dotted_key():
    assert flat({"a": {"b": 1, "c": {}}, "d": [1, 2]}) == {"a.b": 1, "a.c": {}, "d": [1, 2]}


def test_zero3_reads_every_weight_file_on_every_rank_before_the_partitioned_load(monkeypatch):
    """Under ZeRO-3 the LLM's partitioned load is a series of collectives: a rank whose node lacks a weight file
    must not fail inside it alone. Every rank reads the files' names and shapes first, and all stop together."""
    from llmasr.models import builder

    built = []

    def build_model(cfg, *, weights="pretrained"):
        built.append((cfg, weights))
        if cfg == "node1" and weights == "shapes":
            raise CheckpointMismatchError("/node1/enc/model.pt: cut short")
        return "model"

    monkeypatch.setattr(builder, "build_model", build_model)
    zero3 = {"zero_optimization": {"stage": 3}}
    out = run_ranks(2, lambda r, gather: engine.build_model_for_training(f"node{r}", zero3, all_gather=gather))
    assert isinstance(out[0], RankFailure) and "could not read the model's weight files" in str(out[0])
    assert "/node1/enc/model.pt: cut short" in str(out[0]) and isinstance(out[1], CheckpointMismatchError)
    assert sorted(built) == [("node0", "shapes"), ("node1", "shapes")]  # neither rank went on to the real load
    built.clear()
    zero2 = {"zero_optimization": {"stage": 2}}  # no collective inside the build: the trainer's gather follows it
    assert engine.build_model_for_training("node0", zero2, all_gather=lambda v: [v, v]) == ("model", None)
    assert built == [("node0", "pretrained")]
