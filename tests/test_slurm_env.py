"""llmasr.slurm_env: the launcher variables of an srun task, from SLURM's as srun and sbatch write them."""

import pytest

from llmasr import slurm_env
from llmasr.config_io import ConfigError
from llmasr.slurm_env import SlurmStep, adopt, slurm_step, tasks_per_node


@pytest.fixture(autouse=True)
def not_adopted(monkeypatch):
    monkeypatch.setattr(slurm_env, "_adopted", None)
    monkeypatch.setattr(slurm_env, "visible_gpus", lambda: 0)  # a CPU node, wherever the tests run


def task(procid, localid, nodeid, *, ntasks=8, per_node="4(x2)", **extra):
    """What srun sets for one task of step 0 of job 77 (the variables llmasr reads, and some it must not mind)."""
    return {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_NTASKS": str(ntasks),
            "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_STEP_TASKS_PER_NODE": per_node,
            "SLURM_TASKS_PER_NODE": per_node, "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid),
            "SLURM_NODEID": str(nodeid), "SLURM_JOB_NODELIST": "gpu[01-02]", **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "want"),
    [("2(x3),1", [2, 2, 2, 1]), ("4", [4]), ("1,2(x2)", [1, 2, 2]), ("8(x1)", [8]), (" 3, 1 ", [3, 1])],
)
def test_tasks_per_node_expands_slurms_repeat_counts(text, want):
    assert tasks_per_node(text) == want


@pytest.mark.parametrize("text", ["", "2(x)", "x3", "2(3)", "2,,1", "-1"])
def test_tasks_per_node_refuses_what_slurm_does_not_write(text):
    with pytest.raises(ValueError, match="is not a count"):
        tasks_per_node(text)


def test_a_task_of_a_two_node_step_is_its_rank_of_the_world():
    step = slurm_step(task(5, 1, 1))
    assert step == SlurmStep(rank=5, world_size=8, local_rank=1, local_size=4, node=1, nodes=2, step="0", job="77")
    assert step.launcher_env() == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_SIZE": "4",
                                   "CROSS_RANK": "1"}  # fmt: skip


def test_nodes_of_different_task_counts_give_each_node_its_own_local_size():
    environ = task(6, 0, 3, ntasks=7, per_node="2(x3),1")
    assert (slurm_step(environ).local_size, slurm_step(task(2, 0, 1, ntasks=7, per_node="2(x3),1")).local_size) == (
        1,
        2,
    )


def test_preserved_environment_the_step_counts_win():
    """`srun -E` keeps the job's SLURM_NTASKS and SLURM_TASKS_PER_NODE; the step's own are SLURM_STEP_*."""
    environ = task(1, 1, 0, ntasks=2, per_node="2", SLURM_NTASKS="16", SLURM_TASKS_PER_NODE="8(x2)")
    assert slurm_step(environ) == SlurmStep(1, 2, 1, 2, 0, 1, "0", "77")


def test_the_batch_scripts_own_process_is_no_srun_task():
    """sbatch -n 8: the script itself has SLURM_NTASKS=8 and SLURM_PROCID=0 but no step id; a plain run there must
    not wait for 7 ranks that never come."""
    batch = {k: v for k, v in task(0, 0, 0).items() if not k.startswith(("SLURM_STEP", "SLURM_STEPID"))}
    assert "SLURM_NTASKS" in batch and slurm_step(batch) is None
    batch["SLURM_STEP_ID"] = "4294967291"  # the batch step's own id, should a Slurm write it: still no srun step
    assert slurm_step(batch) is None


@pytest.mark.parametrize(
    "environ",
    [
        {},  # no SLURM at all
        task(0, 0, 0, ntasks=1, per_node="1"),  # srun -n 1
        task(3, 3, 0, RANK="3", WORLD_SIZE="16"),  # srun starting torchrun / deepspeed: that launcher numbers the ranks
        task(3, 3, 0, WORLD_SIZE="16"),
    ],
)
def test_no_srun_step_of_several_tasks_or_a_launcher_inside_it_leaves_the_environment_alone(environ):
    before = dict(environ)
    assert slurm_step(environ) is None and adopt(environ) is None and environ == before
    assert slurm_env.adopted() is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (task(8, 0, 1), "SLURM_PROCID=8"),  # a rank past the world
        (task(1, 4, 0), "SLURM_LOCALID=4"),  # past its node's task count
        (task(1, 1, 2), "SLURM_NODEID=2"),  # a node the step does not have
        (task(1, 1, 0, ntasks=6), "SLURM_STEP_NUM_TASKS=6, SLURM_STEP_TASKS_PER_NODE='4(x2)'"),  # counts disagree
    ],
)
def test_contradicting_slurm_variables_are_refused_naming_them(environ, message):
    with pytest.raises(ConfigError, match="do not describe one rank of one srun step") as err:
        slurm_step(environ)
    assert message in str(err.value)


def test_unreadable_slurm_variables_are_named():
    with pytest.raises(ConfigError, match="SLURM_PROCID='x' in the environment is not an integer"):
        slurm_step(task("x", 0, 0))
    with pytest.raises(ConfigError, match=r"SLURM_STEP_TASKS_PER_NODE='4\(x\)' in the environment: '4\(x\)' is not"):
        slurm_step(task(0, 0, 0, per_node="4(x)"))
    without = {k: v for k, v in task(0, 0, 0).items() if k != "SLURM_LOCALID"}
    with pytest.raises(ConfigError, match="without SLURM_LOCALID in the environment"):
        slurm_step(without)


BROKEN = [
    ({"SLURM_STEP_TASKS_PER_NODE": None}, "without SLURM_STEP_TASKS_PER_NODE"),
    ({"SLURM_STEP_TASKS_PER_NODE": "4(x"}, "'4(x' is not a count"),
    ({"SLURM_NODEID": None}, "without SLURM_NODEID"),
]


@pytest.mark.parametrize(("change", "said"), BROKEN)
def test_a_missing_or_unreadable_slurm_variable_is_refused_with_how_to_go_on(change, said):
    """These had said only what was missing or unreadable, not what to do about it."""
    environ = {k: v for k, v in {**task(0, 0, 0), **change}.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        slurm_step(environ)
    assert said in str(err.value) and str(err.value).endswith(": " + slurm_env.OWN_RANKS), str(err.value)


def test_adopt_writes_the_launcher_variables_once():
    environ = task(5, 1, 1, MASTER_ADDR="gpu01", MASTER_PORT="29500")
    step = adopt(environ)
    assert step is not None and slurm_env.adopted() == step
    assert {k: environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "CROSS_RANK")} == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_SIZE": "4", "CROSS_RANK": "1"}  # fmt: skip
    assert adopt(environ) is None and slurm_env.adopted() == step  # RANK is set now: a second call changes nothing
    assert step.describe(environ) == (
        "ranks from SLURM (job 77, srun step 0): rank 5 of 8 tasks on 2 node(s), local "
        "rank 1 of 4 on node 1; the ranks meet at gpu01:29500 (MASTER_ADDR:MASTER_PORT)"
    )


@pytest.mark.parametrize(("given", "missing"), [({}, "MASTER_ADDR and MASTER_PORT are"),
                                                ({"MASTER_ADDR": "gpu01"}, "MASTER_PORT is")])  # fmt: skip
def test_adopt_refuses_to_guess_where_the_ranks_meet(given, missing):
    environ = task(0, 0, 0, **given)
    with pytest.raises(ConfigError) as err:
        adopt(environ)
    text = str(err.value)
    assert "an srun step of 8 tasks needs MASTER_ADDR and MASTER_PORT" in text and f"{missing} not set" in text
    assert 'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    assert "export MASTER_PORT=" in text
    assert environ["RANK"] == "0" and slurm_env.adopted() is None  # the rank is known: only rank 0 reports it


@pytest.mark.parametrize(("gpus", "local"), [(1, ("0", "1")), (4, ("3", "4")), (0, ("3", "4"))])
def test_an_srun_task_bound_to_one_gpu_is_local_rank_0_of_1(monkeypatch, gpus, local):
    """--gpus-per-task=1 shows each task its own GPU as device 0, and DeepSpeed takes a rank's device by LOCAL_RANK
    (set_device(3) there had failed): such a task is local rank 0 of 1. A task that sees the node's GPUs, or none
    (CPU ranks), keeps its local rank and the node's size."""
    monkeypatch.setattr(slurm_env, "visible_gpus", lambda: gpus)
    environ = task(3, 3, 0, MASTER_ADDR="gpu01", MASTER_PORT="29500")
    step = adopt(environ)
    assert (environ["LOCAL_RANK"], environ["LOCAL_SIZE"], environ["RANK"], environ["CROSS_RANK"]) == (*local, "3", "0")
    assert step.bound == (gpus == 1)
    assert ("the task sees one GPU, its own: device 0, local rank 0 of 1 to DeepSpeed" in step.describe(environ)) == (
        gpus == 1)  # fmt: skip


@pytest.mark.parametrize(
    "environ, other",
    [
        ({"WORLD_SIZE": "2", "RANK": "1"}, True),
        ({"WORLD_SIZE": "2", "RANK": "0"}, False),  # rank 0 runs it, for the world size
        ({"WORLD_SIZE": "1", "RANK": "0"}, False),
        ({"WORLD_SIZE": "abc", "RANK": "1"}, False),  # no count of ranks: rank 0's check refuses it by name
        ({}, False),
    ],
)
def test_other_launcher_rank_is_a_launched_rank_past_rank_0(environ, other):
    assert slurm_env.other_launcher_rank(environ) is other
    assert (slurm_env.launcher_ranks(environ) is None) is (environ.get("WORLD_SIZE", "1") == "1")
