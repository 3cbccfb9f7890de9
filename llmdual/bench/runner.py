"""The one scheduler: every engine in a fresh worker process per round, engines in a seeded random order.

Each worker process runs the cases of one engine (``python -m llmdual.bench.worker --case-json JSON --result PATH
...``, a :class:`~llmdual.bench.settings.Case` as JSON each) and writes one
:class:`~llmdual.bench.report.results.Record` per case as JSON as soon as it ends. A crash, non-zero
exit, signal (OOM kill included), timeout or unreadable result becomes the record of the case that was running,
with the tail of its stderr; the cases it had not reached run in a fresh process, and the run goes on.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llmdual.bench import progress
from llmdual.bench.engines.table import host_env, skip_reason
from llmdual.bench.env import peak_rss_mb
from llmdual.bench.report.results import WORKER_STATUSES, Record, append_jsonl
from llmdual.bench.settings import Case

CommandBuilder = Callable[[str, str], list[str]]
Log = Callable[[str], None]
Watch = Callable[[Case, str], None]  # a case and the phase its worker reports

STDERR_TAIL_CHARS = 4000
_OOM_MARKERS = ("out of memory", "memoryerror", "outofmemoryerror", "resource_exhausted", "std::bad_alloc")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
_ROOT = str(Path(__file__).resolve().parents[2])


def worker_command(case_json: str, result_path: str) -> list[str]:
    """The worker's command line for one case; the runner appends further ``--case-json``/``--result`` pairs."""
    return [sys.executable, "-m", "llmdual.bench.worker", "--case-json", case_json, "--result", result_path]


def worker_env(engine: str, threads: int | None, device: str, base: Mapping[str, str] | None = None
               ) -> dict[str, str]:
    """The environment of ``engine``'s worker: the library its framework runs on (Keras' backend), thread counts,
    GPU memory and logging settings."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # OpenMP's wait policy stays the library's (spinning a while): PASSIVE makes PyTorch's small ops wait on
    # wake-ups (batch-1 decoding 3x slower on a quiet 2-core machine); set it only on a machine shared with other work
    env.update(host_env(engine))
    if threads:
        env.update({name: str(threads) for name in _THREAD_VARS})
        env["TF_NUM_INTEROP_THREADS"] = "1"  # one inter-op pool per socket, Intel's advice for TF on CPU
        if threads == 1:  # XLA:CPU has no thread-count flag, only this switch (else: core pinning)
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["JAX_PLATFORMS"] = "cpu"
    else:  # allocate on demand so peak device memory means what the engine needed
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    return env


def read_result(path: str | Path) -> Record:
    """A worker's result file as a record; ``ValueError`` naming what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"result is not JSON: {error}") from None
    record = Record.from_dict(data)
    if record.status not in WORKER_STATUSES:
        raise ValueError(f"status {record.status!r} is not one of {WORKER_STATUSES}")
    return record


def _spawn(argv: list[str], env: dict[str, str], stderr: Any, threads: int | None) -> subprocess.Popen:
    """Start the worker in a new session; with ``threads``, pinned to that many of our cores (inherited)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = bool(threads) and 0 < threads < len(cpus)
    if pin:  # affects only this thread, which forks the child
        os.sched_setaffinity(0, cpus[:threads])
    try:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
    finally:
        if pin:
            os.sched_setaffinity(0, cpus)


def _finished(path: Path) -> bool:
    """Whether a result file is complete: present and valid JSON (no strict prefix of a JSON object is)."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def _wait(pid: int, timeout_s: float, results: Sequence[Path], on_result: Callable[[int], None],
          on_poll: Callable[[], None] = lambda: None) -> tuple[int, float | None, bool]:
    """Wait for the worker, polling its peak RSS (``VmHWM``; ``ru_maxrss`` would carry the parent's) and its result
    files, calling ``on_result(i)`` as result ``i`` appears and ``on_poll`` every poll; kill its group once a case
    has run ``timeout_s``. Returns its exit code, its last-seen peak RSS in MB, and whether it timed out."""
    deadline, delay, timed_out, peak, seen = time.monotonic() + timeout_s, 0.005, False, None, 0
    try:
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            peak = peak_rss_mb(pid) or peak
            while seen < len(results) and _finished(results[seen]):
                on_result(seen)
                seen += 1
                deadline, delay = time.monotonic() + timeout_s, 0.005
            on_poll()  # after the results: a case's record comes before the next case's phases
            if time.monotonic() >= deadline:
                timed_out = True
                break
            time.sleep(delay)
            delay = min(2 * delay, 0.1)
    finally:  # also on Ctrl-C: leave nothing of the worker behind (its leader is not reaped yet)
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), peak, timed_out


def _tail(path: Path) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - STDERR_TAIL_CHARS))
        return handle.read().decode(errors="replace")


def _crash_reason(returncode: int, stderr: str) -> str:
    """Describe a failed exit, calling out out-of-memory deaths (OOM killer or allocator errors)."""
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        oom = " (likely out of memory: the kernel's OOM killer sends SIGKILL)" if -returncode == signal.SIGKILL else ""
        return f"killed by signal {name}{oom}"
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    oom = any(marker in stderr.lower() for marker in _OOM_MARKERS)
    return f"{'out of memory: ' if oom else ''}exit code {returncode}" + (f": {last[:300]}" if last else "")


def _from_file(spec: Case, path: Path, round_index: int, **process: Any) -> Record:
    try:
        found = read_result(path)
    except ValueError as error:
        return spec.record("crashed", f"invalid worker result: {error}", round_index, **process)
    return Record(spec.engine, spec.workload, spec.describe(), found.status, found.reason, found.measurements,
                  found.scalars, round_index, **process)


def _watcher(path: Path, specs: Sequence[Case], watch: Watch | None) -> Callable[[], None]:
    """A poll that hands the worker's status (its case and phase, ``llmdual.bench.progress``) to ``watch`` when it
    changes."""
    last: list[Any] = [None]

    def poll() -> None:
        status = progress.read_status(path) if watch is not None else None
        if status is not None and status != last[0] and 0 <= status[0] < len(specs):
            last[0] = status
            watch(specs[status[0]], status[1])

    return poll


def _run_process(specs: Sequence[Case], round_index: int, timeout_s: float, command: CommandBuilder,
                 emit: Callable[[Record], None], watch: Watch | None = None) -> int:
    """Run ``specs`` in order in one worker process, emitting a record per case it finished and one for the case
    it died in (if it did), and telling ``watch`` each phase it reports; returns how many cases it used up (at
    least one)."""
    with tempfile.TemporaryDirectory(prefix="llmdual-bench-") as tmp:
        results = [Path(tmp, f"result-{i}.json") for i in range(len(specs))]
        stderr_path, status_path = Path(tmp, "stderr.txt"), Path(tmp, "status.txt")
        argv = command(specs[0].to_json(), str(results[0]))
        for spec, path in zip(specs[1:], results[1:]):
            argv += ["--case-json", spec.to_json(), "--result", str(path)]
        marks = [time.monotonic()]  # when each case started (the previous one's result appeared)

        def process(index: int, end: float, returncode: int | None, peak: float | None, tail: str) -> dict:
            return {"returncode": returncode, "wall_s": round(end - marks[index], 3), "stderr_tail": tail,
                    "child_peak_rss_mb": None if peak is None else round(peak, 1)}

        def on_result(index: int) -> None:  # every case but the last is final once its result appears
            marks.append(time.monotonic())
            if index < len(specs) - 1:
                info = process(index, marks[-1], None, peak_rss_mb(proc.pid), _tail(stderr_path))
                emit(_from_file(specs[index], results[index], round_index, **info))

        with stderr_path.open("wb") as stderr:
            settings = specs[0].settings
            environment = worker_env(specs[0].engine, settings.threads, settings.device)
            environment[progress.STATUS_VAR] = str(status_path)
            if watch is not None:
                watch(specs[0], "starting a fresh worker process")
            proc = _spawn(argv, environment, stderr, settings.threads)
            returncode, peak, timed_out = _wait(proc.pid, timeout_s, results, on_result,
                                                _watcher(status_path, specs, watch))
            proc.returncode = returncode  # reaped by _wait; keeps Popen from waiting on it again
        ended, tail = time.monotonic(), _tail(stderr_path)
        written = len(marks) - 1
        while written < len(specs) and results[written].exists():  # written just before the worker exited
            marks.append(ended)
            if written < len(specs) - 1:
                emit(_from_file(specs[written], results[written], round_index,
                                **process(written, ended, None, peak, tail)))
            written += 1
        if returncode == 0 and not timed_out:
            if written == len(specs):
                emit(_from_file(specs[-1], results[-1], round_index, **process(len(specs) - 1, ended, 0, peak, tail)))
                return len(specs)
            emit(specs[written].record("crashed", "worker exited 0 without writing its result file", round_index,
                                       **process(written, ended, 0, peak, tail)))
            return written + 1
        index = min(written, len(specs) - 1)  # the case that was running when it died
        reason = f"timed out after {timeout_s:g} s" if timed_out else _crash_reason(returncode, tail)
        emit(specs[index].record("timeout" if timed_out else "crashed", reason, round_index,
                                 **process(index, ended, returncode, peak, tail)))
        return index + 1


def run_group(specs: Sequence[Case], round_index: int = 0, timeout_s: float = 600.0,
              command: CommandBuilder = worker_command, emit: Callable[[Record], None] | None = None,
              watch: Watch | None = None) -> list[Record]:
    """Run cases of one engine in one fresh worker process (another for the rest if one dies); their records in
    order, each also handed to ``emit`` as soon as it is known, and each phase the worker reports to ``watch``.
    ``timeout_s`` bounds each case, not the group."""
    records: list[Record] = []
    done = 0
    while done < len(specs):
        done += _run_process(specs[done:], round_index, timeout_s, command,
                             lambda r: (records.append(r), emit and emit(r)), watch)
    return records


def plan(specs: Sequence[Case], rounds: int, seed: int) -> list[tuple[int, list[Case]]]:
    """(round, cases of one process): per round, one group per engine (and threads, device) in a fresh seeded
    random order, the cases within each group shuffled too."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    groups: dict[str, list[Case]] = {}
    for spec in specs:
        key = json.dumps([spec.engine, spec.settings.threads, spec.settings.device])
        groups.setdefault(key, []).append(spec)
    rng, order = random.Random(seed), []
    for round_index in range(rounds):
        shuffled = [list(group) for group in groups.values()]
        rng.shuffle(shuffled)
        for group in shuffled:
            rng.shuffle(group)
            order.append((round_index, group))
    return order


def run_cases(specs: Sequence[Case], jsonl_path: str | Path, *, rounds: int = 1, seed: int = 0,
              timeout_s: float = 600.0, command: CommandBuilder = worker_command, log: Log = print,
              live: progress.Progress | None = None) -> list[Record]:
    """Run every case ``rounds`` times (see :func:`plan`), appending each record to ``jsonl_path`` as it lands and
    logging one line per record, with each case's phase and the ETA on ``live``; engines that cannot run here are
    recorded once as ``skipped``."""
    records: list[Record] = []
    runnable = []
    for spec in specs:
        why = skip_reason(spec.engine, spec.settings.nanogpt)
        if why:
            records.append(spec.record("skipped", why))
            append_jsonl(jsonl_path, records[-1])
        else:
            runnable.append(spec)
    todo = plan(runnable, rounds, seed)
    total = len(records) + sum(len(group) for _, group in todo)
    if live is not None:
        live.plan([(c.engine, c.workload) for _, group in todo for c in group], len(records))

    def emit(record: Record) -> None:
        append_jsonl(jsonl_path, record)
        records.append(record)
        note = "" if record.status == "ok" else f": {record.reason}"
        log(f"[{len(records)}/{total}] {record.engine} {record.workload} round {record.round + 1}: "
            f"{record.status} in {record.wall_s:.1f} s{note}")
        if live is not None:
            live.finished(record.engine, record.workload, record.wall_s)

    for round_index, group in todo:
        def watch(case: Case, text: str, round_index: int = round_index) -> None:
            live.set_phase(text, f"{case.engine} {case.workload} round {round_index + 1}")

        run_group(group, round_index, timeout_s, command, emit, None if live is None else watch)
    return records
