"""Phase-by-phase progress on a terminal (stderr), or nothing.

``Progress(True)`` writes one status line that is rewritten as phases complete, e.g.
``aotfmm: tree 0.02s | lists 0.01s | operators 0.04s``; ``Progress(False)`` does nothing.
The CLI enables it when stderr is a TTY; the API only when asked (``progress=True``).

:class:`Notice` announces long work the caller did not ask for by name (operator builds),
through ``logging`` and, when logging is not configured, on stderr.
"""
import logging
import sys
import threading
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


#: Logger of the library's notices ("aotfmm"). Applications that configure logging receive the
#: operator-build notices there (INFO); without any logging handler they go to stderr.
log = logging.getLogger("aotfmm")


def _fmt_seconds(s):
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


class Notice:
    """A long piece of work that the user did not obviously ask for (an operator build).

    ``with Notice(start_text, estimate=s) as n: ... n.stage("QR")`` announces the work when it
    starts and says how long it took at the end:

    * always through ``logging`` (logger ``"aotfmm"``, level INFO);
    * on stderr as well when no logging handler is configured anywhere (a script, the CLI, a
      notebook): one line at the start, one at the end; on a TTY a line in between is rewritten
      four times a second with the stage, the elapsed time and the estimate, so that a long
      build visibly moves. An application that configures logging (or adds a
      ``logging.NullHandler()`` to the ``"aotfmm"`` logger) gets nothing on stderr.
    """

    def __init__(self, text, estimate=None, stream=None, interval=0.25, done_text=None):
        self.text = text
        #: the end line (may be set inside the ``with`` block); " in N s" is appended
        self.done_text = done_text or "  done"
        self.estimate = estimate
        self._stream_arg = stream
        self.interval = interval
        self._stage = ""
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()
        self.seconds = None

    def __enter__(self):
        self.t0 = time.perf_counter()
        log.info("%s", self.text)
        self.stream = self._stream_arg
        if self.stream is None and not log.hasHandlers():
            self.stream = sys.stderr
        if self.stream is not None:
            self._write("\r\x1b[K" + self.text + "\n" if self._tty() else self.text + "\n")
            if self._tty():
                self._thread = threading.Thread(target=self._tick, daemon=True,
                                                name="aotfmm-notice")
                self._thread.start()
        return self

    def _tty(self):
        try:
            return self.stream is not None and self.stream.isatty()
        except (AttributeError, ValueError):  # closed or not a real stream
            return False

    def _write(self, s):
        try:
            with self._lock:
                self.stream.write(s)
                self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not break the work
            pass

    def stage(self, name):
        """Name the current stage (shown by the moving line on a TTY; DEBUG log)."""
        self._stage = name
        log.debug("%s: %s", self.text, name)

    def _tick(self):
        spin = "|/-\\"
        i = 0
        while not self._stop.wait(self.interval):
            el = time.perf_counter() - self.t0
            est = f" of ~{_fmt_seconds(self.estimate)}" if self.estimate else ""
            stage = f" {self._stage}" if self._stage else ""
            self._write(f"\r\x1b[K  {spin[i % 4]} {_fmt_seconds(el)}{est}{stage}")
            i += 1

    def __exit__(self, exc_type, exc, tb):
        self.seconds = time.perf_counter() - self.t0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._write("\r\x1b[K")
        if exc_type is None:
            end = f"{self.done_text} in {_fmt_seconds(self.seconds)}"
            log.info("%s", end.strip())
        else:
            end = f"  interrupted ({exc_type.__name__}) after {_fmt_seconds(self.seconds)}"
            log.warning("%s: %s", self.text, end.strip())
        if self.stream is not None:
            self._write(end + "\n")
        return False
