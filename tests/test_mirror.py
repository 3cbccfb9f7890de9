"""The backend contract, read from the registry: every backend implements each capability protocol it offers
with the protocol's signatures, every protocol method is documented, and backends offering the same capabilities
mirror each other (same files, same classes, same methods, same top-level functions)."""

import ast
import importlib
import inspect
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from conftest import framework_backends

import llmdual
from llmdual.contract import CAPABILITIES, Trainer, backend, backends, info

ROOT = Path(__file__).resolve().parents[1] / "llmdual"
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
# (backend, capability) for every capability each backend offers
OFFERED = [(b, cap) for b in backends() for cap in CAPABILITIES if info(b).offers(cap)]
# Backends offering the same capabilities implement them the same way: their packages mirror each other
MIRRORED = [(a, b) for a, b in combinations(backends(), 2)
            if set(info(a).capabilities.split()) == set(info(b).capabilities.split())]


def folder(name: str) -> Path:
    """A backend's package folder."""
    return ROOT.parent / Path(*info(name).package.split("."))


def methods(protocol: type) -> list[str]:
    """A capability protocol's public methods, in source order."""
    return [name for name, value in vars(protocol).items() if inspect.isfunction(value) and name[0] != "_"]


def outline(path: Path) -> dict[str, list[str]]:
    """Top-level classes (with their methods) and functions of a module, in source order."""
    tree = ast.parse(path.read_text())
    found: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names = [n.name for n in node.body if isinstance(n, ast.FunctionDef) and n.name not in FRAMEWORK_ONLY]
            found[node.name] = [m for m in names if not m.startswith("_")]  # private helpers may differ
        elif isinstance(node, ast.FunctionDef):
            found[node.name] = []
    return found


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


def test_every_backend_offers_forward_and_mirrors_are_found():
    """``forward`` is what makes a backend; the mirror checks below have pairs to compare."""
    assert all(info(b).offers("forward") for b in backends())
    assert MIRRORED, "no two backends offer the same capabilities: nothing is checked for mirroring"


@pytest.mark.parametrize("name, capability", OFFERED)
def test_offered_capabilities_are_implemented_with_the_protocols_signatures(name, capability):
    """Each method of the capability's protocol is a function of the backend package taking the protocol
    method's parameters (minus ``self``), exported in ``__all__``."""
    protocol, _ = CAPABILITIES[capability]
    package = backend(name)
    problems = []
    for method in methods(protocol):
        if method not in package.__all__ or not callable(getattr(package, method, None)):
            problems.append(f"{name}.{method}: missing")
            continue
        expected = parameters(getattr(protocol, method))[1:]
        problems += mismatches(expected, parameters(getattr(package, method)), f"{name}.{method}")
    assert not problems, problems
    assert package.NAME == name


@pytest.mark.parametrize("protocol", sorted({p for p, _ in CAPABILITIES.values()}, key=lambda p: p.__name__),
                         ids=lambda p: p.__name__)
def test_every_protocol_method_is_documented(protocol):
    """Each capability protocol says what it is for, and each of its methods what it does."""
    assert (protocol.__doc__ or "").strip(), protocol.__name__
    assert methods(protocol), f"{protocol.__name__} has no methods"
    undocumented = [m for m in methods(protocol) if not (getattr(protocol, m).__doc__ or "").strip()]
    assert not undocumented, f"{protocol.__name__}: {undocumented}"


@pytest.mark.parametrize("a, b", MIRRORED)
def test_same_files(a, b):
    assert sorted(p.name for p in folder(a).glob("*.py")) == sorted(p.name for p in folder(b).glob("*.py"))


@pytest.mark.parametrize("a, b, name", [(a, b, p.name) for a, b in MIRRORED for p in sorted(folder(a).glob("*.py"))
                                        if p.name != "__init__.py"])
def test_same_classes_and_methods(a, b, name):
    allowed = ONE_SIDED.get(name, set())
    shared = [{k: v for k, v in outline(folder(side) / name).items() if not k.startswith("_") and k not in allowed}
              for side in (a, b)]
    assert list(shared[0]) == list(shared[1]), f"{name}: classes/functions differ or are out of order"
    for cls, names in shared[0].items():
        assert names == shared[1][cls], f"{name}: {cls} methods differ"


def test_outline_sees_a_difference(tmp_path):
    """The comparison can fail: a method missing on one side changes the outline."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("class A:\n    def f(self): pass\n    def g(self): pass\n")
    b.write_text("class A:\n    def f(self): pass\n")
    assert outline(a) != outline(b)


def native(name: str, module: str, attribute: str):
    """A class or function of one backend's module, e.g. ``native("torch", "train", "Trainer")``."""
    return getattr(importlib.import_module(f"{info(name).package}.{module}"), attribute)


@pytest.mark.parametrize("a, b", MIRRORED)
@pytest.mark.parametrize("module, cls, method", [("train", "Trainer", "__init__"), ("train", "Trainer", "step"),
                                                 ("decode", "Decoder", "__init__")])
def test_classes_take_the_same_arguments(a, b, module, cls, method):
    """``Trainer(model, cfg, optimizer=None, start=0).step(batch)`` and ``Decoder`` are called alike on both sides."""
    first, second = (parameters(getattr(native(side, module, cls), method)) for side in (a, b))
    assert not mismatches(first, second, f"{cls}.{method}")


@pytest.mark.parametrize("name", backends("training"))
def test_trainer_step_matches_the_protocol(tiny, name):
    cfg = llmdual.TrainConfig(steps=1, batch_size=2, warmup_steps=0, progress=False)
    trainer = backend(name, "training").trainer(llmdual.build(tiny, name), cfg)
    assert isinstance(trainer, Trainer)
    assert not mismatches(parameters(Trainer.step), parameters(type(trainer).step), f"{name} Trainer.step")


def test_a_mismatched_signature_is_detected():
    """The comparison can fail: a renamed parameter, a changed default or a missing one each show up."""

    def reference(model, cfg, optimizer=None, start=0): ...

    def renamed(model, config, optimizer=None, start=0): ...

    def other_default(model, cfg, optimizer=None, start=1): ...

    def shorter(model, cfg, optimizer=None): ...

    for fn in (renamed, other_default, shorter):
        found = mismatches(parameters(reference), parameters(fn), fn.__name__)
        assert found and fn.__name__ in found[0]


@pytest.mark.parametrize("backend", framework_backends())  # the framework's own dropout layers
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
