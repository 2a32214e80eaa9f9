"""Phase-by-phase progress on a terminal (stderr), or nothing.

``Progress(True)`` writes one status line that is rewritten as phases complete, e.g.
``aotfmm: tree 0.02s | lists 0.01s | operators 0.04s``; ``Progress(False)`` does nothing.
The CLI enables it when stderr is a TTY; the API only when asked (``progress=True``).
"""
import sys
import time


class Progress:
    def __init__(self, enabled, stream=None, label="aotfmm"):
        self.enabled = bool(enabled)
        self.stream = sys.stderr if stream is None else stream
        self.parts = []
        self.label = label
        self.t = time.perf_counter()

    def step(self, name):
        """Mark the phase ``name`` as finished (its time is since the previous step)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        self.parts.append(f"{name} {now - self.t:.2f}s")
        self.t = now
        self.stream.write(f"\r{self.label}: " + " | ".join(self.parts))
        self.stream.flush()

    def done(self):
        if self.enabled and self.parts:
            self.stream.write("\n")
            self.stream.flush()
        self.parts = []
