"""The tree is the architecture: which package may import which (README, Layout).

Every ``import`` in the product, lazy ones inside functions included, is read with ``ast`` and
sorted into layers. An arrow that runs the wrong way fails here, naming the file and the line.
``python tests/unit/test_layout.py`` prints the edge counts between layers.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("bpf", "collector", "writers", "tracecap")

#: Layer of a module, by its dotted name (longest prefix wins).
LAYERS = {
    "bpf": "bpf",
    "collector": "collector",
    "writers": "writers",
    "tracecap": "contract",
    "tracecap.frontend": "frontend",
    "tracecap.tools": "frontend",
    "tracecap.cli": "cli",
}

#: Which layers each layer may import (its own always). The collector is started as a process
#: by the front end, never imported; writers and the contract never see the kernel side.
ALLOWED = {
    "bpf": set(),
    "contract": set(),
    "collector": {"bpf", "contract"},
    "writers": {"contract"},
    "frontend": {"contract", "writers"},
    "cli": {"contract", "frontend", "writers", "collector", "bpf"},
}


def layer_of(module: str) -> str | None:
    best = None
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, layer)
    return best[1] if best else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, absolute, with its line (``from x import y`` gives x.y
    as well as x, since y may be a submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; use the full name")
            base = node.module or ""
            out.append((node.lineno, base))
            out.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return out


def edges() -> list[tuple[str, int, str, str, str]]:
    """(file, line, imported module, from layer, to layer) for every import of our packages."""
    found = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = layer_of(module_name(path))
            assert source is not None, path
            for line, target in imports_of(path):
                dest = layer_of(target)
                if dest is not None:
                    found.append((str(path.relative_to(ROOT)), line, target, source, dest))
    return found


def test_every_import_runs_the_allowed_way() -> None:
    wrong = [
        f"{file}:{line}: {src} imports {target} ({dst})"
        for file, line, target, src, dst in edges()
        if dst != src and dst not in ALLOWED[src]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_layers_are_all_used() -> None:
    """A rule about a layer that does not exist (a renamed package) would pass vacuously."""
    seen = {layer_of(module_name(path)) for pkg in PRODUCT for path in (ROOT / pkg).rglob("*.py")}
    assert seen == set(ALLOWED)


def test_a_wrong_arrow_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from collector import service\n")
    assert (2, "collector.service") in imports_of(bad)
    assert layer_of("collector.service") not in ALLOWED["writers"]
    assert layer_of("tracecap.frontend.supervise") == "frontend"
    assert layer_of("tracecap.bus") == "contract"


if __name__ == "__main__":
    counts = Counter((src, dst) for *_, src, dst in edges() if src != dst)
    for (src, dst), n in sorted(counts.items()):
        print(f"{src:>9} -> {dst:<9} {n:3d} imports")
    test_every_import_runs_the_allowed_way()
    print("no import runs the wrong way", file=sys.stderr)
