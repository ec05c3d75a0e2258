"""Thread-safe commands from a UI (or CLI signal handler) to a running training loop.

The loop polls `take_*` once per step; pause blocks on an Event instead of sleeping.
"""
from __future__ import annotations

import threading
from typing import Any


class Commands:
    def __init__(self, event: Any = threading.Event) -> None:
        """`event`: what makes the flags (multiprocessing's Event when another process trains)."""
        self._running = event()
        self._running.set()
        self._stop = event()
        self._sample = event()
        self._save = event()
        self._attention = event()  # set by every command: wakes a paused loop

    # --- called by the UI thread -------------------------------------------------
    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()
        self._attention.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # a paused loop must wake up to stop
        self._attention.set()

    def sample_now(self) -> None:
        self._sample.set()
        self._attention.set()

    def save_now(self) -> None:
        self._save.set()
        self._attention.set()

    # --- called by the training loop --------------------------------------------
    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Block while paused. Returns True when running (or stopping)."""
        return self._running.wait(timeout)

    def wait_while_paused_unless_asked(self) -> None:
        """Block while paused, until resumed or stopped, or until previews or a save are asked
        for (which a paused run does at once: its weights are not changing)."""
        while not self._running.is_set() and not self._sample.is_set() and not self._save.is_set():
            self._attention.wait()
            self._attention.clear()  # the flags are checked again before the next wait

    def wait_for_attention(self, timeout: float) -> None:
        """Wait up to `timeout` s for any command (a loop that must also do other things meanwhile)."""
        if self._attention.wait(timeout):
            self._attention.clear()

    def take_sample_request(self) -> bool:
        return _take(self._sample)

    def take_save_request(self) -> bool:
        return _take(self._save)


def _take(flag: threading.Event) -> bool:
    if flag.is_set():
        flag.clear()
        return True
    return False
