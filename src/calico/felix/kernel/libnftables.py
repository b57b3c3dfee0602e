"""Two ways to hand nftables one transaction: in-process through libnftables (the library the
``nft`` command and Debian's python3-nftables are built on, loaded with ctypes), or through the
``nft`` command (``nft -f -``) run by a `CommandRunner`.

Both give the same text to the same parser and the kernel one netlink batch per call, so one
script is one atomic transaction either way. libnftables is the fast path: no process start, and
its context keeps nft's cache of the table's chains and sets between calls (measured in
docs/benchmarks.md). It programs the network namespace of the calling process, which is where
Felix's driver runs. The command is for a namespace the caller is not in (tests aim a driver at
a lab namespace through ``ip netns exec``), and the fallback where the library cannot be loaded.

Listings and large scripts go to the command even where the library loads: what libnftables
parses and caches for them (every rule and element of the table for a listing, 224 MB at 1,000
endpoints; 175 MB for a cold start's 6.8 MB script) lands in this process's heap, which glibc
keeps once grown, so a driver that had listed its table once held 365 MB from then on. A child
``nft`` gives its memory back when it exits, and costs the same time for work of that size.

libnftables keeps process-wide state and is not documented as thread safe: one `LibNftables` is
used by the driver's one thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import shutil
from typing import Protocol

from calico.felix.kernel.commands import CommandRunner

log = logging.getLogger(__name__)

NFT = "nft"
LIBRARY = "libnftables.so.1"
_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON (nftables/libnftables.h)
# Scripts longer than this run in the command (see above); a change's script is a few KB.
_IN_PROCESS_UP_TO = 1 << 19


class NftExecutor(Protocol):
    """Runs nft scripts and lists Felix's table."""

    def run(self, script: str) -> tuple[int, str]:
        """Run one script as one transaction: (0 or an error status, error text)."""
        ...

    def list_json(self, family: str, table: str) -> tuple[int, str, str]:
        """``list table`` as JSON: (status, JSON text, error text)."""
        ...

    def check(self, script: str) -> tuple[int, str]:
        """Evaluate a script and have the kernel check it, committing nothing."""
        ...


class NftCommand:
    """``nft -f -`` and ``nft -j list table`` through a CommandRunner."""

    def __init__(self, runner: CommandRunner, binary: str = NFT) -> None:
        self._runner = runner
        self._binary = binary

    def run(self, script: str) -> tuple[int, str]:
        proc = self._runner.run([self._binary, "-f", "-"], input=script)
        return proc.returncode, proc.stderr

    def list_json(self, family: str, table: str) -> tuple[int, str, str]:
        proc = self._runner.run([self._binary, "-j", "list", "table", family, table])
        return proc.returncode, proc.stdout, proc.stderr

    def check(self, script: str) -> tuple[int, str]:
        proc = self._runner.run([self._binary, "--check", "-f", "-"], input=script)
        return proc.returncode, proc.stderr

    def __repr__(self) -> str:
        return f"NftCommand({self._runner!r})"


class LibNftables:
    """One libnftables context in this process's network namespace."""

    def __init__(self, path: str = LIBRARY, command: NftCommand | None = None) -> None:
        """OSError if the library cannot be loaded or a context made. `command`: the ``nft``
        command, for listings and large scripts (see above), and to name the failing lines of
        a refused script (libnftables 1.0.6 prints the first line of a buffer with each error
        instead of the failing one)."""
        lib = ctypes.CDLL(path, use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        for getter in (lib.nft_ctx_get_output_buffer, lib.nft_ctx_get_error_buffer):
            getter.restype = ctypes.c_char_p
            getter.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise OSError("nft_ctx_new failed")
        if lib.nft_ctx_buffer_output(ctx) != 0 or lib.nft_ctx_buffer_error(ctx) != 0:
            lib.nft_ctx_free(ctx)
            raise OSError("cannot buffer libnftables output")
        self._lib = lib
        self._ctx = ctx
        self._command = command
        self._flags = int(lib.nft_ctx_output_get_flags(ctx))

    def _call(self, text: str, json_output: bool) -> tuple[int, str, str]:
        flags = self._flags | _OUTPUT_JSON if json_output else self._flags
        self._lib.nft_ctx_output_set_flags(self._ctx, flags)
        status = int(self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode()))
        out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
        err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    def run(self, script: str) -> tuple[int, str]:
        if self._command is not None and len(script) > _IN_PROCESS_UP_TO:
            return self._command.run(script)
        status, _, err = self._call(script, json_output=False)
        if status != 0 and self._command is not None:
            # Nothing was committed: the command's check reports the same errors with lines.
            checked, detail = self._command.check(script)
            if checked != 0 and detail.strip():
                return status, detail
        return status, err

    def list_json(self, family: str, table: str) -> tuple[int, str, str]:
        if self._command is not None:
            return self._command.list_json(family, table)
        return self._call(f"list table {family} {table}", json_output=True)

    def check(self, script: str) -> tuple[int, str]:
        """A dry run (``nft --check``): evaluated, sent to the kernel, aborted. It also leaves
        this context's cache of the ruleset filled at the current generation, and (on recent
        kernels) the table's chains validated, so that the next real transaction pays for
        neither: the warm-up `NftTable.prepare` runs while the driver is idle."""
        self._lib.nft_ctx_set_dry_run(self._ctx, True)
        try:
            status, _, err = self._call(script, json_output=False)
        finally:
            self._lib.nft_ctx_set_dry_run(self._ctx, False)
        return status, err

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __repr__(self) -> str:
        return "LibNftables()"


def library_available() -> bool:
    return ctypes.util.find_library("nftables") is not None


def local_executor(runner: CommandRunner) -> NftExecutor:
    """libnftables in this process if it loads, else the ``nft`` command through `runner`."""
    # Without the command (libnftables1 installed, nftables not), everything runs in-process.
    command = NftCommand(runner) if shutil.which(NFT) else None
    try:
        return LibNftables(command=command)
    except OSError as e:
        log.warning("libnftables not usable (%s); using the nft command", e)
        return NftCommand(runner)
