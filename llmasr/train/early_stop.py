"""Early stopping: a run ends when `train.patience` validations in a row have not improved `train.best_metric` on
the best value so far by more than `train.min_delta` (as transformers' EarlyStoppingCallback and ESPnet's
`patience` count). A validation that scored nothing (NaN) improves nothing.

The count goes into every checkpoint (its client state), so a resume goes on counting where the saved run was, and
resuming a run that stopped early trains nothing more unless train.patience is raised (or set to 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class EarlyStop:
    metric: str  # a validation metric: loss, wer or acc (train.best_metric)
    mode: str  # "min" or "max": which way is better (train.ranking_mode)
    patience: int  # 0: never stop early
    min_delta: float = 0.0
    best: float | None = None
    best_update: int | None = None
    since: int = 0  # validations since the best (or since the start, before a finite value)

    @classmethod
    def of(cls, train_cfg) -> EarlyStop:
        return cls(train_cfg.best_metric, train_cfg.ranking_mode, train_cfg.patience, train_cfg.min_delta)

    def observe(self, update: int, metrics: dict | None) -> None:
        """Count one validation (at `update`) with its `metrics`."""
        value = float((metrics or {}).get(self.metric, math.nan))
        better = math.isfinite(value) and (
            self.best is None
            or (value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta)
        )
        if better:
            self.best, self.best_update, self.since = value, update, 0
        else:
            self.since += 1

    @property
    def exhausted(self) -> bool:
        return self.patience > 0 and self.since >= self.patience

    def why(self) -> str:
        best = "no finite value yet" if self.best is None else f"{self.best:.6g} (update {self.best_update})"
        return (
            f"valid {self.metric} has not improved on {best} by more than {self.min_delta:g} in {self.since} "
            f"validation(s) (train.patience {self.patience})"
        )

    def nothing_left(self) -> str:
        """What a run resumed with the count exhausted says (train.log, `llmasr check`)."""
        return f"nothing to train: {self.why()}; raise train.patience (or set 0) to train on"

    def state_dict(self) -> dict:
        return {"metric": self.metric, "best": self.best, "best_update": self.best_update, "since": self.since}

    def load_state_dict(self, state: dict | None) -> None:
        """The count a checkpoint saved; none (a run saved before early stopping existed) starts it afresh. A count
        of another metric does not carry over: the metric can change on resume only by a refused key, but a
        checkpoint of another run can be resumed."""
        if state and state.get("metric") == self.metric:
            self.best, self.best_update, self.since = state.get("best"), state.get("best_update"), int(state["since"])
