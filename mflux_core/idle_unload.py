"""Unload the models after a while without a job (what Ollama calls keep_alive): a studio left open on a Mac gives
its models' memory back to the pool it shares with everything else, and the next job loads them again."""

import threading
import time

from mflux_core.errors import StudioError


class IdleUnloader:
    """Watches a ModelManager from a daemon thread; `stop()` ends the watch."""

    def __init__(self, manager, idle_seconds: float):
        self.manager = manager
        self.idle_seconds = idle_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="idle-unload", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(min(self.idle_seconds, 30) / 2):
            self.check()

    def check(self) -> bool:
        """Unload when the models have been resident and unused for the idle time; whether it did."""
        idle = time.monotonic() - self.manager.last_used
        if idle < self.idle_seconds or not self.manager.status()["resident_bytes"]:
            return False
        try:
            self.manager.unload_all()
        except StudioError:  # a job started meanwhile
            return False
        return True

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
