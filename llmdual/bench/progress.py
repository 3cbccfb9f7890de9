"""Progress that never goes quiet: the worker writes its phase (build, check, warm-up, timing) to a small status
file; the runner shows it on a live line with the case and an ETA (rich in a terminal, a line at least every
``HEARTBEAT_S`` seconds otherwise). Framework-free."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

STATUS_VAR = "LLMDUAL_BENCH_STATUS"  # the worker's status file, set by the runner
HEARTBEAT_S = 10.0
COMPILING = "compiling (torch.compile / XLA), this can take a minute"

_case = 0


def start_case(index: int) -> None:
    """The worker began its ``index``-th case: later phases belong to it."""
    global _case
    _case = index


def phase(text: str) -> None:
    """Tell the runner what the worker is doing now (nothing when no runner listens); never fails the case."""
    path = os.environ.get(STATUS_VAR)
    if not path:
        return
    try:
        tmp = f"{path}.tmp"
        Path(tmp).write_text(f"{_case}\t{text}")
        os.replace(tmp, path)  # the runner never reads half a line
    except OSError:
        pass


def read_status(path: str | Path) -> tuple[int, str] | None:
    """(case index, phase) the worker last wrote, or None before it wrote any."""
    try:
        index, _, text = Path(path).read_text().partition("\t")
        return int(index), text
    except (OSError, ValueError):
        return None


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """The live line: which case of how many, its phase and time in it, and the run's ETA from the cases already
    finished (the same engine and workload's own time once a round has measured it)."""

    def __init__(self, total: int, console: Any = None, heartbeat_s: float = HEARTBEAT_S,
                 out: Callable[[str], None] | None = None) -> None:
        self.total, self.done, self.heartbeat_s = total, 0, heartbeat_s
        self.started = time.monotonic()
        self.case, self.phase_text, self.phase_since, self.case_since = "", "starting", self.started, self.started
        self.remaining: list[tuple[str, str]] = []
        self.known: dict[tuple[str, str], float] = {}
        self.spent: list[float] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._out = out or (lambda line: print(line, flush=True))
        self._last_line = self.started
        self._live, self._thread, self._console = None, None, console

    def plan(self, cases: Sequence[tuple[str, str]], done: int = 0) -> None:
        """The (engine, workload) of every case still to run, in order, after ``done`` already decided."""
        with self._lock:
            self.remaining, self.done, self.total = list(cases), done, done + len(cases)

    def set_phase(self, text: str, case: str | None = None) -> None:
        """A new phase (of a new case when ``case`` is given); printed as a line when not in a terminal."""
        with self._lock:
            now, moved = time.monotonic(), case is not None and case != self.case
            if moved:
                self.case, self.case_since = case, now
            changed = moved or text != self.phase_text
            if changed:
                self.phase_text, self.phase_since = text, now
        if changed and self._live is None:
            self.log(self.line())

    def finished(self, engine: str, workload: str, wall_s: float | None) -> None:
        """A case landed: count it and learn how long it took."""
        with self._lock:
            self.done += 1
            if (engine, workload) in self.remaining:
                self.remaining.remove((engine, workload))
            if wall_s is not None:
                self.known[engine, workload] = wall_s
                self.spent.append(wall_s)

    def eta_s(self) -> float | None:
        """Seconds left: each remaining case's own last time, else the mean of those finished; None before any."""
        with self._lock:
            if not self.spent:
                return None
            mean = sum(self.spent) / len(self.spent)
            left = sum(self.known.get(case, mean) for case in self.remaining)
            return max(0.0, left - (time.monotonic() - self.case_since if self.remaining else 0.0))

    def line(self) -> str:
        """The status line as it reads now."""
        now, eta = time.monotonic(), self.eta_s()
        with self._lock:
            count = f"[{min(self.done + 1, self.total)}/{self.total}] " if self.total else ""
            where = f"{count}{self.case}".strip()
            text = f"{where + ': ' if where else ''}{self.phase_text} ({_clock(now - self.phase_since)})"
        later = "ETA after the first case" if eta is None else f"ETA {_clock(eta)}"
        return f"{text}; {_clock(now - self.started)} elapsed, {later}"

    def log(self, line: str) -> None:
        """Print a permanent line (above the live line in a terminal)."""
        self._last_line = time.monotonic()
        if self._live is not None:
            self._live.console.print(line, highlight=False, markup=False)
        else:
            self._out(line)

    def __rich__(self) -> Any:
        from rich.text import Text

        return Text(self.line(), style="dim", no_wrap=True, overflow="ellipsis")

    def __enter__(self) -> Self:
        console = self._console
        if console is None and sys.stdout.isatty():
            try:
                from rich.console import Console
            except ImportError:
                console = None
            else:
                console = Console()
        if console is not None and getattr(console, "is_terminal", False):
            from rich.live import Live

            self._live = Live(self, console=console, refresh_per_second=2, transient=True)
            self._live.start()
        else:
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        """Outside a terminal: repeat the status line whenever nothing was printed for ``heartbeat_s``."""
        while not self._stop.wait(0.25):
            if time.monotonic() - self._last_line >= self.heartbeat_s:
                self.log(self.line())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._thread is not None:
            self._thread.join()
