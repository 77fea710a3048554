"""Limit algorithms: strategies that move a concurrency limit from latency samples and drops.

Each algorithm is a small object whose `update(limit, rtt, in_flight,
dropped)` returns the next limit estimate from the current one and one
sample (an aggregated sample, when the policy samples in windows). The
formulas are those of Netflix's concurrency-limits (Java, Apache-2.0,
`concurrency-limits-core/src/main/java/com/netflix/concurrency/limits/limit/`:
`AIMDLimit.java`, `Gradient2Limit.java`, `VegasLimit.java`, read at commit
78a74b9), re-derived here, with the deviations each docstring names.

An algorithm keeps what it has learnt (a no-load RTT, a long-term average),
so one object drives one `resilience.ConcurrencyLimit`.
"""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING, ClassVar

from ._validate import check_int, check_ratio, check_seconds

if TYPE_CHECKING:
    import random

__all__ = ["AIMDLimit", "Gradient2Limit", "LimitAlgorithm", "VegasLimit", "log10_root"]


class LimitAlgorithm(abc.ABC):
    """A strategy that moves a concurrency limit; subclass it for your own.

    `update` gets the current limit estimate (a float: the policy admits
    `int(limit)` calls) and one sample: the call's round-trip time in
    seconds on the policy's clock, how many calls were in flight when it
    was admitted (itself included), and whether it was a drop (a timeout,
    an overload answer, a deadline cut). It returns the next estimate; the
    policy clamps it to `[min_limit, max_limit]`.

    Args:
        initial_limit: The limit before any sample.
        min_limit: The lowest limit the algorithm may set (>= 1).
        max_limit: The highest limit the algorithm may set.
        window: Seconds (or a `timedelta`): the policy feeds `update` one
            aggregate per sampling window of at least this long (and at
            least twice the previous window's shortest RTT, and at least 10
            samples); None feeds every sample.
    """

    __slots__ = ("_owner", "initial_limit", "max_limit", "min_limit", "window")

    def __init__(
        self, *, initial_limit: int, min_limit: int, max_limit: int, window: float | None
    ) -> None:
        #: The shortest sampling window in seconds, or None: every sample is an update.
        self.window = None if window is None else check_seconds(window, "window")
        self.initial_limit = check_int(initial_limit, "initial_limit")
        self.min_limit = check_int(min_limit, "min_limit")
        self.max_limit = check_int(max_limit, "max_limit")
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                f"min_limit <= initial_limit <= max_limit must hold, got "
                f"min_limit={min_limit}, initial_limit={initial_limit}, max_limit={max_limit}"
            )
        self._owner: object = None

    @abc.abstractmethod
    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        """Return the next limit estimate after one sample (see the class docstring)."""

    def _params(self) -> str:
        return (
            f"initial_limit={self.initial_limit}, min_limit={self.min_limit}, "
            f"max_limit={self.max_limit}, window={self.window}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._params()})"


def _clamp(value: float, low: int, high: int) -> float:
    return max(low, min(high, value))


def log10_root(limit: int) -> int:
    """Log10RootIntFunction (concurrency-limits): max(1, int(log10 L)) below 1000, else int(sqrt L).

    The jump at 1000 (2 below, 31 at 1000) is the source's; Vegas's default
    `max_limit` is 1000, so only a limit at its cap sees it.
    """
    if limit < 1000:
        return max(1, int(math.log10(limit))) if limit > 0 else 1
    return math.isqrt(limit)


class AIMDLimit(LimitAlgorithm):
    """Loss-based: additive increase while the limit is used, multiplicative decrease on a drop.

    Netflix concurrency-limits `AIMDLimit` (the README recommends it for
    clients): after a drop, or a call slower than `timeout`,
    `L = int(L * backoff_ratio)`; else, when `in_flight * 2 >= L` (the limit
    is being used), `L = L + 1`; else `L` stays. Then clamped to
    `[min_limit, max_limit]`.

    Defaults are the source's (initial 20, max 200, backoff 0.9, timeout
    5 s), except `min_limit`: 1, not 20, so that a client can back off below
    20 calls when its downstream takes fewer; and the sampling window (see
    `LimitAlgorithm`): fed every sample, a burst of slow calls would apply
    the backoff once per call and collapse the limit to `min_limit`.

    It reacts to loss only: latency below `timeout` never lowers the limit.
    Set `timeout` near the latency you accept (say 1.1 to 1.5 times the
    no-load latency) to make queueing count as loss.

    Args:
        initial_limit: The limit before any sample.
        min_limit: The lowest limit.
        max_limit: The highest limit.
        backoff_ratio: The factor applied on a drop, in [0.5, 1).
        timeout: A call (a window's mean) slower than this, in seconds or a
            `timedelta`, counts as a drop.
        window: The shortest sampling window in seconds, or None.
    """

    __slots__ = ("backoff_ratio", "timeout")

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 200,
        backoff_ratio: float = 0.9,
        timeout: float = 5.0,
        window: float | None = 0.1,
    ) -> None:
        super().__init__(
            initial_limit=initial_limit, min_limit=min_limit, max_limit=max_limit, window=window
        )
        if isinstance(backoff_ratio, bool) or not isinstance(backoff_ratio, (int, float)):
            raise TypeError(f"backoff_ratio= must be a number in [0.5, 1), got {backoff_ratio!r}")
        if not 0.5 <= backoff_ratio < 1.0:
            raise ValueError(f"backoff_ratio= must be in [0.5, 1), got {backoff_ratio!r}")
        self.backoff_ratio = float(backoff_ratio)
        self.timeout = check_seconds(timeout, "timeout")

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        """`int(L * backoff_ratio)` on a drop or a slow call; `L + 1` while used; clamped."""
        current = int(limit)
        if dropped or rtt > self.timeout:
            current = int(current * self.backoff_ratio)
        elif in_flight * 2 >= current:
            current += 1
        return _clamp(current, self.min_limit, self.max_limit)

    def _params(self) -> str:
        return f"{super()._params()}, backoff_ratio={self.backoff_ratio}, timeout={self.timeout}"


class Gradient2Limit(LimitAlgorithm):
    """Delay-based: the gradient between a long-term average RTT and the current RTT.

    Netflix concurrency-limits `Gradient2Limit`. Per sample:

    - `long_rtt` is an exponential average of the RTTs: the plain mean of
      the first 10, then `long = long * (1 - f) + rtt * f` with
      `f = 2 / (long_window + 1)`;
    - when `long_rtt / rtt > 2` (latency came back down after a long
      overload), `long_rtt` is multiplied by 0.95;
    - when `in_flight < L / 2` (the caller does not use the limit), `L` stays;
    - else `gradient = clamp(rtt_tolerance * long_rtt / rtt, 0.5, 1.0)`,
      `new = L * gradient + queue_size`,
      `L = L * (1 - smoothing) + new * smoothing`, clamped to
      `[min_limit, max_limit]`.

    Deviation: the source ignores drops. Here a drop applies the lowest
    gradient (0.5), even when the limit is not fully used, and its RTT
    does not enter `long_rtt` (a fast 503 is no latency measurement).

    Defaults are the source's (initial 20, min 20, max 200, smoothing 0.2,
    queue size 4, long window 600), except `rtt_tolerance`: 1.0, the formula
    before the source added the parameter (its default there is 1.5, which
    lets latency grow by half before the limit falls: in the 50-slot
    simulation of the tests the limit then settles around 85 to 100, with
    1.0 around 55 to 60). The source's README wraps it in `WindowedLimit`;
    here the default window is 0.1 s (see `LimitAlgorithm`).

    Args:
        initial_limit: The limit before any sample.
        min_limit: The lowest limit.
        max_limit: The highest limit.
        smoothing: How much of each new estimate is taken, in (0, 1].
        queue_size: Calls the limit may grow by per update while latency holds (>= 0).
        long_window: Samples the long-term RTT average spans (>= 1).
        rtt_tolerance: How much latency may grow (a factor >= 1) before the limit falls.
        window: The shortest sampling window in seconds, or None.
    """

    __slots__ = (
        "_long_count",
        "_long_rtt",
        "_long_sum",
        "long_window",
        "queue_size",
        "rtt_tolerance",
        "smoothing",
    )

    _WARMUP: ClassVar[int] = 10

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 20,
        max_limit: int = 200,
        smoothing: float = 0.2,
        queue_size: int = 4,
        long_window: int = 600,
        rtt_tolerance: float = 1.0,
        window: float | None = 0.1,
    ) -> None:
        super().__init__(
            initial_limit=initial_limit, min_limit=min_limit, max_limit=max_limit, window=window
        )
        self.smoothing = check_ratio(smoothing, "smoothing")
        self.queue_size = check_int(queue_size, "queue_size", minimum=0)
        self.long_window = check_int(long_window, "long_window")
        if isinstance(rtt_tolerance, bool) or not isinstance(rtt_tolerance, (int, float)):
            raise TypeError(f"rtt_tolerance= must be a number >= 1, got {rtt_tolerance!r}")
        if not 1.0 <= rtt_tolerance < math.inf:
            raise ValueError(f"rtt_tolerance= must be a finite number >= 1, got {rtt_tolerance!r}")
        self.rtt_tolerance = float(rtt_tolerance)
        self._long_rtt = 0.0
        self._long_sum = 0.0
        self._long_count = 0

    @property
    def long_rtt(self) -> float:
        """The long-term average RTT in seconds (0.0 before any sample)."""
        return self._long_rtt

    def _add_long(self, rtt: float) -> float:
        if self._long_count < self._WARMUP:
            self._long_count += 1
            self._long_sum += rtt
            self._long_rtt = self._long_sum / self._long_count  # the plain mean, at first
        else:
            factor = 2.0 / (self.long_window + 1)
            self._long_rtt = self._long_rtt * (1 - factor) + rtt * factor
        return self._long_rtt

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        """One Gradient2 step (see the class docstring)."""
        if dropped:
            gradient = 0.5
        else:
            if rtt <= 0:
                return limit  # no latency measured: nothing to learn from
            long_rtt = self._add_long(rtt)
            if long_rtt / rtt > 2:
                self._long_rtt *= 0.95
            if in_flight < limit / 2:
                return limit
            gradient = max(0.5, min(1.0, self.rtt_tolerance * long_rtt / rtt))
        new = limit * gradient + self.queue_size
        new = limit * (1 - self.smoothing) + new * self.smoothing
        return _clamp(new, self.min_limit, self.max_limit)

    def _params(self) -> str:
        return (
            f"{super()._params()}, smoothing={self.smoothing}, queue_size={self.queue_size}, "
            f"long_window={self.long_window}, rtt_tolerance={self.rtt_tolerance}"
        )


class VegasLimit(LimitAlgorithm):
    """Delay-based: a queue estimate from the no-load RTT, as TCP Vegas does.

    Netflix concurrency-limits `VegasLimit` (the README recommends it for
    servers). Per sample, with `log10_root(L)` = max(1, int(log10(L))):

    - every `probe_multiplier * L * jitter` samples (`jitter` uniform in
      [0.5, 1), drawn anew after each probe) the sample's RTT becomes the
      no-load RTT, forgetting the old one (it is re-probed: a downstream that
      got slower for good is not judged against a stale minimum); `L` stays;
    - an RTT below the no-load RTT (or the first one) becomes it; `L` stays;
    - `queue = ceil(L * (1 - rtt_noload / rtt))`;
    - on a drop, `new = L - log10_root(L)`;
    - else when `in_flight * 2 < L` (the limit is not used), `L` stays;
    - else with `alpha = 3 * log10_root(L)`, `beta = 6 * log10_root(L)`:
      `queue <= log10_root(L)`: `new = L + beta`; `queue < alpha`:
      `new = L + log10_root(L)`; `queue > beta`: `new = L - log10_root(L)`;
      otherwise `L` stays;
    - `new` is clamped to `[min_limit, max_limit]`, then
      `L = (1 - smoothing) * L + smoothing * new`.

    Deviation: in the source a drop goes through the probe and no-load
    steps first, so a fast drop (a quick 503) becomes the no-load RTT and
    lowers nothing. Here a drop counts towards the next probe but always
    decreases and never touches the no-load RTT.

    Defaults are the source's (initial 20, max 1000, smoothing 1.0, probe
    multiplier 30; min 1: the source has no minimum), except the sampling
    window, 0.1 s (see `LimitAlgorithm`): fed every sample, each probe (at an
    RTT inflated by queueing) lets the limit jump by `beta` per call until a
    faster call resets it.

    Args:
        initial_limit: The limit before any sample.
        min_limit: The lowest limit.
        max_limit: The highest limit.
        smoothing: How much of each new estimate is taken, in (0, 1].
        probe_multiplier: Re-probe the no-load RTT about every
            `probe_multiplier * limit` samples (>= 1).
        rng: The `random.Random` the probe jitter is drawn from (seed it for
            repeatable runs).
        window: The shortest sampling window in seconds, or None.
    """

    __slots__ = ("_jitter", "_probe_count", "_rtt_noload", "probe_multiplier", "rng", "smoothing")

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        smoothing: float = 1.0,
        probe_multiplier: int = 30,
        rng: random.Random | None = None,
        window: float | None = 0.1,
    ) -> None:
        super().__init__(
            initial_limit=initial_limit, min_limit=min_limit, max_limit=max_limit, window=window
        )
        self.smoothing = check_ratio(smoothing, "smoothing")
        self.probe_multiplier = check_int(probe_multiplier, "probe_multiplier")
        import random  # here: `import resilience` stays cheap

        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng= must be a random.Random or None, got {rng!r}")
        self.rng = random.Random() if rng is None else rng  # noqa: S311  (jitter, not security)
        self._rtt_noload: float | None = None
        self._probe_count = 0
        self._jitter = self.rng.uniform(0.5, 1.0)

    @property
    def rtt_noload(self) -> float | None:
        """The no-load RTT in seconds, or None before the first sample."""
        return self._rtt_noload

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        """One Vegas step (see the class docstring)."""
        self._probe_count += 1
        size = int(limit)
        step = log10_root(size)
        if dropped:
            new = limit - step
        else:
            if rtt <= 0:
                return limit  # no latency measured: nothing to learn from
            if self._jitter * self.probe_multiplier * limit <= self._probe_count:
                self._jitter = self.rng.uniform(0.5, 1.0)
                self._probe_count = 0
                self._rtt_noload = rtt
                return limit
            noload = self._rtt_noload
            if noload is None or rtt < noload:
                self._rtt_noload = rtt
                return limit
            if in_flight * 2 < limit:
                return limit
            queue = math.ceil(limit * (1 - noload / rtt))
            if queue <= step:
                new = limit + 6 * step
            elif queue < 3 * step:
                new = limit + step
            elif queue > 6 * step:
                new = limit - step
            else:
                return limit
        new = _clamp(new, self.min_limit, self.max_limit)
        return (1 - self.smoothing) * limit + self.smoothing * new

    def _params(self) -> str:
        return (
            f"{super()._params()}, smoothing={self.smoothing}, "
            f"probe_multiplier={self.probe_multiplier}"
        )
