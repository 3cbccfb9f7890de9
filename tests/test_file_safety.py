"""What llmdual's writers never do to the user's files, and what its loaders say about damaged ones: a folder
export keeps every file it did not write, a file export replaces only a previous export unless told to, a
symlink stays a link, a read-only file is refused as ``cp`` refuses it; model files, LoRA adapters and optimizer
state under random byte flips, truncations and header edits load exactly or fail with one ``ValueError``."""

import json
import os
import shutil
import stat
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmdual
from llmdual.contract import backends, native_formats
from llmdual.core.io import (
    MANIFEST,
    atomic_write_dir,
    read_model_file,
    read_optimizer_state,
    write_checked,
    write_model_file,
    write_optimizer_state,
)
from llmdual.core.lora_spec import LORA_FORMAT, init_lora, lora_spec
from llmdual.lora import read_lora

FOLDER_FORMATS = [f for f, (_, spec) in native_formats().items() if spec.kind == "folder"]
FILE_FORMATS = [f for f, (_, spec) in native_formats().items() if spec.kind == "file"]
USER_FILES = {"notes.txt": "mine", ".bashrc": "export X=1", "data/keep.csv": "a,b"}


def put_user_files(folder: Path) -> None:
    for name, text in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def user_files_kept(folder: Path) -> bool:
    return all((folder / name).read_text() == text for name, text in USER_FILES.items())


def tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# 1. Folder exports: refused into a folder of the user's files, and never delete what they did not write.

def fill(files: dict[str, str]):
    """A writer for ``atomic_write_dir`` that writes ``files`` (relative name -> text)."""
    def write(tmp: str) -> None:
        for name, text in files.items():
            Path(tmp, name).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp, name).write_text(text)
    return write


def test_a_folder_write_replaces_only_what_the_previous_export_wrote(tmp_path):
    out = tmp_path / "export"
    atomic_write_dir(out, fill({"model.bin": "1", "variables/v.index": "1", "old.txt": "1"}), "fmt")
    put_user_files(out)
    atomic_write_dir(out, fill({"model.bin": "2", "variables/v.index": "2"}), "fmt")
    assert user_files_kept(out)
    assert (out / "model.bin").read_text() == "2" and not (out / "old.txt").exists()  # its own stale file goes
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest == {"format": "fmt", "files": ["model.bin", "variables/v.index"], "folders": ["variables"]}
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary left beside it


def test_a_manifest_cannot_name_files_outside_its_folder(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("mine")
    out = tmp_path / "export"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"format": "fmt", "files": ["../outside.txt"], "folders": []}))
    with pytest.raises(FileExistsError, match="not an llmdual export"):  # an untrusted manifest is no manifest
        atomic_write_dir(out, fill({"a": "1"}), "fmt")
    atomic_write_dir(out, fill({"a": "1"}), "fmt", overwrite=True)
    assert outside.read_text() == "mine"


@pytest.mark.parametrize("format", FOLDER_FORMATS)
def test_an_export_into_a_folder_of_user_files_is_refused(models, tmp_path, format):
    out = tmp_path / "home"
    out.mkdir()
    put_user_files(out)
    with pytest.raises(FileExistsError, match=f"^cannot write the {format} export to folder {out}: it holds files "
                                              r"that are not an llmdual export; pass overwrite=True"):
        llmdual.export(models[native_formats()[format][0], "lm"], out, format=format)
    assert tree(out) == [".bashrc", "data", "data/keep.csv", "notes.txt"]


def test_an_export_with_overwrite_keeps_the_user_files(models, tmp_path):
    """One real folder export (the merge itself is framework-free: the first test above covers re-exports)."""
    format = FOLDER_FORMATS[0]
    name = native_formats()[format][0]
    out = tmp_path / "home"
    out.mkdir()
    put_user_files(out)
    result = llmdual.export(models[name, "lm"], out, format=format, overwrite=True)
    assert user_files_kept(out)
    written = json.loads((out / MANIFEST).read_text())["files"]
    assert not set(written) & set(USER_FILES) and result.file_bytes == sum((out / f).stat().st_size for f in written)
    artefact = llmdual.native.load(out, format)
    ids = np.random.default_rng(0).integers(0, artefact.config.vocab_size, (1, 5))
    np.testing.assert_allclose(artefact.logits(ids), llmdual.forward(models[name, "lm"], ids), atol=1e-4, rtol=0)
    for other in FOLDER_FORMATS[1:]:  # a previous export of another format is not replaced without overwrite
        with pytest.raises(FileExistsError, match=f"it holds a {format} export; pass overwrite=True"):
            llmdual.export(models[native_formats()[other][0], "lm"], out, format=other)
        assert user_files_kept(out) and llmdual.native.load(out, format).format == format


def test_a_file_export_replaces_only_a_previous_export(models, tmp_path):
    (tmp_path / "m.onnx").write_text("my notes")
    name = backends("onnx")[0]
    with pytest.raises(FileExistsError, match="not an llmdual ONNX export is there; pass overwrite=True"):
        llmdual.export(models[name, "lm"], tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_text() == "my notes"
    for format in FILE_FORMATS:
        path = tmp_path / f"m{native_formats()[format][1].suffix}"
        path.write_text("my notes")
        with pytest.raises(FileExistsError, match=f"a file that is not a {format} export is there"):
            llmdual.export(models[native_formats()[format][0], "lm"], path, format=format)
        assert path.read_text() == "my notes"


# 2. Files: a symlink stays a link, a file's mode stays, a read-only file is refused.

def test_save_writes_through_a_symlink(tiny, tmp_path):
    target = tmp_path / "real" / "m.safetensors"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "m.safetensors"
    link.symlink_to(target)
    llmdual.save(llmdual.build(tiny, "numpy", seed=3), link)
    assert link.is_symlink() and Path(os.readlink(link)) == target
    assert read_model_file(target)[0] == tiny
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.safetensors"]  # written beside the target


def test_save_keeps_the_mode_of_the_file_it_replaces(tiny, tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_text("old")
    path.chmod(0o640)
    llmdual.save(llmdual.build(tiny, "numpy"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def save_as_nobody(model, path: Path) -> str:
    """``llmdual.save`` in a forked child that drops to uid 65534 first (when run as root, who may write anything,
    as ``cp`` does); the ``PermissionError`` it raised, or "" if it saved."""
    if os.geteuid() != 0:
        try:
            llmdual.save(model, path)
        except PermissionError as err:
            return str(err)
        return ""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, exit without running the parent's cleanup
        code = 1
        try:
            os.close(read)
            os.setuid(65534)
            try:
                llmdual.save(model, path)
                code = 0
            except PermissionError as err:
                os.write(write, str(err).encode())
                code = 3
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) in (0, 3), f"the child failed (status {status}): {message}"
    return message


def test_save_refuses_a_read_only_file(tiny):
    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # reachable by uid 65534, unlike pytest's private tmp_path
    try:
        folder.chmod(0o777)  # the folder is writable: only the file's own mode protects it
        path = folder / "m.safetensors"
        path.write_text("precious")
        path.chmod(0o444)
        message = save_as_nobody(llmdual.build(tiny, "numpy"), path)
        assert message == f"cannot write {path}: the file is read-only (mode 0444); make it writable or write elsewhere"
        assert path.read_text() == "precious" and stat.S_IMODE(path.stat().st_mode) == 0o444
        assert sorted(p.name for p in folder.iterdir()) == ["m.safetensors"]
    finally:
        shutil.rmtree(folder)


# 3. Loaders under random damage: an exact load or one ValueError, never another exception or a wrong load.

def lora_file(path: Path, config: llmdual.Config) -> None:
    spec = lora_spec(config, 4, 8.0, "c_attn")
    metadata = {"format": LORA_FORMAT, "lora": spec.to_json(), "config": config.to_json(), "task": "lm"}
    write_checked(path, init_lora(config, spec, 0, "normal"), metadata)


def optimizer_file(path: Path, config: llmdual.Config) -> None:
    weights = llmdual.init_weights(config, seed=4)
    write_optimizer_state(path, {f"{key}.{name}": value for name, value in weights.items() for key in "mv"})


WRITERS = {
    "model file": (lambda path, config: write_model_file(path, config, "lm", llmdual.init_weights(config, seed=5)),
                   read_model_file),
    "LoRA adapter file": (lora_file, read_lora),
    "optimizer state": (optimizer_file, read_optimizer_state),
}


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, tuple[bytes, object]]:
    """Each kind's bytes (of a small config: the loaders' work is the same at any size) and what it loads to."""
    config = llmdual.Config.preset("tiny").replace(n_layers=1, vocab_size=32, d_model=16, d_ff=32, n_heads=2,
                                                   max_seq_len=16)
    folder = tmp_path_factory.mktemp("originals")
    found = {}
    for kind, (write, read) in WRITERS.items():
        write(folder / "f.safetensors", config)
        found[kind] = ((folder / "f.safetensors").read_bytes(), read(folder / "f.safetensors"))
    return found


def same(a: object, b: object) -> bool:
    """Equal values: arrays bit for bit (dtype and shape too), containers entry by entry."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and a.tobytes() == b.tobytes())
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def check_loader(kind: str, data: bytes, original: tuple[bytes, object]) -> None:
    """Load ``data`` as a ``kind``: it must load exactly to the original, or fail with one ValueError naming the
    file; it must not warn (an llmdual/2 file is always verified), and the file must be left as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "f.safetensors")
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                loaded = WRITERS[kind][1](path)
        except ValueError as err:
            assert str(path) in str(err) and "\n" not in str(err), str(err)
        else:
            assert same(loaded, original[1]), f"{kind}: changed bytes loaded to different values"
        assert path.read_bytes() == data


BOUNDED = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("kind", WRITERS)
@BOUNDED
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=3))
def test_byte_flips_load_exactly_or_fail_with_a_value_error(originals, kind, flips):
    raw = bytearray(originals[kind][0])
    for where, mask in flips:
        raw[int(where * len(raw))] ^= mask
    check_loader(kind, bytes(raw), originals[kind])


@pytest.mark.parametrize("kind", WRITERS)
@BOUNDED
@given(keep=st.floats(0, 1, exclude_max=True))
def test_truncations_fail_with_a_value_error(originals, kind, keep):
    raw = originals[kind][0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "f.safetensors")
        path.write_bytes(raw[:int(keep * len(raw))])
        with pytest.raises(ValueError, match=f"^{path} "):
            WRITERS[kind][1](path)


def header_of(raw: bytes) -> tuple[dict, bytes]:
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def with_header(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


@st.composite
def header_edits(draw, raw: bytes) -> bytes:
    """``raw`` with one edit of its JSON header: a metadata entry removed or rewritten, or a tensor's dtype,
    shape or offsets changed."""
    header, body = header_of(raw)
    metadata = header["__metadata__"]
    tensor = header[draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))]
    edit = draw(st.sampled_from(["drop metadata", "rewrite metadata", "dtype", "shape", "offsets"]))
    if edit == "drop metadata":
        del metadata[draw(st.sampled_from(sorted(metadata)))]
    elif edit == "rewrite metadata":
        key = draw(st.sampled_from(sorted(metadata)))
        metadata[key] = draw(st.text(max_size=20).filter(lambda text: text != metadata[key]))
    elif edit == "dtype":
        tensor["dtype"] = draw(st.sampled_from(["F16", "BF16", "F64", "I32", "U8", "BOOL"]))
    elif edit == "shape":
        tensor["shape"] = draw(st.lists(st.integers(0, 64), max_size=3).filter(lambda s: s != tensor["shape"]))
    else:
        shift = draw(st.integers(-64, 64).filter(bool))
        tensor["data_offsets"] = [max(0, o + shift) for o in tensor["data_offsets"]]
    return with_header(header, body)


@pytest.mark.parametrize("kind", WRITERS)
@BOUNDED
@given(data=st.data())
def test_header_edits_load_exactly_or_fail_with_a_value_error(originals, kind, data):
    check_loader(kind, data.draw(header_edits(originals[kind][0])), originals[kind])
