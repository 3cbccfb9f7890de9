"""The engine table derived from the registry: each backend's rows (a generic one for a backend without specialised
rows), what a row cannot run by its backend's capabilities, install hints from the registry's extras; and a
backend without specialised rows benchmarked end to end through the public API."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmdual import contract
from llmdual.bench.engines import table
from llmdual.contract import CAPABILITIES, BackendInfo, backends, info

ROOT = Path(__file__).resolve().parents[1]


def lacking() -> list[str]:
    """The registered backends with no specialised engine rows, from the table itself."""
    return [name for name in backends() if all(row.generic for row in table.llmdual_rows(name))]


def capability_line(name: str, capability: str) -> str:
    """The registry's own words for a backend lacking ``capability``, naming the backends that offer it."""
    return (f"not supported: backend {name!r} does not {CAPABILITIES[capability][1]}; backends that do: "
            f"{', '.join(backends(capability))}")


def test_every_backend_has_its_rows_and_a_generic_row_only_without_specialised_ones():
    for name in backends():
        rows = table.llmdual_rows(name)
        assert rows and all(row.backend == name and row.name in table.ENGINES for row in rows), name
        assert [row.generic for row in rows] in ([True], [False] * len(rows)), name
    # the default run stays llmdual's specialised float engines: generic, int8 and reference rows are opt-in
    assert table.LLMDUAL_ENGINES == ("torch-eager", "torch-compile", "keras-tensorflow", "keras-tensorflow-xla",
                                     "keras-jax", "keras-torch", "ort-torch-export", "ort-keras-export")


def test_a_backend_without_specialised_rows_gets_a_generic_row_skipping_by_its_capabilities(monkeypatch):
    """A stand-in with the capabilities of the float64 reference backend, registered for this test only."""
    monkeypatch.setitem(contract.REGISTRY, "standin", BackendInfo("standin", (), "", "forward decoding reference"))
    monkeypatch.setattr(table, "ENGINES", table.build_table())
    [row] = table.llmdual_rows("standin")
    assert row.generic and table.ENGINES["standin"] == row and "standin" in lacking()
    for workload, capability in table.WORKLOAD_CAPABILITIES.items():
        why = table.unsupported("standin", workload)
        assert why == (None if info("standin").offers(capability) else capability_line("standin", capability))
    assert table.unsupported("standin", "train").startswith("not supported: backend 'standin' does not train;")


@pytest.mark.parametrize("name", [name for name in backends() if info(name).needs])
def test_a_missing_framework_names_the_registry_extra(name, monkeypatch):
    real, hidden = importlib.util.find_spec, info(name).needs[0]
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == hidden else real(module, *a))
    for row in table.llmdual_rows(name):
        assert f"not installed: {hidden}; install llmdual[{info(name).extra}]" in table.skip_reason(row.name), row
    assert table.MODULE_EXTRAS["transformers"] == table.MODULE_EXTRAS["keras_hub"] == "reference"


@pytest.mark.parametrize("name", lacking() or [pytest.param(None, marks=pytest.mark.skip(
    reason="every registered backend has specialised rows; the stand-in test covers the generic row"))])
def test_engines_of_a_backend_without_specialised_rows_time_what_it_supports(name, tmp_path):
    """``compare.py --engines NAME``: what the backend offers is checked and timed, the rest says which
    capability it lacks and which backends have it."""
    workloads = list(table.WORKLOAD_CAPABILITIES)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--engines", name,
                           "--workloads", ",".join(workloads), "--preset", "tiny", "--batch", "2", "--seq-len", "8",
                           "--new-tokens", "2", "--warmup", "0", "--repeats", "2", "--threads", "1", "--device",
                           "cpu", "--no-charts", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    cases = {c["workload"]: c for c in json.loads((tmp_path / "results.json").read_text())["cases"]}
    assert set(cases) == set(workloads)
    for workload, capability in table.WORKLOAD_CAPABILITIES.items():
        case = cases[workload]
        if info(name).offers(capability):
            assert case["status"] == "ok" and case["stats"], (workload, case["reason"])  # checked, then timed
        else:
            assert (case["status"], case["reason"]) == ("skipped", capability_line(name, capability))
            assert f"Not compared: {name} {workload}" not in (tmp_path / "report.md").read_text()  # by design
