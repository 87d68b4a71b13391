"""check_course: the validations and early stopping `llmasr check` counts for a fresh run and for a resume (the
whole command is tested on a real resumed run in test_check_command_run_folder.py)."""

from types import SimpleNamespace

from llmasr.train.check_course import Course, early_stop_lines, epoch_ends, fresh_course, validation_updates
from llmasr.train.early_stop import EarlyStop


def train_cfg(**kw):
    return SimpleNamespace(**{"valid_every_updates": 0, "patience": 2, "min_delta": 0.0, "best_metric": "loss",
                              "ranking_mode": "min", **kw})  # fmt: skip


def test_a_resume_counts_the_validations_ahead_of_it_and_the_count_it_carries():
    """Resumed after update 5 of epochs of 4 updates (2 batches left of the second's 4 at grad_accum 2): its epochs
    end after updates 6 and 10; with every 3 it validates after 6, 9, 10 (and 5, a validation a stop put off). Its
    checkpoint counted 1 validation without a better loss: patience 2 needs 1 more, patience 5 needs 4 of its 3."""
    tc = train_cfg(valid_every_updates=3)
    ends = epoch_ends(5, 2, [8, 8, 8], 1, 2)
    assert ends == [6, 10]
    early = EarlyStop.of(tc)
    early.observe(3, {"loss": 1.0})
    early.observe(5, {"loss": 1.5})
    course = Course(5, ends, early)
    assert validation_updates(tc, course, 10) == [6, 9, 10]
    assert validation_updates(tc, course._replace(owed=True), 10) == [5, 6, 9, 10]
    lines = early_stop_lines(tc, course, 10, validates=True)
    assert lines == [
        "  early stopping: after 2 validation(s) in a row without a better valid loss (by more than 0); resumed after "
        "update 5 with 1 such validation(s) counted (best 1 at update 3), the run validates 3 more time(s)"
    ]
    lines = early_stop_lines(train_cfg(valid_every_updates=3, patience=5), course, 10, validates=True)
    assert lines[1].startswith("  warning: train.patience 5 needs 4 more validations and the run holds 3: it never")
    assert early_stop_lines(tc, course, 10, validates=False) == []


def test_a_fresh_run_counts_from_update_0():
    tc = train_cfg(patience=3)
    course = fresh_course(tc, [4, 4, 4])
    assert course.ends == [4, 8, 12] and validation_updates(tc, course, 12) == [4, 8, 12]
    assert early_stop_lines(tc, course, 12, validates=True)[1].startswith(
        "  warning: train.patience 3 needs 4 validations and the run holds 3: it never stops early"
    )
