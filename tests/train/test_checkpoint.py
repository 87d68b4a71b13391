import json

import pytest

from llmasr.train import checkpoint as ck


def make_tags(ckpt_dir, updates):
    for u in updates:
        d = ckpt_dir / ck.tag_for(u)
        d.mkdir(parents=True)
        (d / ck.META).write_text(json.dumps({"update": u}))


def test_tag_names_round_trip_and_sort_by_update():
    assert ck.tag_for(120) == "update_00000120"
    assert ck.update_of("update_00000120") == 120
    assert ck.update_of("latest") is None and ck.update_of("update_12") is None
    assert sorted([ck.tag_for(1000), ck.tag_for(99)]) == [ck.tag_for(99), ck.tag_for(1000)]


@pytest.mark.parametrize(("mode", "expected"), [("min", ["b", "c"]), ("max", ["a", "c"])])
def test_best_list_keeps_k_best_in_mode_order(mode, expected):
    policy = ck.CheckpointPolicy(best_k=2, best_metric="wer", best_mode=mode)
    best = []
    for tag, wer in (("a", 0.5), ("b", 0.2), ("c", 0.3)):
        best = ck.update_best(best, tag, {"wer": wer, "loss": 1.0}, policy)
    assert [b["tag"] for b in best] == expected
    assert all(b["metric"] == "wer" for b in best)


def test_best_list_ignores_missing_and_nan_and_replaces_same_tag():
    policy = ck.CheckpointPolicy(best_k=3, best_metric="loss", best_mode="min")
    best = ck.update_best([], "a", {"loss": float("nan")}, policy)
    best = ck.update_best(best, "b", {"wer": 0.1}, policy)
    assert best == []
    best = ck.update_best(best, "c", {"loss": 2.0}, policy)
    best = ck.update_best(best, "c", {"loss": 1.0}, policy)
    assert best == [{"tag": "c", "metric": "loss", "value": 1.0}]
    assert ck.update_best(best, "d", {"loss": 0.5}, ck.CheckpointPolicy(best_k=0)) == []


def test_rotation_keeps_newest_best_and_latest(tmp_path):
    make_tags(tmp_path, [1, 2, 3, 4, 5])
    (tmp_path / ck.BEST).write_text(json.dumps([{"tag": ck.tag_for(1), "metric": "loss", "value": 0.1}]))
    deleted = ck.rotate(tmp_path, ck.CheckpointPolicy(keep_last=2))
    assert deleted == [ck.tag_for(2), ck.tag_for(3)]
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert left == [ck.tag_for(1), ck.tag_for(4), ck.tag_for(5)]
    assert ck.rotate(tmp_path, ck.CheckpointPolicy(keep_last=0)) == []  # 0 keeps everything


def test_rotation_removes_a_universal_copy_with_its_checkpoint(tmp_path):
    make_tags(tmp_path, [1, 2, 3])
    for u in (1, 3, 9):  # 9: a copy of a checkpoint that is not here (resumed from a read-only folder)
        (tmp_path / (ck.tag_for(u) + ck.UNIVERSAL_SUFFIX)).mkdir()
    assert ck.rotate(tmp_path, ck.CheckpointPolicy(keep_last=2)) == [ck.tag_for(1)]
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert left == [ck.tag_for(2), ck.tag_for(3), ck.tag_for(3) + ck.UNIVERSAL_SUFFIX]


def test_finish_save_writes_meta_best_and_latest_atomically(tmp_path):
    policy = ck.CheckpointPolicy(keep_last=1, best_k=1, best_metric="loss", best_mode="min")
    deleted = []
    for u, metrics in ((2, {"loss": 1.0}), (4, {"loss": 3.0}), (6, {})):
        make_tags(tmp_path, [u])  # what DeepSpeed's save wrote
        deleted += ck.finish_save(tmp_path, ck.tag_for(u), {"update": u, "metrics": metrics}, policy)
    assert ck.read_latest(tmp_path) == ck.tag_for(6)
    assert [b["tag"] for b in ck.read_best(tmp_path)] == [ck.tag_for(2)]
    assert deleted == [ck.tag_for(4)]  # update 2 is the best, update 6 the newest
    assert ck.read_meta(tmp_path / ck.tag_for(6))["update"] == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_resolve_resume_forms(tmp_path):
    run = tmp_path / "run"
    ckpts = ck.checkpoints_dir(run)
    make_tags(ckpts, [3, 7])
    ck.write_atomic(ckpts / ck.LATEST, ck.tag_for(7) + "\n")
    assert ck.resolve_resume("latest", run) == (ckpts, ck.tag_for(7))
    assert ck.resolve_resume("", run) == (ckpts, ck.tag_for(7))
    assert ck.resolve_resume(ck.tag_for(3), run) == (ckpts, ck.tag_for(3))
    assert ck.resolve_resume(str(ckpts / ck.tag_for(3)), tmp_path / "elsewhere") == (ckpts, ck.tag_for(3))
    assert ck.resolve_resume(str(ckpts), tmp_path / "elsewhere") == (ckpts, ck.tag_for(7))


def test_resolve_resume_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        ck.resolve_resume("latest", tmp_path / "empty_run")
    with pytest.raises(FileNotFoundError, match="update_00000009"):
        ck.resolve_resume("update_00000009", tmp_path)
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="llmasr_meta.json"):
        ck.resolve_resume(str(tmp_path / "plain"), tmp_path)
    with pytest.raises(FileNotFoundError, match="interrupted"):
        ck.read_meta(tmp_path / "plain")
