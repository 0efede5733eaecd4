"""The package's layering (docs/design.md section 5): imports go only downward, with no cycle.

Layers, lowest first: the compiled library ``_C`` and the emulated one's loader ``emulate``
(it imports nothing of the package); ``_common`` (shared private pieces); the
strategy packages ``dense``, ``sparse``, ``scan``, ``lowrank`` (each may use ``_common`` and,
without a cycle, a sibling: lowrank's causal path runs on the scan, the scan's quadratic oracle
on the dense one); the layers ``nn``; ``recurrence`` and ``models`` (the ITNet stacks); then the public namespaces and tools
(``functional``, ``reference``, the package itself, ``bench``). Every import counts, including
the ones inside functions, so a lazy import cannot hide a cycle.
"""
import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "itnet_ext")

RANK = {"_C": 0, "_common": 1, "dense": 2, "sparse": 2, "scan": 2, "lowrank": 2, "nn": 3,
        "recurrence": 4, "models": 4, "functional": 5, "reference": 5, "__init__": 6, "bench": 7,
        "data": 1, "distributed": 4, "experiments": 7, "emulate": 0}
STRATEGIES = ("dense", "sparse", "scan", "lowrank")


def _modules():
    """{dotted module name: path} of every .py file of the package."""
    out = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PKG))[:-3]
                name = rel.replace(os.sep, ".")
                out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = \
                    os.path.join(root, f)
    return out


def _imports(name, path, modules):
    """The package modules ``name`` imports (absolute names; ``from x import y`` counts as
    x.y when that is a module, else x)."""
    is_pkg = path.endswith("__init__.py")
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[:len(base) - node.level + 1]
                mod = ".".join(parent + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("itnet_ext"):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                found.add(sub if sub in modules or sub.endswith("._C") else mod)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("itnet_ext"))
    return found - {name}


def _graph():
    modules = _modules()
    return {n: _imports(n, p, modules) for n, p in modules.items()}, modules


def _layer(name):
    parts = name.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_no_import_cycles():
    graph, _ = _graph()
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if m not in graph:
                continue
            if state.get(m) == "open":
                cycle = stack[stack.index(m):] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_imports_name_existing_modules():
    graph, modules = _graph()
    missing = sorted(f"{n} -> {m}" for n, deps in graph.items() for m in deps
                     if m not in modules and not m.endswith("._C"))
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def test_imports_only_go_down():
    graph, _ = _graph()
    bad = []
    for n, deps in sorted(graph.items()):
        a = _layer(n)
        assert a in RANK, f"{n}: a new top-level module; give it a layer in RANK"
        for m in sorted(deps):
            b = _layer(m)
            if a == b:
                continue
            if RANK[b] > RANK[a] or (RANK[b] == RANK[a] and a not in STRATEGIES):
                bad.append(f"{n} -> {m}")
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_strategy_siblings_form_no_cycle():
    graph, _ = _graph()
    edges = {(_layer(n), _layer(m)) for n, deps in graph.items() for m in deps
             if _layer(n) in STRATEGIES and _layer(m) in STRATEGIES and _layer(n) != _layer(m)}
    for a, b in edges:
        assert (b, a) not in edges, f"strategies {a} and {b} import each other"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_has_its_rooms(strategy):
    """op registration, fused entry and float64 oracle side by side (fla's naive.py)."""
    _, modules = _graph()
    for room in ("op", "functional", "naive"):
        assert f"itnet_ext.{strategy}.{room}" in modules, f"itnet_ext/{strategy}/{room}.py"


def test_public_paths_still_import():
    import itnet_ext
    from itnet_ext import functional, reference
    from itnet_ext.nn import feature_maps, neighbors, samplers

    assert functional.integral_transform is itnet_ext.dense.integral_transform
    assert reference.integral_transform is itnet_ext.dense.naive.integral_transform
    assert reference.decay_scan is itnet_ext.scan.naive.decay_scan
    assert samplers.uniform is itnet_ext.sparse.samplers.uniform
    assert neighbors.radius_graph is itnet_ext.sparse.neighbors.radius_graph
    assert feature_maps.PositiveRandomFeatures is itnet_ext.lowrank.feature_maps.PositiveRandomFeatures
    assert itnet_ext.IntegralTransform.from_conv1d(__import__("torch").nn.Conv1d(2, 3, 3)) \
        is not None


def _params(fn, drop=()):
    import inspect

    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()
            if p.name not in drop]


@pytest.mark.parametrize("name", ["integral_transform", "sparse_integral_transform",
                                  "lowrank_integral_transform", "decay_scan"])
def test_fused_entry_and_oracle_take_the_same_arguments(name):
    """Each op's argument list is spelled once per side: the fused entry and its oracle must
    agree on every name, kind and default (the oracle adds only its own evaluation choice,
    chunk_size), and the dense / sparse argument checks take exactly those arguments (they
    are called with the entry's locals())."""
    from itnet_ext import functional, reference
    from itnet_ext._common.kernel_args import check_inputs
    from itnet_ext.sparse.validate import check_sparse_inputs

    fused, oracle = getattr(functional, name), getattr(reference, name)
    extra = {"decay_scan": ("stable",)}.get(name, ())  # a fused-only guard (a value check)
    assert _params(fused, drop=extra) == _params(oracle, drop=("chunk_size",))
    check = {"integral_transform": check_inputs,
             "sparse_integral_transform": check_sparse_inputs}.get(name)
    if check is not None:
        assert _params(check, drop=("check_values", "n_queries")) == _params(fused)


def test_names_come_from_the_compiled_table():
    import torch

    from itnet_ext._common import names

    assert names.ACTIVATIONS == tuple(torch.ops.itnet.enum_names("activation"))
    assert names.FEATURE_MAPS == tuple(torch.ops.itnet.enum_names("feature_map"))
    assert set(names.ACTIVATIONS) >= {"relu", "gelu", "silu"}
    with pytest.raises(RuntimeError, match="kind"):
        torch.ops.itnet.enum_names("nonsense")
