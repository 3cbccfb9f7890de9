"""Data-parallel training: the shard plan, rank-0-only run states, a killed rank, and each engine's 2-way run
against one device, across frameworks, with accumulation and resumed across degree and backend (short runs)."""

import numpy as np
import pytest

from llmdual.contract import backend
from llmdual.core import shard
from llmdual.core.config import Config
from llmdual.core.recipe import History, TrainConfig
from llmdual.parallel import launch
from llmdual.parity import checks_for
from llmdual.parity import data_parallel as dp
from llmdual.parity.core import ParityContext
from llmdual.training import Monitor, latest_run_state, run_state_prefix

ACCUMULATING = ("torch-ddp", "keras-jax", "keras-tf-multiworker")
STEPS = 4  # short runs: each engine's trajectory differs from one device only by summation order at any length


@pytest.mark.parametrize("batch, accum, world", [(8, 1, 2), (8, 2, 2), (12, 3, 2), (16, 2, 4), (6, 1, 3)])
def test_union_of_the_shards_is_the_batch_in_order(batch, accum, world):
    ids = np.arange(batch * 3).reshape(batch, 3)
    targets = np.arange(batch).reshape(batch, 1)
    shards = [shard.shard((ids, targets), r, world, accum) for r in range(world)]
    rows = batch // accum
    for i in range(accum):  # micro-batch i: rank 0's rows, then rank 1's, ... are exactly rows of micro-batch i
        part = np.concatenate([s[0].reshape(accum, rows // world, 3)[i] for s in shards])
        np.testing.assert_array_equal(part, ids[i * rows:(i + 1) * rows])
    laid_out = shard.rank_major((ids,), world, accum)[0]
    np.testing.assert_array_equal(laid_out, np.concatenate([s[0] for s in shards]))
    weights = shard.shard_weights(targets, world, accum)
    assert weights.shape == (world, accum)
    np.testing.assert_allclose(weights, 1 / (world * accum), rtol=1e-6)  # equal counts: equal shares


def test_shard_weights_follow_the_counted_targets():
    targets = np.array([[1, -100], [1, 1], [-100, -100], [1, 1]])
    weights = shard.shard_weights(targets.reshape(4, 2), 2, 1)
    np.testing.assert_allclose(weights, [[3 / 5], [2 / 5]], rtol=1e-6)
    with pytest.raises(ValueError, match="rank 1's shard of micro-batch 0 has no counted target"):
        shard.shard_weights(np.array([[1], [1], [-100], [-100]]), 2, 1)


def test_bad_degrees_are_refused():
    with pytest.raises(ValueError, match="data_parallel must be an integer >= 1"):
        TrainConfig(data_parallel=0)
    with pytest.raises(ValueError, match=r"divisible by grad_accum x data_parallel \(2 x 3\)"):
        TrainConfig(batch_size=8, grad_accum=2, data_parallel=3)
    with pytest.raises(ValueError, match="rank must be in"):
        shard.shard((np.zeros((4, 2)),), 2, 2, 1)
    with pytest.raises(ValueError, match="RANK must be in"):
        shard.rank_and_world({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match=r"^TrainConfig.data_parallel is 2 but this torch run has 1 "
                                         r"rank\(s\)/replica\(s\); launch it as: torchrun$"):
        shard.check_launched(2, 1, "torch", "torchrun")
    # not started by torchrun: one rank
    with pytest.raises(ValueError, match="this torch run has 1 rank.*launch it as: torchrun --nproc-per-node 2"), \
            backend("torch", "data-parallel").data_parallel_scope(2):
        pass
    assert shard.rank_and_world({}) == (0, 1)
    with pytest.raises(ValueError, match="LLMDUAL_COORDINATOR must be host:port"):
        launch.coordinator({launch.COORDINATOR: "localhost"})
    with pytest.raises(ValueError, match="does not run one process per rank"):
        launch.rank_env("torch-ddp", 0, 2, "127.0.0.1", 1234)


def test_each_process_of_a_multi_process_engine_learns_its_rank():
    assert launch.coordinator({launch.COORDINATOR: "10.0.0.1:29500"}) == ("10.0.0.1", 29500)
    jax = launch.rank_env("keras-jax-multiprocess", 1, 2, "10.0.0.1", 29500)
    assert jax["KERAS_DISTRIBUTION_JOB_ADDRESSES"] == "10.0.0.1:29500" and jax["KERAS_DISTRIBUTION_PROCESS_ID"] == "1"
    tf = [launch.rank_env("keras-tf-multiworker", r, 2, "10.0.0.1", 29500) for r in range(2)]
    assert tf[0]["TF_CONFIG"] != tf[1]["TF_CONFIG"]  # the same cluster, worker 0 and 1 on ports 29500, 29501
    assert '"worker": ["10.0.0.1:29500", "10.0.0.1:29501"]' in tf[1]["TF_CONFIG"] and '"index": 1' in tf[1]["TF_CONFIG"]
    for env in [jax, tf[1]]:  # each framework's own variables name the rank, without the launcher's RANK
        assert shard.rank_and_world({k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE")}) == (1, 2)
    # JAX's devices: one per process for the multi-process engine, N in one process otherwise
    assert "device_count=1" in launch.launcher_env("keras-jax-multiprocess", 2)["XLA_FLAGS"]
    assert "device_count=2" in launch.launcher_env("keras-jax", 2)["XLA_FLAGS"]


def test_the_torch_engines_launch_with_torchrun_and_name_their_wrapper(monkeypatch):
    from torch import nn

    from llmdual.backends.torch.distributed import wrap

    for engine, mode in [("torch-ddp", "ddp"), ("torch-fsdp", "fsdp")]:
        assert launch.launcher_env(engine, 2, threads=2)[shard.TORCH_DP] == mode
        assert launch.launch_command(engine, 2, ["m"])[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node"]
    monkeypatch.setenv(shard.TORCH_DP, "zero3")
    with pytest.raises(ValueError, match=r"LLMDUAL_TORCH_DP must be one of \['ddp', 'fsdp'\], got 'zero3'"):
        wrap(nn.Linear(2, 2), 2)


def test_torchrun_failure_names_the_rank():
    summary = "Root Cause (first observed failure):\n[0]:\n  time : 2026\n  host : h\n  rank : 1 (local_rank: 1)\n"
    assert launch.failed_rank(summary) == 1
    error = launch.launch_error("torch-ddp", 2, 1, summary, ["python"])
    assert "rank 1 of 2" in str(error)


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_0_writes_run_states(tmp_path, tiny, rank):
    import llmdual
    from llmdual.backends.torch.train import make_optimizer, moments

    model = llmdual.build(tiny, "torch")
    cfg = TrainConfig(steps=1, batch_size=2, checkpoint_dir=str(tmp_path), progress=False)
    optimizer, history = make_optimizer(model, cfg), History("torch")
    Monitor(model, cfg, [], history, 0, lambda: moments(optimizer, model), rank=rank).step_end(0, 1.0, 1e-3, 1.0, 8)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == (["step-000001.json", "step-000001.optim.safetensors", "step-000001.safetensors"]
                       if rank == 0 else [])
    assert history.loss == [1.0]  # every rank records its history


@pytest.fixture(scope="module")
def parity():
    """The data-parallel parity checks over ``STEPS`` steps, sharing their runs; and the runs' folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dp, "STEPS", STEPS)
        # accumulation on one engine per framework (the parity command checks every engine): a Keras backend's
        # one-process and multi-process engines split micro-batches by the same code; the fastest of each here
        patch.setattr(dp, "ACCUMULATING", ACCUMULATING)
        ctx = ParityContext(Config.preset("tiny"), "lm", 0)
        checks = [c for check in checks_for(["data-parallel"]) for c in check(ctx)]
        yield checks, dp.runs(ctx)


def test_every_engine_matches_one_device_and_the_others(parity):
    checks, _ = parity
    failed = [(c.name, c.max_rel, c.tolerance) for c in checks if not c.passed]
    assert not failed, failed
    names = " | ".join(c.name for c in checks)
    for engine in launch.LAUNCHERS:
        assert f"{engine} 2-way vs 1 device: per-step loss ({STEPS} steps)" in names
    for engine in ACCUMULATING:
        assert f"{engine} 2 ranks x 2 micro-batches vs 1 x 4 rows" in names
    for engine in [e for e in launch.LAUNCHERS if e != "torch-ddp"]:
        assert f"torch-ddp vs {engine}, 2-way" in names
    # resumed across degree (2 -> 1, 1 -> 2) and across backend (torch 2-way -> keras, keras 2-way -> torch)
    for writer, reader in dp.RESUMES:
        assert f"resume at {STEPS // 2}: {writer[0]} x{writer[1]} -> {reader[0]} x{reader[1]}" in names
    losses = [c for c in checks if "per-step loss" in c.name]
    engines = len(launch.LAUNCHERS)
    assert len(losses) == engines + (engines - 1) + len(ACCUMULATING) + len(dp.RESUMES)
    assert all(c.tolerance == 1e-5 for c in losses)


def test_fsdp_matches_one_device_and_ddp_and_resumes_across_degree(parity):
    checks, _ = parity
    fsdp = {c.name: c for c in checks if "torch-fsdp" in c.name}
    resumed = f"resume at {STEPS // 2}: "
    pairs = ["torch-fsdp 2-way vs 1 device", "torch-ddp vs torch-fsdp, 2-way",
             f"{resumed}torch-fsdp x2 -> torch-ddp x1", f"{resumed}torch-ddp x1 -> torch-fsdp x2"]
    assert sorted(fsdp) == sorted(f"{pair}: {what}" for pair in pairs
                                  for what in [f"per-step loss ({STEPS} steps)", "final weights (worst tensor)"])
    failed = [(c.name, c.max_rel, c.tolerance) for c in fsdp.values() if not c.passed]
    assert not failed, failed


@pytest.mark.parametrize("engine", ["torch-ddp", "torch-fsdp", "keras-jax-multiprocess", "keras-tf-multiworker"])
def test_a_2_way_run_leaves_complete_run_states_only(parity, engine):
    _, runs = parity
    folder = runs.checkpoints(engine, 2)
    names = sorted(p.name for p in folder.iterdir())
    expected = sorted(f"step-{s:06d}{x}" for s in (STEPS // 2, STEPS)
                      for x in (".json", ".optim.safetensors", ".safetensors"))
    assert names == expected  # no temporary files, one copy of each


def test_a_killed_rank_fails_the_run_naming_it(parity, tmp_path):
    _, runs = parity
    args = ["--engine", "torch-ddp", "--world", "2", "--out", str(tmp_path / "out.npz"), "--steps", str(STEPS),
            "--config", Config.preset("tiny").to_json(), "--checkpoint-dir", str(tmp_path / "ckpt")]
    stop = STEPS // 2 + 1  # after the middle run state, before the last
    with pytest.raises(RuntimeError, match="rank 1 of 2 exited with an error") as failure:
        dp.launch("torch-ddp", 2, args, {shard.FAIL_RANK: "1", shard.FAIL_STEP: str(stop)})
    assert f"rank 1: stopping before step {stop}" in str(failure.value)
    assert latest_run_state(tmp_path / "ckpt") == run_state_prefix(tmp_path / "ckpt", STEPS // 2)
    assert not (tmp_path / "out.npz").exists()


def test_a_killed_worker_process_fails_the_run_naming_it(parity, tmp_path):
    _, runs = parity  # after the shared runs: this one runs alone
    args = ["--engine", "keras-tf-multiworker", "--world", "2", "--out", str(tmp_path / "out.npz"), "--steps",
            str(STEPS), "--config", Config.preset("tiny").to_json(), "--checkpoint-dir", str(tmp_path / "ckpt")]
    stop = STEPS // 2 + 1
    with pytest.raises(RuntimeError, match="rank 1 of 2 exited with an error") as failure:
        # rank 0 would wait for rank 1 in the next all-reduce: the launcher stops it
        dp.launch("keras-tf-multiworker", 2, args, {shard.FAIL_RANK: "1", shard.FAIL_STEP: str(stop)})
    assert f"rank 1: stopping before step {stop}" in str(failure.value)
    assert latest_run_state(tmp_path / "ckpt") == run_state_prefix(tmp_path / "ckpt", STEPS // 2)
    assert not (tmp_path / "out.npz").exists()


def test_the_classifier_trains_2_way_under_ddp_as_on_one_device():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dp, "STEPS", STEPS)
        checks = dp.check_classifier(ParityContext(Config.preset("tiny"), "classifier", 0))
    assert [c.name for c in checks] == [f"classifier, torch-ddp 2-way vs 1 device: per-step loss ({STEPS} steps)",
                                        "classifier, torch-ddp 2-way vs 1 device: final weights (worst tensor)"]
    failed = [(c.name, c.max_rel, c.tolerance) for c in checks if not c.passed]
    assert not failed, failed


def test_the_scaling_table_shows_each_engine_or_why_it_has_no_figure():
    from llmdual.bench.scaling import table

    rows = [{"engine": "keras-jax-multiprocess", "workers": 2, "threads": 2, "parity": True, "parity_loss_rel": 1e-7,
             "tokens_per_s_1": 1000.0, "tokens_per_s_2": 1500.0, "efficiency": 0.75},
            {"engine": "torch-ddp", "workers": 2, "threads": 2, "parity": True, "parity_loss_rel": 2e-7,
             "tokens_per_s_1": 900.0, "error": "data-parallel training failed: ... (exit status -6)"}]
    lines = table(rows, "small", 8, 256).splitlines()
    assert lines[0] == "train scaling, small 8 x 256, 2 threads shared by the workers"
    assert lines[3].split() == ["keras-jax-multiprocess", "ok", "1.0e-07", "1,000", "1,500", "0.75"]
    assert lines[4].split()[:3] == ["torch-ddp", "ok", "2.0e-07"]
    assert lines[4].endswith("900 at 1 worker; 2 workers failed (exit status -6)")
