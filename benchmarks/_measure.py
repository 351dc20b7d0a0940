"""Shared measuring helpers of the benchmark scripts: peak RSS sampling and the load average."""
from __future__ import annotations

import subprocess
import threading
import time

import psutil


class Peak:
    """Peak RSS (bytes) of this process and its children while active, sampled every 0.2 s."""
    def __enter__(self):
        self.proc, self.peak, self.stop = psutil.Process(), 0, False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            try:
                rss = self.proc.memory_info().rss + sum(c.memory_info().rss
                                                        for c in self.proc.children(recursive=True))
            except psutil.Error:
                rss = 0
            self.peak = max(self.peak, rss)
            time.sleep(0.2)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()


def uptime() -> str:
    """`uptime` output (load averages): the machine is shared, so figures are read with it."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
