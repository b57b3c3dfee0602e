"""Which nft work runs in the driver's process (libnftables) and which in a child ``nft``.

A listing and a large script go to the command: libnftables keeps what it parsed and cached for
them in the process's heap (docs/benchmarks.md). Only the routing is tested here: nothing is
sent to a kernel (the in-process path runs in a namespace in tests/dataplane/test_nft_table.py).
"""

from __future__ import annotations

import subprocess

import pytest

from calico.felix.kernel import libnftables
from calico.felix.kernel.libnftables import LibNftables, NftCommand


class RecordingRunner:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        self.calls.append((argv, len(input or "")))
        return subprocess.CompletedProcess(argv, 0, stdout='{"nftables": []}', stderr="")


@pytest.fixture
def lib_and_runner() -> tuple[LibNftables, RecordingRunner]:
    if not libnftables.library_available():
        pytest.fail("libnftables is part of the test set-up (Debian's libnftables1)")
    runner = RecordingRunner()
    return LibNftables(command=NftCommand(runner)), runner


def test_a_listing_runs_in_the_command(lib_and_runner: tuple[LibNftables, RecordingRunner]) -> None:
    lib, runner = lib_and_runner
    assert lib.list_json("inet", "felix") == (0, '{"nftables": []}', "")
    assert runner.calls == [(["nft", "-j", "list", "table", "inet", "felix"], 0)]
    lib.close()


def test_a_script_over_the_limit_runs_in_the_command(
    lib_and_runner: tuple[LibNftables, RecordingRunner],
) -> None:
    lib, runner = lib_and_runner
    line = "add element inet felix felix-v4-s { 10.65.0.1 }\n"
    script = line * (libnftables._IN_PROCESS_UP_TO // len(line) + 1)
    assert lib.run(script) == (0, "")
    assert runner.calls == [(["nft", "-f", "-"], len(script))]
    lib.close()
