"""The two backends mirror each other: same files, same classes, same methods, same top-level functions."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "llmdual"
TORCH, KERAS = ROOT / "torch_backend", ROOT / "keras_backend"
# Framework idioms that have no counterpart by design: Keras builds sublayers explicitly and serialises its
# config; PyTorch's forward is Keras' call.
FRAMEWORK_ONLY = {"build", "get_config", "forward", "call"}
# Module-level names one side needs and the other has no use for, each with its reason.
ONE_SIDED = {
    "api.py": {"value_and_grad"},  # Keras runs on three autodiff engines; PyTorch has one (.backward)
    "weights.py": {"variable"},  # PyTorch resolves canonical names with get_parameter; Keras walks its layers
    "export.py": {"Graph"},
    "decode.py": {"compiled"},  # Keras layers called eagerly on TensorFlow cost more than a step's arithmetic  # torch.onnx exports a module: a wrapper fixes the exported signature
    # Training the Keras way (compile/fit) needs a schedule object, an optimizer subclass matching PyTorch's
    # AdamW, the batch as a dict for train_step, a data Sequence and a callback, where PyTorch's explicit loop
    # needs none; only Keras must ask its backend whether a GPU exists.
    "train.py": {"LearningRate", "AdamW", "keras_devices", "step_inputs", "Batches", "StepMonitor"},
}


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
