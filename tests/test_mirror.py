"""The two backends mirror each other: same files, same classes, same methods, same top-level functions, and
the contract's functions with the same signatures as ``llmdual.contract.Backend`` in both packages."""

import ast
import importlib
import inspect
from pathlib import Path

import numpy as np
import pytest

import llmdual
from llmdual.contract import Backend
from llmdual.contract import backend as backend_package

ROOT = Path(__file__).resolve().parents[1] / "llmdual"
TORCH, KERAS = ROOT / "torch_backend", ROOT / "keras_backend"
# Framework idioms that have no counterpart by design: Keras builds sublayers explicitly and serialises its
# config; PyTorch's forward is Keras' call.
FRAMEWORK_ONLY = {"build", "get_config", "forward", "call"}
# Module-level names one side needs and the other has no use for, each a framework idiom with its reason.
ONE_SIDED = {
    "api.py": {"value_and_grad"},  # Keras runs on three autodiff engines; PyTorch has one (.backward)
    "weights.py": {"variable"},  # PyTorch resolves canonical names with get_parameter; Keras walks its layers
    "export.py": {"Graph"},  # torch.onnx exports a module: a wrapper fixes the exported signature
    "lora.py": {"LoraLinear"},  # Keras' Dense has LoRA built in (enable_lora); PyTorch's nn.Linear has none
    # Training the Keras way (compile/fit) needs a schedule object, an optimizer subclass matching PyTorch's
    # AdamW, the batch as the dict train_step takes, a data Sequence and a callback, where PyTorch's explicit
    # loop sets the learning rate itself and uses torch.optim.AdamW as is.
    "train.py": {"LearningRate", "AdamW", "step_inputs", "Batches", "StepMonitor"},
}
CONTRACT = sorted(name for name, value in vars(Backend).items() if inspect.isfunction(value) and name[0] != "_")


def outline(path: Path) -> dict[str, list[str]]:
    """Top-level classes (with their methods) and functions of a module, in source order."""
    tree = ast.parse(path.read_text())
    found: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = [n.name for n in node.body if isinstance(n, ast.FunctionDef) and n.name not in FRAMEWORK_ONLY]
            found[node.name] = [m for m in methods if not m.startswith("_")]  # private helpers may differ
        elif isinstance(node, ast.FunctionDef):
            found[node.name] = []
    return found


def test_same_files():
    assert sorted(p.name for p in TORCH.glob("*.py")) == sorted(p.name for p in KERAS.glob("*.py"))


@pytest.mark.parametrize("name", sorted(p.name for p in TORCH.glob("*.py") if p.name != "__init__.py"))
def test_same_classes_and_methods(name):
    allowed = ONE_SIDED.get(name, set())
    shared = [
        {k: v for k, v in outline(root / name).items() if not k.startswith("_") and k not in allowed}
        for root in (TORCH, KERAS)
    ]
    assert list(shared[0]) == list(shared[1]), f"{name}: classes/functions differ or are out of order"
    for cls, methods in shared[0].items():
        assert methods == shared[1][cls], f"{name}: {cls} methods differ"


def test_outline_sees_a_difference(tmp_path):
    """The comparison can fail: a method missing on one side changes the outline."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("class A:\n    def f(self): pass\n    def g(self): pass\n")
    b.write_text("class A:\n    def f(self): pass\n")
    assert outline(a) != outline(b)


def parameters(fn) -> list[tuple[str, str, object]]:
    """A callable's parameters as (name, kind, default): what callers depend on; annotations name framework types."""
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]


def mismatches(expected: list, actual: list, label: str) -> list[str]:
    """Why two parameter lists differ, naming ``label`` and each differing parameter; empty if they agree."""
    if expected == actual:
        return []
    differing = [f"{e} vs {a}" for e, a in zip(expected, actual) if e != a]
    extra = f" ({len(expected)} vs {len(actual)} parameters)" if len(expected) != len(actual) else ""
    return [f"{label}: {'; '.join(differing)}{extra}"]


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_signatures_match_the_protocol(name):
    """Each backend package's contract function takes the Protocol method's parameters (minus ``self``)."""
    expected = parameters(getattr(Backend, name))[1:]
    problems = []
    for backend in ("torch", "keras"):
        problems += mismatches(expected, parameters(getattr(backend_package(backend), name)), f"{backend}.{name}")
    assert not problems, problems


def test_packages_export_the_whole_contract():
    for backend in ("torch", "keras"):
        package = backend_package(backend)
        assert set(CONTRACT) | {"NAME"} <= set(package.__all__), f"{backend}: {set(CONTRACT) - set(package.__all__)}"
        assert package.NAME == backend


def native(backend: str, module: str, name: str):
    """A class or function of one backend's module, e.g. ``native("torch", "train", "Trainer")``."""
    return getattr(importlib.import_module(f"llmdual.{backend}_backend.{module}"), name)


@pytest.mark.parametrize("module, cls, method", [("train", "Trainer", "__init__"), ("train", "Trainer", "step"),
                                                 ("decode", "Decoder", "__init__")])
def test_classes_take_the_same_arguments(module, cls, method):
    """``Trainer(model, cfg, optimizer=None, start=0).step(batch)`` and ``Decoder`` are called alike on both sides."""
    torch_params, keras_params = (parameters(getattr(native(b, module, cls), method)) for b in ("torch", "keras"))
    assert not mismatches(torch_params, keras_params, f"{cls}.{method}")


@pytest.mark.parametrize("backend", ["torch", "keras"])
def test_trainer_step_matches_the_protocol(backend):
    from llmdual.contract import Trainer

    expected = parameters(Trainer.step)
    assert not mismatches(expected, parameters(native(backend, "train", "Trainer").step), f"{backend} Trainer.step")


def test_a_mismatched_signature_is_detected():
    """The comparison can fail: a renamed parameter, a changed default or a missing one each show up."""

    def reference(model, cfg, optimizer=None, start=0): ...

    def renamed(model, config, optimizer=None, start=0): ...

    def other_default(model, cfg, optimizer=None, start=1): ...

    def shorter(model, cfg, optimizer=None): ...

    for fn in (renamed, other_default, shorter):
        found = mismatches(parameters(reference), parameters(fn), fn.__name__)
        assert found and fn.__name__ in found[0]


def test_attention_dropout_acts_on_the_probabilities(tiny, backend):
    """Both sides drop attention probabilities (``attn_dropout``) at ``Config.dropout``, in training only."""
    model = llmdual.build(tiny.replace(dropout=0.5), backend)
    attn = model.h[0].attn
    rate = attn.attn_dropout.p if backend == "torch" else attn.attn_dropout.rate
    assert rate == 0.5
    x = np.random.default_rng(0).standard_normal((2, 8, tiny.d_model)).astype(np.float32)
    if backend == "torch":
        import torch

        attn.resid_dropout.p = 0.0  # only the probabilities' dropout can make training differ from inference
        attn.train()
        with torch.no_grad():
            train_out, eval_out = attn(torch.from_numpy(x))[0].numpy(), attn.eval()(torch.from_numpy(x))[0].numpy()
    else:
        attn.resid_dropout.rate = 0.0
        train_out = np.asarray(attn(x, training=True)[0])
        eval_out = np.asarray(attn(x, training=False)[0])
    assert not np.allclose(train_out, eval_out)
