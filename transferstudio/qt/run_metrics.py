"""The numbers of a run as the Train tab keeps them: the loss with its smoothed line (growing
numpy buffers, numpy imported only when the first point arrives), and the time left."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# The small chart under the loss: what it can show (key in the run's numbers, menu text, axis label).
EXTRA_CHARTS = (("lr", "Learning rate", "lr"), ("images/s", "Images per second", "images/s"),
                ("", "Nothing", ""))


def ema_weight(total_steps: int) -> float:
    """Smoothing of the loss line, averaging over ~1/20 of the run (5…100 steps): per-step
    diffusion loss is very noisy, but a fixed long window lags far behind a short run."""
    window = min(100.0, max(5.0, total_steps / 20))
    return 1.0 - 1.0 / window


class EtaEstimator:
    """Time left, from the wall-clock pace since the run started or last resumed: the time spent
    drawing previews and saving counts (it recurs), the time spent loading or paused does not.
    `reset()` at start, pause, resume and stop; `update()` answers None until a few steps and
    seconds have passed since then (the first steps after a (re)start are the slow ones)."""

    MIN_STEPS = 3
    MIN_SECONDS = 2.0

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._anchor: tuple[int, float] | None = None

    def update(self, step: int, total: int, now: float) -> float | None:
        if self._anchor is None or step < self._anchor[0]:
            self._anchor = (step, now)
            return None
        first, since = self._anchor
        done, elapsed = step - first, now - since
        if done < self.MIN_STEPS or elapsed < self.MIN_SECONDS:
            return None
        return max(0.0, (total - step) * elapsed / done)


class LossBuffer:
    """Growing numpy buffers of (step, loss, smoothed loss) with amortised appends."""

    def __init__(self) -> None:
        self.weight = ema_weight(500)
        self.clear()

    def clear(self, total_steps: int | None = None) -> None:
        if total_steps:
            self.weight = ema_weight(total_steps)
        self._x = self._y = self._s = None  # numpy arrays from the first point on (numpy loads late)
        self.n = 0
        self._ema = 0.0
        self._weight = 0.0  # for the start-up bias correction of the EMA

    def extend(self, steps: Any, losses: Any) -> None:
        import numpy as np

        steps = np.asarray(steps, dtype=np.float64)
        losses = np.asarray(losses, dtype=np.float64)
        need = self.n + len(steps)
        if self._x is None:
            self._x, self._y, self._s = (np.empty(max(1024, need)) for _ in range(3))
        if need > len(self._x):
            size = max(need, 2 * len(self._x))
            self._x, self._y, self._s = (np.resize(a, size) for a in (self._x, self._y, self._s))
        for i, (x, y) in enumerate(zip(steps, losses)):
            if math.isfinite(y):
                self._ema = self.weight * self._ema + (1 - self.weight) * y
                self._weight = self.weight * self._weight + (1 - self.weight)
            j = self.n + i
            self._x[j], self._y[j] = x, y
            self._s[j] = self._ema / self._weight if self._weight else y
        self.n = need

    def _part(self, values: "np.ndarray | None") -> "np.ndarray":
        if values is None:
            import numpy as np

            return np.zeros(0)
        return values[: self.n]

    @property
    def steps(self) -> "np.ndarray":
        return self._part(self._x)

    @property
    def losses(self) -> "np.ndarray":
        return self._part(self._y)

    @property
    def smoothed(self) -> "np.ndarray":
        return self._part(self._s)
