"""Issue 19's rule, now and later: every child a daemon of the project starts dies with it.

A process started and waited for (`subprocess.run`) ends with its call; one started and left
running (`Popen`, `fork`, `spawn*`, asyncio's `create_subprocess_*`) must be one of the known
children below, each of whose programs ties its life to its parent's
(`calico.common.children`). A new long-lived child anywhere under src/calico (but the test lab)
fails this test until it is added here with its proof; so does a Python helper module run by a
daemon (`sys.executable -m calico.<module>`) that does not ask for the parent-death signal.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "calico"

# Module that starts a child and leaves it running -> how that child dies with its parent.
KNOWN_CHILDREN = {
    "felix/driver/connection.py": "the dataplane driver (felix/driver/main.py: die_with_parent)",
    "dhcp/dnsmasq_process.py": "the dnsmasq keeper (dhcp/keeper.py: set_parent_death_signal)",
    "dhcp/keeper.py": "dnsmasq, which the keeper stops when its parent-death signal comes",
    # Not left running: a restore fed its input a piece at a time through a pipe, waited for
    # within the same call (in a `finally`, as subprocess.run does; killed first on an error).
    "felix/kernel/commands.py": "none outlives its call (run_writing_pieces waits for it)",
}
# The programs of those children (and of helpers run with `-m`) that must ask for the signal.
CHILD_PROGRAMS = ("felix/driver/main.py", "dhcp/keeper.py")
TIES = {"die_with_parent", "set_parent_death_signal"}
LONG_LIVED = {
    ("subprocess", "Popen"),
    ("os", "fork"),
    ("os", "forkpty"),
    ("os", "posix_spawn"),
    ("os", "posix_spawnp"),
    ("asyncio", "create_subprocess_exec"),
    ("asyncio", "create_subprocess_shell"),
}


def _modules() -> list[tuple[str, ast.Module]]:
    return [
        (str(path.relative_to(SRC)), ast.parse(path.read_text(), str(path)))
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).parts[0] != "lab"  # the test lab starts processes for tests
    ]


def _calls(tree: ast.Module) -> set[tuple[str, str]]:
    """(module, function) of every call written as `module.function(...)` or `function(...)`
    after `from module import function`, plus `os.spawn*`."""
    imported = {
        alias.asname or alias.name: (node.module or "", alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            found.add((func.value.id, func.attr))
        elif isinstance(func, ast.Name) and func.id in imported:
            found.add(imported[func.id])
    return {
        (module, name)
        for module, name in found
        if (module, name) in LONG_LIVED or (module == "os" and name.startswith("spawn"))
    }


def _names_called(tree: ast.Module) -> set[str]:
    return {
        node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
    }


def test_every_long_lived_child_is_a_known_one() -> None:
    starters = {path for path, tree in _modules() if _calls(tree)}
    unknown = starters - KNOWN_CHILDREN.keys()
    assert not unknown, (
        f"{sorted(unknown)} start a process and leave it running: make it die with its parent "
        "(calico.common.children) and add it to KNOWN_CHILDREN with how it does"
    )
    assert starters == set(KNOWN_CHILDREN), f"stale entries: {set(KNOWN_CHILDREN) - starters}"


def test_each_child_program_asks_for_the_parent_death_signal() -> None:
    trees = dict(_modules())
    helpers = {
        path
        for path, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.List)
        and len(node.elts) >= 3
        and isinstance(node.elts[1], ast.Constant)
        and node.elts[1].value == "-m"
        and isinstance(node.elts[2], ast.Constant)
        and str(node.elts[2].value).startswith("calico.")
        for path in [str(node.elts[2].value).removeprefix("calico.").replace(".", "/") + ".py"]
    }
    assert "bgp/check.py" in helpers  # the scan finds calico-bgp's `bird -p` helper
    for program in sorted({*CHILD_PROGRAMS, *helpers}):
        # A package run with -m: its __main__ and the main module it hands over to.
        package = program.removesuffix(".py")
        files = [program] if program in trees else [f"{package}/__main__.py", f"{package}/main.py"]
        assert all(f in trees for f in files), f"{program}: {files} not found"
        assert set().union(*(_names_called(trees[f]) for f in files)) & TIES, (
            f"{program} runs as a daemon's child but never asks for the parent-death signal"
        )


def test_the_scan_sees_a_new_child() -> None:
    """The scan itself can fail: each way of starting a process is recognised."""
    for source in (
        "import subprocess\nsubprocess.Popen(['x'])",
        "from subprocess import Popen\nPopen(['x'])",
        "import os\nos.fork()",
        "import os\nos.spawnv(0, 'x', [])",
        "import asyncio\nasyncio.create_subprocess_exec('x')",
    ):
        assert _calls(ast.parse(source)), source
    assert not _calls(ast.parse("import subprocess\nsubprocess.run(['x'])"))
