"""Run benchmark cases in fresh worker processes, appending every result to a JSONL file as it lands.

Isolation: every worker process is started in its own session so that a timeout kills its whole process
group, and no framework ever shares a process with another. By default each (case, round) gets its own
process; with ``per_engine=True`` the cases of one engine (same threads and device) run one after another in a
single fresh process per round, which saves a framework start-up per case (seconds each for TensorFlow).
Rounds run in a seeded random order, reshuffled each round, so slow drift (thermals, other load) does not
favour one engine. A crash, non-zero exit, signal (an out-of-memory kill included), timeout or unreadable
result becomes the record of the case that was running, with the tail of its stderr, and the run goes on
(the cases a dead worker had not reached run in a fresh one). Engines whose frameworks are not installed
(found with ``importlib.util.find_spec``, nothing imported) are recorded once as ``skipped``, naming the extra.

Worker contract
---------------
The worker is invoked as ``python -m llmdual.bench.worker --case-json JSON --result PATH`` where ``JSON`` is
``{"engine": str, "workload": str, "settings": {...}}`` (see below); several ``--case-json JSON --result PATH``
pairs (cases of one engine) are run in the order given, in one process. For each case it must write to
``PATH`` one JSON object, as soon as the case ends::

    {"status": "ok" | "mismatch" | "failed",
     "reason": str | null,                      # required (non-empty) unless status is "ok"
     "measurements": {metric: [float, ...]},    # one value per timed repeat
     "scalars": {name: number | str | bool | null}}

and exit 0 when all are done. Any other exit is a crash of the case that was running: the first without a
result file, or the last one if every file was written. Metric names per workload are
:data:`llmdual.bench.results.WORKLOAD_METRICS`: ``train``/``infer`` ``tokens_per_s``; ``classify``
``sequences_per_s``; ``generate`` ``tokens_per_s_b1`` (batch 1), ``tokens_per_s_batch`` (``batch_size``),
``ttft_s`` (time to first token) and ``token_latency_s`` (every per-token latency at batch 1). Scalars it
should report where they apply: ``peak_rss_mb`` (``VmHWM`` of ``/proc/self/status`` at the end of the case,
reset at its start when several share a process; not ``ru_maxrss``, which on Linux inherits the parent's
peak across fork and exec; the runner falls back to polling the worker process's ``VmHWM`` itself),
``peak_device_mb``, ``build_s``, ``warmup_s`` (warm-up, compilation included), ``export_s``, ``file_mb``,
``max_abs_diff`` (parity against the reference; ``max_rel_diff`` for training), ``probe_flops`` (a matmul
probe's FLOP/s, computed with :func:`llmdual.bench.flops.matmul_flop_rate`). Numbers must be finite.
``mismatch`` means it ran but the outputs differ from the reference beyond tolerance; ``failed`` means it could
not run the case (say why).

Case settings (passed to the worker verbatim and kept in the results): ``config`` (``Config.to_dict()``),
``preset`` (its name, for display), ``batch_size``, ``seq_len`` (the prompt length for ``generate``),
``new_tokens`` (``generate``), ``warmup`` and ``repeats`` (untimed and timed iterations), ``seed``,
``device`` (``"cpu"`` | ``"cuda"``), ``dtype`` (``"float32"`` | ``"bfloat16"`` | ``"float16"``), ``tf32``
(bool), ``threads`` (CPU threads; the runner sets the thread variables and pins the process to that many
cores), ``tolerance`` (for the parity check) and ``expected`` (the ``.npz`` of PyTorch reference outputs,
:mod:`llmdual.bench.expected`). The runner itself reads only ``threads`` and ``device``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from llmdual.bench.env import peak_rss_mb
from llmdual.bench.results import ENGINES, EXTRAS, WORKER_STATUSES, WORKLOADS, append_jsonl

CommandBuilder = Callable[[str, str], list[str]]

STDERR_TAIL_CHARS = 4000
_OOM_MARKERS = ("out of memory", "memoryerror", "outofmemoryerror", "resource_exhausted", "std::bad_alloc")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class CaseSpec:
    """One benchmark case: an engine running a workload with the given settings."""

    engine: str
    workload: str
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The ``--case-json`` argument handed to the worker."""
        return json.dumps({"engine": self.engine, "workload": self.workload, "settings": self.settings},
                          sort_keys=True, allow_nan=False)


def worker_command(case_json: str, result_path: str) -> list[str]:
    """The default worker command line (the contract in this module's docstring)."""
    return [sys.executable, "-m", "llmdual.bench.worker", "--case-json", case_json, "--result", result_path]


def missing_modules(engine: str) -> list[str]:
    """Top-level modules an engine needs that are not installed (checked without importing them)."""
    needs = ENGINES[engine].modules if engine in ENGINES else ()
    return [name for name in needs if importlib.util.find_spec(name) is None]


def skip_reason(engine: str) -> str | None:
    """Why an engine cannot run here and which extra to install, or ``None`` if it can."""
    missing = missing_modules(engine)
    if not missing:
        return None
    extras = ",".join(sorted({EXTRAS.get(name, name) for name in missing}))
    return f"not installed: {', '.join(missing)}; install with: pip install 'llmdual[{extras}]'"


def worker_env(spec: CaseSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: Keras backend, thread counts, GPU memory and logging settings."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # OpenMP threads (PyTorch's) that spin while waiting collapse when the cores are shared (4x slower seen on a
    # busy 2-core machine); sleeping costs a wake-up per parallel region. Kept if the caller chose otherwise.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    engine = ENGINES.get(spec.engine)
    if engine is not None and engine.keras_backend:
        env["KERAS_BACKEND"] = engine.keras_backend
    threads = spec.settings.get("threads")
    if threads:
        env.update({name: str(threads) for name in _THREAD_VARS})
        env["TF_NUM_INTEROP_THREADS"] = "1"  # one inter-op pool per socket, Intel's advice for TF on CPU
        if int(threads) == 1:  # XLA:CPU has no thread-count flag, only this switch (else: core pinning)
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
    if spec.settings.get("device", "cpu") == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["JAX_PLATFORMS"] = "cpu"
    else:  # allocate on demand so peak device memory means what the engine needed
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    return env


def _check_number(value: Any, where: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if not ok or value in (float("inf"), float("-inf")):
        raise ValueError(f"{where} must be a finite number, got {value!r}")


def parse_result(path: str | Path) -> dict[str, Any]:
    """The worker's result file, checked against the contract; ``ValueError`` naming what is wrong."""
    try:
        result = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"result is not JSON: {error}") from None
    if not isinstance(result, dict):
        raise ValueError(f"result must be an object, got {type(result).__name__}")
    if result.get("status") not in WORKER_STATUSES:
        raise ValueError(f"status {result.get('status')!r} is not one of {WORKER_STATUSES}")
    reason = result.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ValueError(f"reason must be a string or null, got {reason!r}")
    if result["status"] != "ok" and not reason:
        raise ValueError(f"a {result['status']!r} result must give a reason")
    measurements, scalars = result.get("measurements", {}), result.get("scalars", {})
    if not isinstance(measurements, dict) or not isinstance(scalars, dict):
        raise ValueError("measurements and scalars must be objects")
    for metric, values in measurements.items():
        if not isinstance(values, list):
            raise ValueError(f"measurements.{metric} must be a list")
        for value in values:
            _check_number(value, f"measurements.{metric}")
    for name, value in scalars.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_number(value, f"scalars.{name}")
        elif value is not None and not isinstance(value, (str, bool)):
            raise ValueError(f"scalars.{name} must be a number, string, bool or null, got {value!r}")
    return {"status": result["status"], "reason": reason, "measurements": measurements, "scalars": scalars}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _spawn(argv: list[str], env: dict[str, str], stderr: Any, threads: int | None) -> subprocess.Popen:
    """Start the worker in a new session; with ``threads``, pinned to that many of our cores (inherited)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = bool(threads) and 0 < int(threads) < len(cpus)
    if pin:  # affects only this thread, which forks the child
        os.sched_setaffinity(0, cpus[: int(threads)])
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


def _wait(pid: int, timeout_s: float, results: Sequence[Path] = (),
          on_result: Callable[[int], None] = lambda index: None) -> tuple[int, float | None, bool]:
    """Wait for the worker, polling its peak RSS and its result files, and kill its group once the case it is
    running has taken ``timeout_s``; ``on_result(i)`` is called as result ``i`` appears, in order.

    Returns its exit code, its last-seen peak RSS in MB, and whether it timed out. ``ru_maxrss`` would be
    wrong here: Linux carries the parent's peak across fork and exec into the child's figure.
    """
    deadline, delay, timed_out, peak, seen = time.monotonic() + timeout_s, 0.005, False, None, 0
    try:
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            peak = peak_rss_mb(pid) or peak
            while seen < len(results) and _finished(results[seen]):
                on_result(seen)
                seen += 1
                deadline, delay = time.monotonic() + timeout_s, 0.005
            if time.monotonic() >= deadline:
                timed_out = True
                break
            time.sleep(delay)
            delay = min(2 * delay, 0.1)
    finally:  # also on Ctrl-C: leave nothing of the worker behind (its leader is not reaped yet)
        _kill_group(pid)
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
        reason = f"killed by signal {name}"
        if -returncode == signal.SIGKILL:
            reason += " (likely out of memory: the kernel's OOM killer sends SIGKILL)"
        return reason
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    oom = any(marker in stderr.lower() for marker in _OOM_MARKERS)
    return f"{'out of memory: ' if oom else ''}exit code {returncode}" + (f": {last[:300]}" if last else "")


def _record(spec: CaseSpec, round_index: int, wall_s: float, returncode: int | None, peak_mb: float | None,
            stderr_tail: str) -> dict[str, Any]:
    return {"engine": spec.engine, "workload": spec.workload, "settings": spec.settings, "round": round_index,
            "measurements": {}, "scalars": {}, "returncode": returncode, "wall_s": round(wall_s, 3),
            "child_peak_rss_mb": None if peak_mb is None else round(peak_mb, 1), "stderr_tail": stderr_tail}


def _from_file(record: dict[str, Any], path: Path) -> dict[str, Any]:
    try:
        record.update(parse_result(path))
    except ValueError as error:
        record.update(status="crashed", reason=f"invalid worker result: {error}")
    return record


def _run_process(specs: Sequence[CaseSpec], round_index: int, timeout_s: float, command: CommandBuilder,
                 emit: Callable[[dict[str, Any]], None]) -> int:
    """Run ``specs`` in order in one worker process, emitting a record per case it finished and one for the case
    it died in (if it did); returns how many cases it used up (at least one)."""
    with tempfile.TemporaryDirectory(prefix="llmdual-bench-") as tmp:
        results = [Path(tmp, f"result-{i}.json") for i in range(len(specs))]
        stderr_path = Path(tmp, "stderr.txt")
        argv = command(specs[0].to_json(), str(results[0]))
        for spec, path in zip(specs[1:], results[1:]):
            argv += ["--case-json", spec.to_json(), "--result", str(path)]
        marks = [time.monotonic()]  # when each case started (the previous one's result appeared)

        def on_result(index: int) -> None:  # every case but the last is final once its result appears
            marks.append(time.monotonic())
            if index < len(specs) - 1:
                record = _record(specs[index], round_index, marks[-1] - marks[-2], None, peak_rss_mb(proc.pid),
                                 _tail(stderr_path))
                emit(_from_file(record, results[index]))

        with stderr_path.open("wb") as stderr:
            proc = _spawn(argv, worker_env(specs[0]), stderr, specs[0].settings.get("threads"))
            returncode, peak, timed_out = _wait(proc.pid, timeout_s, results, on_result)
            proc.returncode = returncode  # reaped by _wait; keeps Popen from waiting on it again
        ended, tail = time.monotonic(), _tail(stderr_path)
        written = len(marks) - 1
        while written < len(specs) and results[written].exists():  # written just before the worker exited
            marks.append(ended)
            if written < len(specs) - 1:
                record = _record(specs[written], round_index, ended - marks[-2], None, peak, tail)
                emit(_from_file(record, results[written]))
            written += 1
        if returncode == 0 and not timed_out:
            if written == len(specs):
                last = _record(specs[-1], round_index, marks[-1] - marks[-2], 0, peak, tail)
                emit(_from_file(last, results[-1]))
                return len(specs)
            dead = _record(specs[written], round_index, ended - marks[-1], 0, peak, tail)
            emit({**dead, "status": "crashed", "reason": "worker exited 0 without writing its result file"})
            return written + 1
        index = min(written, len(specs) - 1)  # the case that was running when it died
        dead = _record(specs[index], round_index, ended - marks[index], returncode, peak, tail)
        if timed_out:
            dead.update(status="timeout", reason=f"timed out after {timeout_s:g} s")
        else:
            dead.update(status="crashed", reason=_crash_reason(returncode, tail))
        emit(dead)
        return index + 1


def run_group(specs: Sequence[CaseSpec], round_index: int = 0, timeout_s: float = 600.0,
              command: CommandBuilder = worker_command,
              emit: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run cases of one engine in one fresh worker process (another for the rest if one kills it); return their
    run records in order, each also handed to ``emit`` as soon as it is known (never raises for worker faults).
    ``timeout_s`` bounds each case, not the group."""
    records: list[dict[str, Any]] = []

    def collect(record: dict[str, Any]) -> None:
        records.append(record)
        if emit is not None:
            emit(record)

    done = 0
    while done < len(specs):
        done += _run_process(specs[done:], round_index, timeout_s, command, collect)
    return records


def run_case(spec: CaseSpec, round_index: int = 0, timeout_s: float = 600.0,
             command: CommandBuilder = worker_command) -> dict[str, Any]:
    """Run one case once in a fresh worker process and return its run record (never raises for worker faults)."""
    return run_group([spec], round_index, timeout_s, command)[0]


def plan(specs: Sequence[CaseSpec], rounds: int, seed: int) -> list[tuple[int, CaseSpec]]:
    """(round, case) pairs: every case once per round, in a fresh seeded random order each round."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    rng, order = random.Random(seed), []
    for round_index in range(rounds):
        shuffled = list(specs)
        rng.shuffle(shuffled)
        order.extend((round_index, spec) for spec in shuffled)
    return order


def process_key(spec: CaseSpec) -> str:
    """Cases with the same key can share a worker process: same engine, hence environment, threads and device."""
    return json.dumps([spec.engine, spec.settings.get("threads"), spec.settings.get("device", "cpu")])


def plan_groups(specs: Sequence[CaseSpec], rounds: int, seed: int) -> list[tuple[int, list[CaseSpec]]]:
    """(round, cases for one process) pairs: per round, the groups of :func:`process_key` in a fresh seeded
    random order, and the cases within each group shuffled too."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    groups: dict[str, list[CaseSpec]] = {}
    for spec in specs:
        groups.setdefault(process_key(spec), []).append(spec)
    rng, order = random.Random(seed), []
    for round_index in range(rounds):
        shuffled = [list(group) for group in groups.values()]
        rng.shuffle(shuffled)
        for group in shuffled:
            rng.shuffle(group)
            order.append((round_index, group))
    return order


def run_cases(specs: Sequence[CaseSpec], jsonl_path: str | Path, *, rounds: int = 1, seed: int = 0,
              timeout_s: float = 600.0, command: CommandBuilder = worker_command,
              console: Console | None = None, per_engine: bool = False) -> list[dict[str, Any]]:
    """Run every case ``rounds`` times with live progress, appending each run record to ``jsonl_path``;
    ``per_engine`` runs the cases of an engine in one process per round (see the module docstring)."""
    for spec in specs:
        if spec.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {spec.workload!r}; choose one of {WORKLOADS}")
    reasons = {engine: skip_reason(engine) for engine in {spec.engine for spec in specs}}
    records = []
    for spec in specs:
        if reasons[spec.engine]:
            record = {"engine": spec.engine, "workload": spec.workload, "settings": spec.settings, "round": 0,
                      "status": "skipped", "reason": reasons[spec.engine], "measurements": {}, "scalars": {}}
            append_jsonl(jsonl_path, record)
            records.append(record)
    runnable = [s for s in specs if not reasons[s.engine]]
    todo = plan_groups(runnable, rounds, seed) if per_engine else [(r, [s]) for r, s in plan(runnable, rounds, seed)]
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console or Console(stderr=True)) as progress:
        task = progress.add_task("benchmark", total=sum(len(group) for _, group in todo))
        for round_index, group in todo:
            finished = len(records)

            def describe() -> None:  # the case now running: the group's cases end in order
                spec = group[min(len(records) - finished, len(group) - 1)]
                progress.update(task, description=f"{spec.engine} {spec.workload} (round {round_index + 1})")

            def emit(record: dict[str, Any]) -> None:
                append_jsonl(jsonl_path, record)
                records.append(record)
                note = "" if record["status"] == "ok" else f": {record['reason']}"
                progress.console.print(f"{record['engine']} {record['workload']} round {round_index + 1}: "
                                       f"{record['status']} in {record['wall_s']:.1f} s{note}", markup=False)
                progress.advance(task)
                describe()

            describe()
            run_group(group, round_index, timeout_s, command, emit)
    return records
