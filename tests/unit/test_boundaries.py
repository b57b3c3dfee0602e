"""The package boundaries that keep the code simple to test and safe to change (issue 13;
docs/design/overview.md), checked by reading every module's imports with `ast`.

* The calculation graph and the rule rendering (iptables and nftables) are pure: neither they
  nor anything they import (transitively, within the project) imports a module that does I/O.
* The kernel package's text modules (parsing and formatting iptables-save, ipset and nft text,
  and planning nft transactions) are pure too: they reach no I/O module, and no kernel module
  but each other.
* Only `calico.felix.kernel` touches the kernel: no other Felix module runs commands, imports
  pyroute2 or names /proc/sys.
* The two-process plumbing (`calico.felix.driver`) never imports the daemon.
* Felix never imports Neutron; Neutron (and oslo) are imported only under `calico.openstack`
  and `calico.dhcp` (and the lab's Neutron runner).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Modules that do I/O (processes, sockets, threads, netlink, HTTP, etcd, foreign calls, clocks
# for scheduling): none may be reachable from the pure core.
IO_MODULES = {
    "subprocess", "socket", "select", "selectors", "threading", "multiprocessing", "asyncio",
    "ctypes", "http", "urllib", "urllib3", "requests", "pyroute2", "etcd3gw", "prometheus_client",
    "signal", "tempfile", "shutil", "time", "sched", "queue",
    "importlib",  # (which would import any of these unseen)
}  # fmt: skip
# Submodules of those that only handle text: URLs are split by the configuration's types.
PURE_SUBMODULES = ("urllib.parse",)
PURE_CORE = [
    "calico.felix.calc",
    "calico.felix.dataplane.rendering",  # the package and its modules
    "calico.felix.dataplane.nft_rendering",
    "calico.felix.dataplane.names",
    "calico.felix.dataplane.claims",
]
# The kernel package's pure text modules, beside the drivers that run the commands.
PURE_KERNEL_TEXT = [
    "calico.felix.kernel.iptables_text",
    "calico.felix.kernel.ipset_text",
    "calico.felix.kernel.ipset_plan",
    "calico.felix.kernel.nft_text",
    "calico.felix.kernel.nft_plan",
    "calico.felix.kernel.iptables_plan",
]
# Where a Felix module may start a process or speak netlink: the kernel package, and the
# plumbing that starts the driver process.
KERNEL = "calico.felix.kernel"
PROCESS_STARTERS = {"calico.felix.driver.connection"}
NEUTRON = ("neutron", "neutron_lib", "oslo_config", "oslo_log", "oslo_service", "oslo_db")
NEUTRON_ALLOWED = ("calico.openstack", "calico.dhcp", "calico.lab.neutron")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


@cache
def imports(module: str) -> frozenset[str]:
    """Every module `module` imports (`from a import b` counts a, and a.b if that is a module),
    with relative imports resolved; imports under `if TYPE_CHECKING:` are left out."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            node.body = []  # typing-only imports do nothing at run time
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Name) and node.id == "__import__":
            found.add("importlib")  # the builtin that importlib wraps: an import unseen here
    return frozenset(found)


def _top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


def _ours(name: str) -> bool:
    return name in MODULES


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def reachable(start: str) -> set[str]:
    """`start` and every project module it imports, transitively."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(name for name in imports(module) if _ours(name))
    return seen


def test_the_module_map_is_found() -> None:
    assert {"calico.felix.calc.graph", "calico.felix.kernel.iptables"} <= MODULES.keys()
    assert "calico.common.resources" in imports("calico.felix.calc.graph")


def _io_problems(start: str, kernel_allowed: tuple[str, ...] = ()) -> list[str]:
    """How `start`, or a project module it reaches, imports an I/O module, a kernel module (but
    those allowed) or the etcd client."""
    problems = []
    for module in sorted(reachable(start)):
        names = imports(module)
        bad = {
            name
            for name in names
            if _top(name) in IO_MODULES and not any(_within(name, p) for p in PURE_SUBMODULES)
        }
        bad |= {
            name
            for name in names
            if _ours(name) and _within(name, KERNEL) and name not in kernel_allowed
        }
        bad |= {n for n in names if _within(n, "calico.common.etcd")}
        if bad:
            problems.append(f"{start} -> {module} imports {sorted(bad)}")
    return problems


@pytest.mark.parametrize("root", PURE_CORE)
def test_the_pure_core_reaches_no_io(root: str) -> None:
    starts = [m for m in MODULES if _within(m, root)]
    assert starts, root
    problems = [problem for start in starts for problem in _io_problems(start)]
    assert not problems, "\n".join(sorted(set(problems)))


@pytest.mark.parametrize("module", PURE_KERNEL_TEXT)
def test_the_kernel_text_modules_reach_no_io(module: str) -> None:
    assert module in MODULES, module
    allowed = (KERNEL, *PURE_KERNEL_TEXT)  # (the package's __init__ runs on any import of it)
    problems = _io_problems(module, kernel_allowed=allowed)
    assert not problems, "\n".join(problems)


def test_only_the_kernel_package_touches_the_kernel() -> None:
    problems = []
    for module in MODULES:
        if not _within(module, "calico.felix") or _within(module, KERNEL):
            continue
        names = imports(module)
        if any(_top(n) == "pyroute2" for n in names):
            problems.append(f"{module} imports pyroute2")
        if "subprocess" in names and module not in PROCESS_STARTERS:
            problems.append(f"{module} imports subprocess")
    assert not problems, "\n".join(problems)


def test_no_string_outside_the_kernel_package_names_proc_sys() -> None:
    problems = []
    for module, path in MODULES.items():
        if not _within(module, "calico.felix") or _within(module, KERNEL):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and "/proc/sys" in node.value
                and id(node) not in docstrings
            ):
                problems.append(f"{module}:{node.lineno} names /proc/sys")
    assert not problems, "\n".join(problems)


def test_the_driver_plumbing_never_imports_the_daemon() -> None:
    for module in MODULES:
        if _within(module, "calico.felix.driver"):
            reached = reachable(module)
            assert not {m for m in reached if m in ("calico.felix.daemon", "calico.felix.cli")}


def test_neutron_is_imported_only_by_the_openstack_side() -> None:
    problems = []
    for module in MODULES:
        if any(_within(module, allowed) for allowed in NEUTRON_ALLOWED):
            continue
        bad = {name for name in imports(module) if _top(name) in NEUTRON}
        if bad:
            problems.append(f"{module} imports {sorted(bad)}")
    assert not problems, "\n".join(problems)
    # Felix, in particular, reaches no Neutron module by any path.
    felix = {m for m in MODULES if _within(m, "calico.felix")}
    for module in felix:
        assert not {m for m in reachable(module) if _within(m, "calico.openstack")}, module
