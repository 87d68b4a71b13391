"""A line's stated duration against its audio (llmasr.data.stated_duration)."""


def test_a_line_s_durations_are_compared_without_numpy(monkeypatch, tmp_path):
    """Every line of a segments manifest (duration beside start and end) is checked for agreeing durations as it is
    parsed: the check had gone through numpy's array calls, half again the time of the whole parse."""
    import numpy as np

    from llmasr.data import stated_duration
    from llmasr.data.manifest import Manifest

    path = tmp_path / "seg.jsonl"
    path.write_text('{"key": "s", "source": "a.wav", "target": "hi", "start": 1.0, "end": 3.5, "duration": 2.5}\n')
    array_slack = stated_duration.duration_slack(np.array([2.5, 100.0]))
    monkeypatch.setattr(stated_duration, "np", None)  # any numpy call on the way fails
    assert Manifest.open(str(path))[0].duration == 2.5
    assert (
        stated_duration.durations_disagree(10.0, 10.2) is True
        and stated_duration.durations_disagree(10.0, 10.1) is False
    )
    assert stated_duration.duration_slack(2.5) == 0.1 and stated_duration.duration_slack(100.0) == 1.0
    assert list(array_slack) == [0.1, 1.0]
