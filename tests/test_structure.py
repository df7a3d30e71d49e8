"""The shape of the code base: size budgets, one-way dependencies, no import
cycles, and a README that names what exists."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tinygrad2", "nets", "optimizers", "experiments", "benchmarks")
ENGINE_CORE = ("tensor", "primitives", "functional", "backend")
ENGINE_CORE_BUDGET = 1500  # lines, as tinygrad's CI keeps its own core in check
ENGINE_MODULE_BUDGET = 600


def lines(path):
    return len(path.read_text().splitlines())


def modules():
    """{dotted module name: path} for every module of the four packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name, path, known):
    """The modules of ours that ``name`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            # `from pkg import module` imports that module; `from pkg import name`, the package
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph():
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_engine_core_stays_within_its_line_budget():
    total = sum(lines(ROOT / "tinygrad2" / f"{m}.py") for m in ENGINE_CORE)
    assert total <= ENGINE_CORE_BUDGET, (
        f"the engine core ({', '.join(ENGINE_CORE)}) has {total} lines, over its budget of "
        f"{ENGINE_CORE_BUDGET}: move code out of the core or make it shorter"
    )


def test_no_engine_module_is_over_600_lines():
    over = {p.name: lines(p) for p in (ROOT / "tinygrad2").glob("*.py") if lines(p) > ENGINE_MODULE_BUDGET}
    assert not over, f"engine modules over {ENGINE_MODULE_BUDGET} lines: {over}"


def test_no_import_cycle_but_tensor_and_primitives():
    found = [c for c in cycles(import_graph()) if c != {"tinygrad2.tensor", "tinygrad2.primitives"}]
    assert not found, f"import cycles: {[sorted(c) for c in found]}"


def test_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


@pytest.mark.parametrize("package, forbidden", [
    ("tinygrad2", {"nets", "optimizers", "experiments"}),
    ("nets", {"optimizers", "experiments"}),
    ("optimizers", {"nets", "experiments"}),
])
def test_dependencies_point_one_way(package, forbidden):
    bad = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items() if name.split(".")[0] == package
        for target in targets if target.split(".")[0] in forbidden
    )
    assert not bad, f"experiments -> optimizers, nets -> tinygrad2 only: {bad}"


def test_readme_counts_the_primitives_it_has():
    from tinygrad2 import PRIMITIVES

    readme = (ROOT / "README.md").read_text()
    stated = re.search(r"(\d+) primitives: ([a-z0-9_,\s]+?)\.", readme)
    assert stated, "the README no longer states its primitive count and list"
    listed = {p.strip() for p in stated.group(2).replace(" and ", ", ").split(",")}
    assert int(stated.group(1)) == len(PRIMITIVES) and listed == set(PRIMITIVES), (
        f"README says {stated.group(1)} primitives, the registry has {len(PRIMITIVES)}; "
        f"missing from the README: {sorted(set(PRIMITIVES) - listed)}, not in the registry: "
        f"{sorted(listed - set(PRIMITIVES))}"
    )


def tree_paths(tree):
    """The paths a README tree block names: a top-level folder per unindented
    line, then the folders and files listed under it (indented lines)."""
    paths, top = [], None
    for line in tree.splitlines():
        if not line.strip():
            continue
        indent, first = len(line) - len(line.lstrip()), line.split()[0]
        if indent == 0:
            top = first.rstrip("/")
            paths.append(top)
        elif top and re.fullmatch(r"[\w.]+/?,?", first) and (first.endswith("/") or ".py" in first):
            # "check.py, verify.py ..." names two files
            names = [first] + re.findall(r"^\s*\S+\s+([\w.]+\.py)\b", line)
            paths += [f"{top}/{n.strip(',').rstrip('/')}" for n in names]
    return paths


def test_readme_tree_names_only_what_exists():
    readme = (ROOT / "README.md").read_text()
    tree = readme.split("## How it is built", 1)[1].split("```")[1]
    paths = tree_paths(tree)
    assert len(paths) > 10, f"the README's tree lists too little to check: {paths}"
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"the README's tree names what the repo lacks: {missing}"


def test_readme_cites_no_file_the_repo_lacks():
    readme = (ROOT / "README.md").read_text()
    cited = set(re.findall(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:md|py|toml|sh|png))\b", readme))
    assert "docs/RESULTS.md" in cited, "the citation scan found nothing it should"
    missing = sorted(c for c in cited if not (ROOT / c).exists() and not list(ROOT.rglob(c)))
    assert not missing, f"the README cites files the repo lacks: {missing}"


def test_tree_reader_sees_nested_entries():
    tree = "pkg/      x\n  a.py    y\n  sub/    z\n  b.py, c.py  w\nother/  v\n"
    assert tree_paths(tree) == ["pkg", "pkg/a.py", "pkg/sub", "pkg/b.py", "pkg/c.py", "other"]


def test_every_name_imported_from_our_modules_exists():
    # function-level imports run late: a moved name would only fail when that code runs
    import importlib

    known, missing = modules(), []
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = here[: len(here) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            if source not in known:
                continue
            module = importlib.import_module(source)
            for alias in node.names:
                if not hasattr(module, alias.name) and f"{source}.{alias.name}" not in known:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {source} has no {alias.name}")
    assert not missing, missing
