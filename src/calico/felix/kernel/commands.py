"""Running dataplane commands (iptables-restore, ipset, ...) somewhere.

The dataplane drivers never call :mod:`subprocess` themselves; they are handed a
:class:`CommandRunner`. That keeps them testable (a fake runner records the calls and scripts
the answers) and lets the tests aim a real driver at a throwaway network namespace.

- :class:`LocalRunner` runs argv as is, in the current network namespace. Real Felix uses it:
  Felix itself runs inside the namespace it programs.
- :class:`NetnsRunner` prefixes ``ip netns exec <ns>`` so every kernel command lands inside a
  named namespace (tests, demos), never in the root namespace.

Runners never raise on a non-zero exit status: the caller inspects ``returncode`` and
``stderr``, because for tools like iptables-restore the failure text is the interesting part.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class CommandRunner(Protocol):
    """Runs one command to completion, with optional stdin, capturing text stdout/stderr."""

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv; never raises for a non-zero exit status (check ``returncode``)."""
        ...


class LocalRunner:
    """Runs commands in the current process's network namespace."""

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, input=input, capture_output=True, text=True, check=False)

    def __repr__(self) -> str:
        return "LocalRunner()"


class CommandFailed(RuntimeError):
    """A command run for its output could not run, timed out or exited non-zero."""


def run_for_output(argv: Sequence[str], timeout: float) -> str:
    """The stdout of a command that must succeed within `timeout` seconds (diagnostics);
    CommandFailed says why it did not."""
    try:
        proc = subprocess.run(
            list(argv), check=False, capture_output=True, text=True, errors="replace",
            timeout=timeout,
        )  # fmt: skip
    except FileNotFoundError:
        raise CommandFailed(f"{argv[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"{' '.join(argv)}: no answer within {timeout:.0f} s") from None
    except OSError as e:
        raise CommandFailed(f"{' '.join(argv)}: {e}") from None
    if proc.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)} exited with status {proc.returncode}\n{proc.stderr}")
    return proc.stdout


class NetnsRunner:
    """Runs commands inside the named network namespace via ``ip netns exec``."""

    def __init__(self, ns_name: str) -> None:
        if not ns_name:
            # An empty name would make `ip netns exec` fail, but be explicit: never root ns.
            raise ValueError("NetnsRunner needs a namespace name")
        self.ns_name = ns_name

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        full = ["ip", "netns", "exec", self.ns_name, *argv]
        proc = subprocess.run(full, input=input, capture_output=True, text=True, check=False)
        # Report the argv the caller asked for, not the wrapper, so errors read naturally.
        return subprocess.CompletedProcess(argv, proc.returncode, proc.stdout, proc.stderr)

    def __repr__(self) -> str:
        return f"NetnsRunner({self.ns_name!r})"


__all__ = ["CommandFailed", "CommandRunner", "LocalRunner", "NetnsRunner", "run_for_output"]
