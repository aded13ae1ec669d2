"""Device cleanliness. Most machines here have no GPU, so a static check guards the CUDA path on
every machine: each tensor the package creates names its device, and every `.numpy()` follows a
`.cpu()` in the same expression. The CUDA build itself is checked by test_cuda.py where CUDA exists."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "opposites"
CREATORS = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "eye", "linspace",
            "rand", "randn", "randint", "randperm"}


def _chain_has_cpu(node: ast.AST) -> bool:
    """Does the expression `node` (the receiver of .numpy()) contain a .cpu() call?"""
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "cpu":
            return True
        node = node.func if isinstance(node, ast.Call) else node.value
    return False


def device_problems(source: str, name: str = "<string>") -> list[str]:
    """Tensor creations without device=, and .numpy() without .cpu(), as 'file:line: what'."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        f = node.func
        if isinstance(f.value, ast.Name) and f.value.id == "torch" and f.attr in CREATORS:
            if not any(k.arg == "device" for k in node.keywords):
                out.append(f"{name}:{node.lineno}: torch.{f.attr}(...) without device=")
        if f.attr == "numpy" and not _chain_has_cpu(f.value):
            out.append(f"{name}:{node.lineno}: .numpy() without .cpu() before it")
    return out


def test_the_check_catches_what_crashed_on_cuda():
    bad = "ids = torch.tensor([1, 2])\nx = t.flatten().double().numpy()\nm = torch.zeros(3, 4, dtype=torch.bool)\n"
    assert len(device_problems(bad)) == 3
    good = "ids = torch.tensor([1], device=d)\nx = t.flatten().cpu().double().numpy()\n"
    assert device_problems(good) == []


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_package_is_device_clean(path):
    assert device_problems(path.read_text(), str(path.relative_to(SRC))) == []
