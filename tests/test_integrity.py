"""Integrity of what llmdual writes and reads back, in every backend (training's in each that trains): model files
and optimizer state carry a
checksum, optimizer moments are checked before they reach an optimizer, weight snapshots are copies, writes are
atomic and durable, the run folder is checked before step 0, and model files and run state keep distinct names."""

import importlib
import json
import os
import stat
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import llmdual
from llmdual import training
from llmdual.contract import backend as backend_package
from llmdual.contract import backends, info
from llmdual.core import io
from llmdual.core.io import read_optimizer_state, write_optimizer_state
from llmdual.core.recipe import TrainConfig
from llmdual.training import latest_run_state

# what trains or reads run states runs on every backend that trains; model files, on every backend
TRAINING_BACKENDS = pytest.mark.parametrize("backend", backends("training"))


def train_config(**changes) -> TrainConfig:
    return TrainConfig(steps=2, batch_size=4, warmup_steps=0, lr=1e-3, min_lr=1e-4, progress=False).replace(**changes)


def get_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.random.default_rng(step).integers(0, 256, (4, 9))
    return tokens[:, :-1], tokens[:, 1:]


def edit_header(path, change) -> None:
    """Rewrite a safetensors file's JSON header with ``change(header)``, keeping its data bytes."""
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size:])


def swap_offsets(header: dict) -> None:
    a, b = header["h.0.attn.c_proj.weight"], header["h.1.attn.c_proj.weight"]
    a["data_offsets"], b["data_offsets"] = b["data_offsets"], a["data_offsets"]


def edit_config(header: dict) -> None:
    config = json.loads(header["__metadata__"]["config"])
    header["__metadata__"]["config"] = json.dumps({**config, "norm_eps": 1e-3})


def flip_byte(path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40
    path.write_bytes(bytes(raw))


CORRUPTIONS = {
    "flipped byte": flip_byte,
    "dtype F32 -> I32": lambda path: edit_header(path, lambda h: h["wte.weight"].update(dtype="I32")),
    "swapped offsets": lambda path: edit_header(path, swap_offsets),
    "edited config": lambda path: edit_header(path, edit_config),
}


def run_state(backend: str, folder) -> object:
    """Train a tiny LM for 2 steps with its run state saved in ``folder``; the prefix of that run state."""
    llmdual.train(llmdual.build(llmdual.Config.preset("tiny"), backend), get_batch,
                  train_config(checkpoint_dir=str(folder)))
    return latest_run_state(folder)


# 1. Model files carry a checksum that loading verifies.

def test_model_files_carry_a_checksum(tiny, backend, tmp_path):
    path = llmdual.save(llmdual.build(tiny, backend, seed=1), tmp_path / "m.safetensors")
    metadata = json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])["__metadata__"]
    assert len(metadata["sha256"]) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checksummed file loads without the unverified-file warning
        assert llmdual.load(path, backend).config == tiny


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_modified_model_file_is_refused(tiny, backend, tmp_path, corruption):
    path = llmdual.save(llmdual.build(tiny, backend, seed=1), tmp_path / "m.safetensors")
    CORRUPTIONS[corruption](path)
    with pytest.raises(ValueError, match=f"{path}.* fails its checksum: the model file was modified"):
        llmdual.load(path, backend)


def test_a_file_written_before_checksums_loads_with_a_warning(tiny, backend, tmp_path):
    weights = llmdual.init_weights(tiny, seed=2)
    metadata = {"format": "llmdual/1", "task": "lm", "config": tiny.to_json()}
    save_file(weights, tmp_path / "old.safetensors", metadata=metadata)
    with pytest.warns(UserWarning, match=r"old.safetensors has no checksum \(a llmdual/1 model file, from before "
                                         r"checksums were required\): its tensors and metadata are not verified"):
        model = llmdual.load(tmp_path / "old.safetensors", backend)
    assert all(np.array_equal(weights[n], w) for n, w in llmdual.get_weights(model).items())


def strip_checksum(path) -> None:
    edit_header(path, lambda header: header["__metadata__"].pop("sha256"))


def test_a_model_file_without_its_checksum_is_refused(tiny, tmp_path):
    """Files are written as llmdual/2, which always carries its checksum: deleting it does not switch it off."""
    path = llmdual.save(llmdual.build(tiny, "numpy", seed=1), tmp_path / "m.safetensors")
    assert json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])[
        "__metadata__"]["format"] == "llmdual/2"
    strip_checksum(path)
    with pytest.raises(ValueError, match=f"^{path} has no checksum: a llmdual/2 model file must carry one"):
        llmdual.load(path, "numpy")


@pytest.mark.parametrize("backend", backends("lora"))
def test_a_lora_file_without_its_checksum_is_refused(tiny, backend, tmp_path):
    model = llmdual.build(tiny, backend)
    llmdual.add_lora(model, rank=2)
    path = llmdual.save_lora(model, tmp_path / "adapters.safetensors")
    strip_checksum(path)
    with pytest.raises(ValueError, match=f"^{path} has no checksum: a llmdual-lora/1 LoRA adapter file must carry"):
        llmdual.load_lora(llmdual.build(tiny, backend), path)


# 2. Optimizer state: checksummed, and checked by name, shape and dtype before it reaches the optimizer.

RESUME = """
import numpy as np, llmdual
from llmdual.core.recipe import TrainConfig
def get_batch(step):
    tokens = np.random.default_rng(step).integers(0, 256, (4, 9))
    return tokens[:, :-1], tokens[:, 1:]
model = llmdual.build(llmdual.Config.preset("tiny"), {backend!r})
llmdual.train(model, get_batch, TrainConfig(steps=4, batch_size=4, warmup_steps=0, progress=False), resume={folder!r})
"""


@TRAINING_BACKENDS
def test_resuming_with_a_wrong_shaped_moment_fails_cleanly(backend, tmp_path):
    """In a subprocess: a wrong-shaped moment used to corrupt PyTorch's heap (SIGSEGV); now a ValueError, exit 1."""
    optim = run_state(backend, tmp_path).with_suffix(".optim.safetensors")
    moments = read_optimizer_state(optim)
    moments["m.wte.weight"] = moments["m.wte.weight"][:10]
    write_optimizer_state(optim, moments)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run([sys.executable, "-c", RESUME.format(backend=backend, folder=str(tmp_path))],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "ValueError" in done.stderr
    assert "does not fit this lm model: m.wte.weight: shape (10, 64), expected (256, 64)" in done.stderr


@TRAINING_BACKENDS
@pytest.mark.parametrize("problem, edit, message", [
    ("larger", lambda m: m.update({"v.ln_f.bias": np.zeros(65, np.float32)}), r"v.ln_f.bias: shape \(65,\), expected"),
    ("float64", lambda m: m.update({"v.ln_f.bias": m["v.ln_f.bias"].astype(np.float64)}),
     "v.ln_f.bias: dtype float64, expected float32"),
    ("missing", lambda m: m.pop("v.ln_f.bias"), "missing v.ln_f.bias"),
    ("unexpected", lambda m: m.update({"m.extra": np.zeros(1, np.float32)}), "unexpected m.extra"),
])
def test_bad_moments_never_reach_the_optimizer(tiny, backend, problem, edit, message):
    """``load_moments`` checks every moment first: a bad last entry leaves the optimizer untouched."""
    module = importlib.import_module(f"{info(backend).package}.train")
    model = llmdual.build(tiny, backend)
    optimizer = module.make_optimizer(model, train_config())
    state = {name: np.ones_like(value) for name, value in module.moments(optimizer, model).items()}
    edit(state)
    with pytest.raises(ValueError, match=f"optimizer state does not fit this lm model: .*{message}"):
        module.load_moments(optimizer, model, state, 3)
    assert all(not value.any() for value in module.moments(optimizer, model).values())


@TRAINING_BACKENDS
def test_a_modified_optimizer_state_is_refused(backend, tmp_path):
    optim = run_state(backend, tmp_path).with_suffix(".optim.safetensors")
    flip_byte(optim)
    model = llmdual.build(llmdual.Config.preset("tiny"), backend)
    with pytest.raises(ValueError, match=f"{optim}.* fails its checksum: the optimizer state was modified"):
        llmdual.train(model, get_batch, train_config(steps=4), resume=tmp_path)


@TRAINING_BACKENDS
@pytest.mark.parametrize("written", ["without its checksum", "without any metadata"])
def test_optimizer_state_without_its_checksum_is_refused(backend, tmp_path, written):
    """A run resumed from unverified moments once went from loss 4.15 to 35,283: the checksum is required."""
    optim = run_state(backend, tmp_path).with_suffix(".optim.safetensors")
    if written == "without its checksum":
        strip_checksum(optim)
    else:
        save_file(read_optimizer_state(optim), optim)
    model = llmdual.build(llmdual.Config.preset("tiny"), backend)
    message = "has no checksum: a llmdual-optimizer/1 optimizer state must carry one" if written == \
        "without its checksum" else "is not an llmdual optimizer state: format None"
    with pytest.raises(ValueError, match=f"^{optim} {message}"):
        llmdual.train(model, get_batch, train_config(steps=3), resume=tmp_path)


@TRAINING_BACKENDS
def test_resuming_with_fewer_steps_than_the_run_state_is_refused(backend, tmp_path):
    prefix = run_state(backend, tmp_path)
    model = llmdual.build(llmdual.Config.preset("tiny"), backend)
    before = llmdual.get_weights(model)
    with pytest.raises(ValueError, match=f"^run state {prefix} is at step 2; TrainConfig.steps=1 must be at least 2"):
        llmdual.train(model, get_batch, train_config(steps=1), resume=tmp_path)
    assert all(np.array_equal(before[n], w) for n, w in llmdual.get_weights(model).items())  # nothing loaded
    assert len(llmdual.train(model, get_batch, train_config(steps=2), resume=tmp_path).loss) == 2  # done: a no-op


# 3. get_weights returns copies.

@TRAINING_BACKENDS
def test_a_weight_snapshot_does_not_follow_training(tiny, backend):
    model = llmdual.build(tiny, backend, seed=0)
    snapshot = llmdual.get_weights(model)
    copy = {name: value.copy() for name, value in snapshot.items()}
    backend_package(backend).trainer(model, train_config()).step(get_batch(0))
    assert all(np.array_equal(snapshot[name], copy[name]) for name in copy), "the snapshot changed with training"
    after = llmdual.get_weights(model)
    assert not np.array_equal(after["h.0.attn.c_attn.weight"], copy["h.0.attn.c_attn.weight"])
    assert not np.array_equal(after["ln_f.bias"], copy["ln_f.bias"])


# 4. Atomic writes: fsynced file and folder, nothing left on failure, errors naming the user's path.

def test_writes_fsync_the_file_and_its_folder(tiny, backend, tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real(fd))[1])
    llmdual.save(llmdual.build(tiny, backend), tmp_path / "m.safetensors")
    assert [stat.S_ISREG(m) for m in synced] == [True, False] and stat.S_ISDIR(synced[1])


@pytest.mark.parametrize("error_type", [OSError, ValueError])
def test_a_failed_write_leaves_nothing_and_names_the_path(tiny, backend, tmp_path, monkeypatch, error_type):
    """The writer's error mentions the hidden temporary file; the error raised names the user's path instead."""
    def explode(tensors, tmp, metadata):
        Path(tmp).write_bytes(b"partial")
        raise OSError(28, "No space left on device", tmp) if error_type is OSError else ValueError(f"bad {tmp}")

    monkeypatch.setattr(io, "save_file", explode)
    target = tmp_path / "m.safetensors"
    with pytest.raises(error_type, match=f"cannot write {target}: ") as raised:
        llmdual.save(llmdual.build(tiny, backend), target)
    assert ".tmp" not in str(raised.value) and "m.safetensors." not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


# 5. checkpoint_dir is checked when training starts.

class Batches:
    """``get_batch`` that records the steps asked for."""

    def __init__(self):
        self.asked: list[int] = []

    def __call__(self, step: int):
        self.asked.append(step)
        return get_batch(step)


@TRAINING_BACKENDS
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_unusable_checkpoint_dir_fails_before_step_0(tiny, backend, tmp_path, where):
    (tmp_path / "file").write_text("not a folder")
    folder = tmp_path / "file" if where == "a file" else tmp_path / "file" / "runs"
    batches = Batches()
    with pytest.raises(ValueError, match=f"TrainConfig.checkpoint_dir '{folder}' is not a writable folder"):
        llmdual.train(llmdual.build(tiny, backend), batches, train_config(checkpoint_dir=str(folder)))
    assert batches.asked == []


@TRAINING_BACKENDS
def test_an_unwritable_checkpoint_dir_fails_before_step_0(tiny, backend, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(training.tempfile, "TemporaryFile", refuse)
    batches = Batches()
    with pytest.raises(ValueError, match="is not a writable folder: Permission denied"):
        llmdual.train(llmdual.build(tiny, backend), batches, train_config(checkpoint_dir=str(tmp_path)))
    assert batches.asked == []


@TRAINING_BACKENDS
def test_the_checkpoint_dir_is_created_before_step_0(tiny, backend, tmp_path):
    def failing(step):
        raise RuntimeError("no data")

    folder = tmp_path / "runs" / "a"
    with pytest.raises(RuntimeError, match="no data"):
        llmdual.train(llmdual.build(tiny, backend), failing, train_config(checkpoint_dir=str(folder)))
    assert folder.is_dir()


# 6. Model file and run state are distinct names.

@TRAINING_BACKENDS
def test_model_file_and_run_state_are_named_apart(tiny, backend, tmp_path):
    assert not [name for name in vars(training) if "checkpoint" in name and callable(getattr(training, name))]
    prefix = run_state(backend, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-000002.json", "step-000002.optim.safetensors", "step-000002.safetensors"]
    assert llmdual.load(prefix.with_suffix(".safetensors"), backend).task == "lm"  # its model file
    model = llmdual.build(tiny, backend)
    with pytest.raises(FileNotFoundError, match="no run state"):
        llmdual.train(model, get_batch, train_config(), resume=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no model file at"):
        llmdual.load(tmp_path / "absent.safetensors", backend)
