"""The shape of the Neutron side and the DHCP agent (docs/openstack.md, "Code layout"): which
modules may import Neutron, no import cycle, the entry points resolve, and the Neutron spellings
copied into calico.openstack.constants agree with neutron_lib."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from calico.openstack import constants

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGES = ("calico.openstack", "calico.dhcp")
NEUTRON_TOP = ("neutron", "neutron_lib", "oslo_config", "oslo_log", "oslo_utils", "oslo_db")

# The modules that must work without Neutron installed: the translation, the etcd layer and the
# election, resync, port-status and schedule logic of the worker, and the whole DHCP agent.
NEUTRON_FREE = (
    "calico.openstack.constants",
    "calico.openstack.translation",
    "calico.openstack.endpoints",
    "calico.openstack.security_groups",
    "calico.openstack.subnets",
    "calico.openstack.store",
    "calico.openstack.election",
    "calico.openstack.resync",
    "calico.openstack.port_status",
    "calico.openstack.background",
    "calico.dhcp.model",
    "calico.dhcp.dnsmasq",
    "calico.dhcp.dnsmasq_process",
    "calico.dhcp.keeper",
    "calico.dhcp.links",
    "calico.dhcp.agent",
)

# The only modules that import Neutron (or oslo): what Neutron loads and what reads its data.
NEUTRON_SIDE = (
    "calico.openstack.plugin",
    "calico.openstack.mech_driver",
    "calico.openstack.neutron_reader",
    "calico.openstack.workers",
    "calico.openstack.config",
    "calico.dhcp.interface",
)


def module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        directory = SRC.joinpath(*package.split("."))
        for path in sorted(directory.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            out[name] = path
    return out


def all_imports(path: Path) -> set[str]:
    """Every module the file imports anywhere (also inside functions); for `from X import Y`,
    both X and X.Y (Y may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_every_module_is_on_one_side() -> None:
    """A new module has to say whether it may import Neutron."""
    assert not set(NEUTRON_FREE) & set(NEUTRON_SIDE)
    assert set(module_files()) == {*NEUTRON_FREE, *NEUTRON_SIDE, *PACKAGES}


def test_no_import_cycle() -> None:
    files = module_files()
    graph = {name: (all_imports(path) & set(files)) - {name} for name, path in files.items()}
    # Depth-first search; a module met again while on the stack closes a cycle.
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
    # And the tangle this layout replaced stays gone: the worker side never imports the hooks.
    assert "calico.openstack.mech_driver" not in set().union(
        *(deps for name, deps in graph.items() if name != "calico.openstack.mech_driver")
    )


def test_neutron_free_modules_import_without_neutron() -> None:
    """Imported in a fresh interpreter, none of them loads Neutron or oslo."""
    code = (
        "import importlib, sys\n"
        f"for name in {list(NEUTRON_FREE)!r}:\n"
        "    importlib.import_module(name)\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {NEUTRON_TOP!r})\n"
        "print(loaded)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.strip() == "[]", proc.stdout


@pytest.mark.parametrize("name", [*NEUTRON_FREE, *PACKAGES])
def test_neutron_free_modules_name_no_neutron(name: str) -> None:
    """Not even inside a function."""
    tops = {module.split(".")[0] for module in all_imports(module_files()[name])}
    assert tops.isdisjoint(NEUTRON_TOP)


def entry_points() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    targets = list(project["scripts"].values())
    for group in project["entry-points"].values():
        targets.extend(group.values())
    return [t for t in targets if t.split(":")[0].startswith(PACKAGES)]


def test_entry_points_name_existing_objects() -> None:
    targets = entry_points()
    assert "calico.openstack.plugin:CalicoPlugin" in targets
    assert "calico.openstack.mech_driver:CalicoMechanismDriver" in targets
    assert "calico.dhcp.agent:main" in targets
    pytest.importorskip("neutron")
    for target in targets:
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), target


def test_neutron_spellings_agree_with_neutron_lib() -> None:
    portbindings = pytest.importorskip("neutron_lib.api.definitions.portbindings")
    n_constants = pytest.importorskip("neutron_lib.constants")
    assert constants.BINDING_HOST == portbindings.HOST_ID
    assert constants.BINDING_VIF_TYPE == portbindings.VIF_TYPE
    assert constants.VIF_TYPE_UNBOUND == portbindings.VIF_TYPE_UNBOUND
    assert constants.VIF_TYPE_BINDING_FAILED == portbindings.VIF_TYPE_BINDING_FAILED
    assert constants.PORT_STATUS_ACTIVE == n_constants.PORT_STATUS_ACTIVE
    assert constants.PORT_STATUS_DOWN == n_constants.PORT_STATUS_DOWN
    assert constants.PORT_STATUS_ERROR == n_constants.PORT_STATUS_ERROR
