"""The run directory's format (llmasr.run_dir): tags, `latest`, the meta record, best list, rotation, resolving."""

import json
import os

import pytest

from llmasr import run_dir as ck


def meta(update: int, metrics: dict | None = None, **fields) -> ck.CheckpointMeta:
    return ck.CheckpointMeta(
        update=update, epoch=0, world_size=1, zero_stage=0, base_fingerprint={}, trainable=["adaptor.w"],
        metrics=metrics or {}, **fields,
    )  # fmt: skip


def make_tags(ckpt_dir, updates):
    for u in updates:
        d = ckpt_dir / ck.tag_for(u)
        d.mkdir(parents=True)
        ck.write_meta(d, meta(u))


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
        best = ck.update_best(best, tag, meta(1, {"wer": wer, "loss": 1.0}), policy)
    assert [b["tag"] for b in best] == expected
    assert all(b["metric"] == "wer" for b in best)


def test_best_list_ignores_missing_and_nan_and_replaces_same_tag():
    policy = ck.CheckpointPolicy(best_k=3, best_metric="loss", best_mode="min")
    best = ck.update_best([], "a", meta(1, {"loss": float("nan")}), policy)
    best = ck.update_best(best, "b", meta(2, {"wer": 0.1}), policy)
    assert best == []
    best = ck.update_best(best, "c", meta(3, {"loss": 2.0}), policy)
    best = ck.update_best(best, "c", meta(3, {"loss": 1.0}), policy)
    assert best == [{"tag": "c", "metric": "loss", "value": 1.0}]
    assert ck.update_best(best, "d", meta(4, {"loss": 0.5}), ck.CheckpointPolicy(best_k=0)) == []


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
        (tmp_path / ck.tag_for(u)).mkdir()  # what DeepSpeed's save wrote
        deleted += ck.finish_save(tmp_path, ck.tag_for(u), meta(u, metrics), policy)
    assert ck.latest(tmp_path) == ck.tag_for(6)
    assert [b["tag"] for b in ck.read_best(tmp_path)] == [ck.tag_for(2)]
    assert deleted == [ck.tag_for(4)]  # update 2 is the best, update 6 the newest
    assert ck.read_meta(tmp_path / ck.tag_for(6)) == meta(6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_universal_copy_is_no_checkpoint_of_its_own(tmp_path):
    """ds_to_universal copies the model states beside the checkpoint: that copy is neither listed nor averaged."""
    make_tags(tmp_path, [1000, 1100, 1200])
    copy = tmp_path / (ck.tag_for(1000) + ck.UNIVERSAL_SUFFIX)
    copy.mkdir()
    (copy / "mp_rank_00_model_states.pt").write_bytes(b"x")
    assert ck.list_tags(tmp_path) == [ck.tag_for(1000), ck.tag_for(1100), ck.tag_for(1200)]
    ref = ck.CheckpointRef(tmp_path.parent, tmp_path, ck.tag_for(1200))
    assert ck.select_tags(ref, 3) == [ck.tag_for(1000), ck.tag_for(1100), ck.tag_for(1200)]
    with pytest.raises(ck.CheckpointError, match="only 1 is available under "):
        ck.select_tags(ck.CheckpointRef(tmp_path.parent, tmp_path, ck.tag_for(1000)), 2)


def test_a_tag_saved_again_is_cleared_first_and_latest_and_best_move_off_it(tmp_path):
    """A save into a folder left from before (another world size's shards, a cut-short save): rank 0 removes it
    and its universal copy; `latest` falls back to the newest complete checkpoint, best.json drops it."""
    make_tags(tmp_path, [1, 2])
    (tmp_path / ck.tag_for(3)).mkdir()  # a save cut short: shards, no meta
    (tmp_path / ck.tag_for(3) / "zero_pp_rank_3_mp_rank_00_optim_states.pt").write_bytes(b"old")
    assert ck.clear_tag(tmp_path, ck.tag_for(3)) and not (tmp_path / ck.tag_for(3)).exists()
    assert not ck.clear_tag(tmp_path, ck.tag_for(3))
    (tmp_path / ck.LATEST).write_text(ck.tag_for(2) + "\n")
    (tmp_path / ck.BEST).write_text(json.dumps([{"tag": t, "metric": "loss", "value": v}
                                                for t, v in ((ck.tag_for(2), 0.1), (ck.tag_for(1), 0.2))]))  # fmt: skip
    (tmp_path / (ck.tag_for(2) + ck.UNIVERSAL_SUFFIX)).mkdir()
    assert ck.clear_tag(tmp_path, ck.tag_for(2))
    assert ck.latest(tmp_path) == ck.tag_for(1) and [b["tag"] for b in ck.read_best(tmp_path)] == [ck.tag_for(1)]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [ck.tag_for(1)]
    assert ck.clear_tag(tmp_path, ck.tag_for(1)) and ck.latest(tmp_path) is None


def test_a_resume_from_an_earlier_checkpoint_sets_the_later_ones_aside(tmp_path):
    """Resumed at update 3 of a run saved up to 5: updates 4 and 5 (and a universal copy, their best.json entries,
    `latest`) move out of rotation's and averaging's way, into a folder export can still read."""
    make_tags(tmp_path, [1, 2, 3, 4, 5])
    (tmp_path / ck.tag_for(6)).mkdir()  # a save cut short (no meta): no course, cleared when update 6 is saved
    (tmp_path / (ck.tag_for(5) + ck.UNIVERSAL_SUFFIX)).mkdir()
    (tmp_path / ck.LATEST).write_text(ck.tag_for(5) + "\n")
    best = [{"tag": ck.tag_for(u), "metric": "loss", "value": v} for u, v in ((4, 0.1), (2, 0.2))]
    (tmp_path / ck.BEST).write_text(json.dumps(best))
    moved, aside = ck.set_aside_later(tmp_path, 3)
    assert moved == [ck.tag_for(4), ck.tag_for(5)] and aside == tmp_path / "abandoned_at_update_00000003"
    assert ck.list_tags(tmp_path) == [ck.tag_for(1), ck.tag_for(2), ck.tag_for(3)]
    assert ck.latest(tmp_path) == ck.tag_for(3) and ck.read_best(tmp_path) == best[1:]
    assert ck.list_tags(aside) == moved and ck.latest(aside) == ck.tag_for(5) and ck.read_best(aside) == best[:1]
    assert (aside / (ck.tag_for(5) + ck.UNIVERSAL_SUFFIX)).is_dir() and (tmp_path / ck.tag_for(6)).is_dir()
    ck.rotate(tmp_path, ck.CheckpointPolicy(keep_last=1))  # rotation keeps the resumed course's newest
    assert ck.list_tags(tmp_path) == [ck.tag_for(2), ck.tag_for(3)]
    assert ck.set_aside_later(tmp_path, 3) == ([], None)  # nothing later: nothing moves
    make_tags(tmp_path, [4])
    assert ck.set_aside_later(tmp_path, 3)[1].name == "abandoned_at_update_00000003_2"


def test_a_resume_from_a_set_aside_checkpoint_sets_aside_the_course_it_left(tmp_path):
    """Resumed from update 2, the run saved 3' and 4'; then resumed from the first course's update 4, set aside:
    3' and 4' are the other course (4' too, though it is not later than 4) and make way. 4' had stayed, so the
    continued course saved 5 after it and rotation and last-N averaging mixed the two."""
    ckpts = tmp_path / ck.CHECKPOINTS
    make_tags(ckpts, [1, 2, 3, 4])
    _, first = ck.set_aside_later(ckpts, 2)
    make_tags(ckpts, [3, 4])
    (ckpts / ck.LATEST).write_text(ck.tag_for(4) + "\n")
    moved, aside = ck.set_aside_later(ckpts, 4, first)
    assert moved == [ck.tag_for(3), ck.tag_for(4)] and aside.name == "abandoned_at_update_00000002_2"
    assert ck.list_tags(ckpts) == [ck.tag_for(1), ck.tag_for(2)] and ck.latest(ckpts) == ck.tag_for(2)
    assert ck.list_tags(first) == [ck.tag_for(3), ck.tag_for(4)]  # the course resumed stays where it was loaded
    make_tags(ckpts, [3])
    assert ck.set_aside_later(ckpts, 2, ckpts) == ([ck.tag_for(3)], ckpts / "abandoned_at_update_00000002_3")


def test_a_complete_checkpoint_newer_than_latest_is_the_resume_point(tmp_path):
    """A job killed after update 4's meta, before `latest` (still update 2): update 4 is complete, and a resume of
    the run continues it; one without its meta (update 5, a save cut short) is not. It had resumed `latest` and set
    the complete update 4 aside as a course left behind; with no `latest` at all (the first save), `auto` started
    afresh and was refused the folder."""
    run = tmp_path / "run"
    ckpts = ck.checkpoints_dir(run)
    make_tags(ckpts, [1])
    assert ck.latest(ckpts) is None and ck.resume_point(ckpts) == ck.tag_for(1)
    assert ck.resume_or_start("auto", run) == "latest" and ck.resolve_resume("auto", run) == (ckpts, ck.tag_for(1))
    make_tags(ckpts, [2])
    (ckpts / ck.LATEST).write_text(ck.tag_for(2) + "\n")  # update 2's save named it; update 4's was killed
    make_tags(ckpts, [4])
    (ckpts / ck.tag_for(5)).mkdir()
    (ckpts / ck.tag_for(5) / "mp_rank_00_model_states.pt").write_bytes(b"cut short")
    assert ck.resolve_resume("latest", run) == (ckpts, ck.tag_for(4))
    assert ck.resolve_resume(str(ckpts), tmp_path) == (ckpts, ck.tag_for(4))
    assert ck.resolve_resume(ck.tag_for(2), run) == (ckpts, ck.tag_for(2))  # a tag asked for is that tag
    policy = ck.CheckpointPolicy(best_k=2)
    ck.write_meta(ckpts / ck.tag_for(4), meta(4, {"loss": 0.5}))
    assert not ck.finish_unnamed(ckpts, ck.tag_for(1), policy)  # older than `latest`: nothing to finish
    assert ck.finish_unnamed(ckpts, ck.tag_for(4), policy)
    assert ck.latest(ckpts) == ck.tag_for(4) and [b["tag"] for b in ck.read_best(ckpts)] == [ck.tag_for(4)]
    assert ck.set_aside_later(ckpts, 4) == ([], None)


def test_a_set_aside_cut_short_leaves_the_course_resumed_as_the_resume_point(tmp_path, monkeypatch):
    """Resumed from update 2 of a run saved to 4, the job killed while the set-aside moves 3 and 4: `latest`
    already names 2, and 3 and 4 are complete and newer, but they are the course the resume left. The next resume
    continues 2 and finishes the move; then a save of update 3 in the new course counts as complete again."""
    import os

    make_tags(tmp_path, [1, 2, 3, 4])
    (tmp_path / ck.LATEST).write_text(ck.tag_for(4) + "\n")
    real = os.replace

    def killed(src, dst):  # at the first tag's move (the pointer files are written through os.replace too)
        if ck.update_of(os.path.basename(src)) is not None:
            raise KeyboardInterrupt
        real(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            ck.set_aside_later(tmp_path, 2)
    assert os.replace is real and ck.latest(tmp_path) == ck.tag_for(2)
    assert ck.resume_point(tmp_path) == ck.tag_for(2)
    moved, aside = ck.set_aside_later(tmp_path, 2)
    assert moved == [ck.tag_for(3), ck.tag_for(4)] and aside.name == "abandoned_at_update_00000002_2"
    make_tags(tmp_path, [3])  # the new course's update 3, its save cut short before `latest`
    assert ck.resume_point(tmp_path) == ck.tag_for(3)


def test_checkpoints_set_aside_are_read_as_the_runs(tmp_path):
    """The abandoned folder is a checkpoints folder of the run: export and decode name it (or a tag in it) and get
    the run's recipe; it had been taken for a run directory of its own (no recipe.yaml there: refused)."""
    run = tmp_path / "run"
    ckpts = run / ck.CHECKPOINTS
    make_tags(ckpts, [1, 2, 3, 4])
    (ckpts / ck.LATEST).write_text(ck.tag_for(4) + "\n")
    _, aside = ck.set_aside_later(ckpts, 2)
    assert ck.resolve_checkpoint(aside) == ck.CheckpointRef(run, aside, ck.tag_for(4))
    assert ck.resolve_checkpoint(aside / ck.tag_for(3)) == ck.CheckpointRef(run, aside, ck.tag_for(3))
    assert ck.select_tags(ck.resolve_checkpoint(aside), 2) == [ck.tag_for(3), ck.tag_for(4)]
    with pytest.raises(ck.CheckpointError, match=f"a resume set it aside in {aside} \\(pass that folder\\)"):
        ck.resolve_checkpoint(run, ck.tag_for(4))


def test_a_save_cut_short_before_latest_is_neither_kept_nor_averaged(tmp_path):
    """A preemption's save killed before its meta (update 3), the run resumed from update 2 and saved 4: that folder
    is never saved again. It had counted towards keep_last (a complete checkpoint deleted in its place) and been
    picked for --average (which then failed on its missing meta)."""
    make_tags(tmp_path, [1, 2, 4])
    (tmp_path / ck.tag_for(3)).mkdir()
    (tmp_path / ck.tag_for(3) / "mp_rank_00_model_states.pt").write_bytes(b"cut short")
    (tmp_path / ck.tag_for(5)).mkdir()  # after `latest`: cleared when update 5 is saved again
    (tmp_path / ck.tag_for(5) / "mp_rank_00_model_states.pt").write_bytes(b"cut short")
    (tmp_path / ck.LATEST).write_text(ck.tag_for(4) + "\n")
    ref = ck.CheckpointRef(tmp_path.parent, tmp_path, ck.tag_for(4))
    assert ck.select_tags(ref, 2) == [ck.tag_for(2), ck.tag_for(4)]
    assert ck.rotate(tmp_path, ck.CheckpointPolicy(keep_last=2)) == [ck.tag_for(1), ck.tag_for(3)]
    assert ck.list_tags(tmp_path) == [ck.tag_for(2), ck.tag_for(4), ck.tag_for(5)]


def test_a_rotation_cut_short_leaves_no_checkpoint_with_files_gone(tmp_path, monkeypatch):
    """A job killed while rotation deletes update 1 (here: before any of its files went): the folder left is no
    checkpoint, so neither averaging nor a later resume takes it, and the next rotation deletes it. Its meta had
    been left beside the files not yet deleted, and last-N averaging picked it."""
    import shutil

    make_tags(tmp_path, [1, 2, 3])
    (tmp_path / ck.LATEST).write_text(ck.tag_for(3) + "\n")

    def killed(path, ignore_errors=False):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(shutil, "rmtree", killed)
        with pytest.raises(KeyboardInterrupt):
            ck.rotate(tmp_path, ck.CheckpointPolicy(keep_last=2, best_k=0))
    ref = ck.CheckpointRef(tmp_path.parent, tmp_path, ck.tag_for(3))
    assert ck.select_tags(ref, 2) == [ck.tag_for(2), ck.tag_for(3)]
    with pytest.raises(ck.CheckpointError, match="only 2 are available"):
        ck.select_tags(ref, 3)
    assert ck.rotate(tmp_path, ck.CheckpointPolicy(keep_last=2, best_k=0)) == [ck.tag_for(1)]


def test_best_k_turned_off_removes_the_best_list(tmp_path):
    """train.best_k may change on resume: at 0 the old best.json would keep its tags from rotation for ever."""
    policy = ck.CheckpointPolicy(keep_last=1, best_k=1)
    for u, loss in ((2, 1.0), (4, 2.0)):
        (tmp_path / ck.tag_for(u)).mkdir()
        ck.finish_save(tmp_path, ck.tag_for(u), meta(u, {"loss": loss}), policy)
    assert [b["tag"] for b in ck.read_best(tmp_path)] == [ck.tag_for(2)]
    (tmp_path / ck.tag_for(6)).mkdir()
    deleted = ck.finish_save(
        tmp_path, ck.tag_for(6), meta(6, {"loss": 0.5}), ck.CheckpointPolicy(keep_last=1, best_k=0)
    )
    assert not (tmp_path / ck.BEST).exists() and deleted == [ck.tag_for(2), ck.tag_for(4)]


def test_a_best_list_value_that_is_no_number_names_the_file(tmp_path):
    (tmp_path / ck.BEST).write_text(json.dumps([{"tag": ck.tag_for(1), "metric": "loss", "value": None}]))
    with pytest.raises(ck.CheckpointError, match=r"best.json: tag 'update_00000001' has value None; expected a"):
        ck.read_best(tmp_path)


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
    with pytest.raises(ck.CheckpointError, match="plain/llmasr_meta.json: missing.*did not finish"):
        ck.read_meta(tmp_path / "plain")


def test_a_latest_naming_no_complete_checkpoint_is_refused_naming_the_pointer_and_the_ones_there(tmp_path):
    """`latest` edited, or its folder deleted by hand: the resume is refused at once, naming the pointer, what it
    names and the complete checkpoints to continue instead (it had failed after building the model, on a missing
    llmasr_meta.json that told the user to use the `latest` one)."""
    run = tmp_path / "run"
    ckpts = ck.checkpoints_dir(run)
    make_tags(ckpts, [2, 4])
    ck.write_atomic(ckpts / ck.LATEST, ck.tag_for(8) + "\n")
    gone = r"--resume: .*latest names 'update_00000008', but .*update_00000008 does not exist; its complete "
    with pytest.raises(FileNotFoundError, match=gone + r"checkpoints are update_00000002, update_00000004: continue"):
        ck.resolve_resume("latest", run)
    with pytest.raises(FileNotFoundError, match="train.resume: .*latest names 'update_00000008'"):
        ck.resolve_resume("auto", run, "train.resume")
    with pytest.raises(FileNotFoundError, match="names 'update_00000008'"):
        ck.resolve_resume(str(ckpts), tmp_path / "elsewhere")
    (ckpts / "mine").mkdir()
    ck.write_atomic(ckpts / ck.LATEST, "mine\n")
    with pytest.raises(FileNotFoundError, match=r"names 'mine', but .*mine holds no llmasr_meta.json"):
        ck.resolve_resume("latest", run)
    for u in (2, 4):
        (ckpts / ck.tag_for(u) / ck.META).unlink()
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint: start afresh with --overwrite"):
        ck.resolve_resume("latest", run)


def test_a_damaged_checkpoint_names_the_other_complete_checkpoints_to_use(tmp_path):
    """A shard truncated or deleted after its save: the refusal says what to do, naming the run's other complete
    checkpoints (a save cut short, without its meta, is none of them)."""
    from llmasr.run_dir.files import hash_share, verify_tag

    for u in (2, 4, 6):
        d = tmp_path / ck.tag_for(u)
        d.mkdir()
        (d / "mp_rank_00_model_states.pt").write_bytes(bytes(range(200)) * u)
        ck.write_meta(d, meta(u, files=hash_share(d)))
    (tmp_path / ck.tag_for(8)).mkdir()
    (tmp_path / ck.tag_for(8) / "mp_rank_00_model_states.pt").write_bytes(b"cut short")
    shard = tmp_path / ck.tag_for(6) / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ck.CheckpointError) as err:
        verify_tag(shard.parent, ck.read_meta(shard.parent))
    assert str(err.value).endswith(
        f"{shard}: 100 bytes, but the save wrote 1200: the file is truncated or was replaced (an interrupted copy? a "
        "full disk?)\nRestore the files from a copy; or use another checkpoint of the run: update_00000002, "
        "update_00000004"
    ), err.value


def test_latest_is_none_without_a_checkpoint_and_require_latest_says_why(tmp_path):
    assert ck.latest(tmp_path) is None
    with pytest.raises(ck.CheckpointError, match=r"latest: no 'latest' file, .*; no checkpoint tags either"):
        ck.require_latest(tmp_path)
    make_tags(tmp_path, [3, 12])
    with pytest.raises(ck.CheckpointError, match=r"tags present: update_00000003, update_00000012 \(pass one"):
        ck.require_latest(tmp_path)
    (tmp_path / ck.LATEST).write_text("\n")
    assert ck.latest(tmp_path) is None
    with pytest.raises(ck.CheckpointError, match=r"latest: empty"):
        ck.require_latest(tmp_path)
    (tmp_path / ck.LATEST).write_text(ck.tag_for(5) + "\n")
    assert ck.latest(tmp_path) == ck.tag_for(5)  # the pointer as written
    with pytest.raises(ck.CheckpointError, match=r"names tag 'update_00000005' but .* does not exist"):
        ck.require_latest(tmp_path)
    ck.write_atomic(tmp_path / ck.LATEST, ck.tag_for(12) + "\n")
    assert ck.require_latest(tmp_path) == ck.tag_for(12)
    (tmp_path / ck.LATEST).write_bytes("update_0000001\xb2".encode("cp1252"))  # edited in a local code page
    with pytest.raises(ck.CheckpointError, match=r"latest: not UTF-8 text \(invalid start byte at byte 14\)"):
        ck.require_latest(tmp_path)


def test_meta_round_trips_byte_for_byte_old_and_new(tmp_path):
    files = {"mp_rank_00_model_states.pt": {"bytes": 10, "sha256": "ab"}}
    for longest in (12.5, None):  # None: unlimited, recorded as such (not left out)
        new = meta(7, {"loss": 1.5}, files=files, batches_per_epoch=[4, 4], training={"longest_seconds": longest})
        ck.write_meta(tmp_path, new)
        text = (tmp_path / ck.META).read_text()
        assert ck.read_meta(tmp_path) == new and ck.read_meta(tmp_path).text() == text
        assert json.loads(text)["batches_per_epoch"] == [4, 4]
        assert json.loads(text)["training"] == {"longest_seconds": longest}
    older = ("files", "batches_per_epoch", "training")  # before checksums
    old = {k: v for k, v in json.loads(text).items() if k not in older}
    (tmp_path / ck.META).write_text(json.dumps(old, indent=2, sort_keys=True))
    back = ck.read_meta(tmp_path)
    assert back.files is None and back.batches_per_epoch is None and back.training is None
    assert back.text() == (tmp_path / ck.META).read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("trainable"), r"no 'trainable' entry"),
        (lambda d: d.update(zero_stage=5), r"'zero_stage' must be a ZeRO stage 0-3, got 5"),
        (lambda d: d.update(world_size="2"), r"'world_size' must be an integer >= 1, got \"2\""),
        (lambda d: d.update(metrics={"loss": "low"}), r"'metrics' must be an object of numbers"),
        (lambda d: d.update(batches_per_epoch=[1.5]), r"'batches_per_epoch' must be a list of integers"),
        (lambda d: d.update(training={"longest_seconds": "9"}), r"'training' must be an object \{\"longest_seconds"),
        (lambda d: d.update(extra=1), r"unknown entries \['extra'\]"),
    ],
)
def test_a_garbled_meta_names_the_file_and_the_field(tmp_path, edit, message):
    data = meta(1).to_json()
    edit(data)
    (tmp_path / ck.META).write_text(json.dumps(data))
    with pytest.raises(ck.CheckpointError, match=rf"{tmp_path / ck.META}: {message}"):
        ck.read_meta(tmp_path)
    (tmp_path / ck.META).write_text('{"update": 1,')
    with pytest.raises(ck.CheckpointError, match=r"llmasr_meta.json: not valid JSON"):
        ck.read_meta(tmp_path)


def test_a_latest_pointed_back_after_the_saves_is_the_resume_point(tmp_path):
    """A user points `latest` back from update 3 to update 1 (a loss spike at 2): the resume continues update 1 and
    leaves 2 and 3 as another course. It had continued update 3, the newest complete checkpoint after `latest`, and
    `latest` was rewritten to name it, as if a job had died between that save's meta and its pointer."""
    run = tmp_path / "run"
    ckpts = ck.checkpoints_dir(run)
    for u in (1, 2, 3):  # each save: its meta, then `latest`
        make_tags(ckpts, [u])
        ck.write_atomic(ckpts / ck.LATEST, ck.tag_for(u) + "\n")
    saved = (ckpts / ck.tag_for(3) / ck.META).stat().st_mtime_ns
    (ckpts / ck.LATEST).write_text(ck.tag_for(1) + "\n")
    os.utime(ckpts / ck.LATEST, ns=(saved + 10**9, saved + 10**9))  # the user's edit, after the saves
    assert ck.resume_point(ckpts) == ck.tag_for(1)
    assert ck.resolve_resume("latest", run) == (ckpts, ck.tag_for(1))
    assert not ck.finish_unnamed(ckpts, ck.tag_for(3), ck.CheckpointPolicy(best_k=2))
    assert ck.latest(ckpts) == ck.tag_for(1)
    assert ck.set_aside_later(ckpts, 1)[0] == [ck.tag_for(2), ck.tag_for(3)]
    # the same pointer as a kill leaves it: written at update 1's save, before update 3's meta
    make_tags(ckpts, [3])
    os.utime(ckpts / ck.LATEST, ns=(saved - 10**9, saved - 10**9))
    assert ck.resume_point(ckpts) == ck.tag_for(3)
