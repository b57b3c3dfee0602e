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

import contextlib
import io
import locale
import os
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Protocol, runtime_checkable

_SLICE = 1 << 20  # characters of input encoded at a time


@runtime_checkable
class CommandRunner(Protocol):
    """Runs one command to completion, with optional stdin, capturing text stdout/stderr."""

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv; never raises for a non-zero exit status (check ``returncode``)."""
        ...


@dataclass(frozen=True)
class Streamed:
    """A finished command whose output is read a line at a time (inside the ``with`` block
    that produced it): the whole of a big output is never held as one text."""

    args: list[str]
    returncode: int
    lines: Iterable[str]  # stdout's lines, each with its newline, as text=True decodes them
    stderr: str


@runtime_checkable
class StreamingRunner(CommandRunner, Protocol):
    """A runner that can also hand over a command's output a line at a time."""

    def stream(self, argv: list[str]) -> contextlib.AbstractContextManager[Streamed]:
        """Run argv to completion; its stdout is readable until the context ends."""
        ...


@runtime_checkable
class PiecewiseRunner(CommandRunner, Protocol):
    """A runner that can also take a command's input as pieces of text, each made only as it
    is written (so a big input is never held whole)."""

    def run_pieces(
        self, argv: list[str], pieces: Iterable[str]
    ) -> subprocess.CompletedProcess[str]:
        """Like run(argv, "".join(pieces)), without the joined text."""
        ...


class Started(Protocol):
    """A command whose input is all written, and which may still be running."""

    def wait(self) -> subprocess.CompletedProcess[str]:
        """Wait for it to end (once): its status and output."""
        ...


@runtime_checkable
class StartingRunner(PiecewiseRunner, Protocol):
    """A runner that can also start a command with its input and leave it running."""

    def start_pieces(self, argv: list[str], pieces: Iterable[str]) -> Started:
        """Like run_pieces(argv, pieces), returning once the input is written."""
        ...


@dataclass(frozen=True)
class Finished:
    """A command that was run to its end before it was handed over (the tests' fakes)."""

    result: subprocess.CompletedProcess[str]

    def wait(self) -> subprocess.CompletedProcess[str]:
        return self.result


def start_with_pieces(runner: CommandRunner, argv: list[str], pieces: Iterable[str]) -> Started:
    """Start `argv` with `pieces` as its input, and return once the input is written: the tool
    may still be working (an iptables-restore's kernel commit) when the caller goes on. Runners
    that cannot leave a command running (the tests' fakes) run it to its end first."""
    if isinstance(runner, StartingRunner):
        return runner.start_pieces(argv, pieces)
    return Finished(run_with_pieces(runner, argv, pieces))


def run_with_pieces(
    runner: CommandRunner, argv: list[str], pieces: Iterable[str]
) -> subprocess.CompletedProcess[str]:
    """Run `argv` with `pieces` as its input: written a piece at a time where the runner can
    (the real runners), else joined for run() (the tests' fakes)."""
    if isinstance(runner, PiecewiseRunner):
        return runner.run_pieces(argv, pieces)
    return runner.run(argv, "".join(pieces))


@contextlib.contextmanager
def output_lines(runner: CommandRunner, argv: list[str]) -> Iterator[Streamed]:
    """`argv`'s output a line at a time: streamed where the runner can (the real runners),
    else split from run()'s text (the tests' fakes)."""
    if isinstance(runner, StreamingRunner):
        with runner.stream(argv) as streamed:
            yield streamed
        return
    proc = runner.run(argv)
    yield Streamed(argv, proc.returncode, io.StringIO(proc.stdout), proc.stderr)


def run_through_files(argv: list[str], input: str | None) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, input=input, capture_output=True, text=True)``, with the input and
    the output passed through anonymous in-memory files instead of pipes.

    Why: with pipes, ``communicate`` encodes the whole input at once (a second copy of it) and
    feeds it through a select loop, and gathers the output in chunks before joining and
    decoding them. Here the input is encoded a slice at a time into the file, the tool reads it
    at its own pace, and the output is read in one piece. (The big inputs, the restores', go
    a piece at a time through :func:`run_writing_pieces` instead.) Same text decoding and
    newlines as text=True.
    """
    encoding = locale.getpreferredencoding(False)
    with contextlib.ExitStack() as files:
        out, err = (files.enter_context(_memory_file(name)) for name in ("stdout", "stderr"))
        stdin: IO[bytes] | None = None
        if input is not None:
            stdin = files.enter_context(_memory_file("stdin"))
            for start in range(0, len(input), _SLICE):
                stdin.write(input[start : start + _SLICE].encode(encoding))
            stdin.seek(0)
        proc = subprocess.run(argv, stdin=stdin, stdout=out, stderr=err, check=False)
        return subprocess.CompletedProcess(
            argv, proc.returncode, _read_text(out, encoding), _read_text(err, encoding)
        )


def run_writing_pieces(argv: list[str], pieces: Iterable[str]) -> subprocess.CompletedProcess[str]:
    """Like :func:`run_through_files`, with the input written to the tool's stdin pipe a piece
    at a time, as the pieces are made: the tool reads and works while the rest is still being
    made, and no text is held longer than it takes to write it. (The output still goes to
    memory files: the tool never waits for us to read it, so a full pipe cannot deadlock.)"""
    return start_writing_pieces(argv, pieces).wait()


class _Running:
    """A tool started by start_writing_pieces: its output files live until wait() reads them."""

    def __init__(self, argv: list[str], pieces: Iterable[str]) -> None:
        self._argv = argv
        self._encoding = locale.getpreferredencoding(False)
        with contextlib.ExitStack() as files:  # (closes them if the start fails)
            self._out = files.enter_context(_memory_file("stdout"))
            self._err = files.enter_context(_memory_file("stderr"))
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=self._out, stderr=self._err
            )
            try:
                _write_pieces(self._proc, pieces, self._encoding)
            except BaseException:
                self._proc.wait()  # (killed by _write_pieces)
                raise
            self._files = files.pop_all()

    def wait(self) -> subprocess.CompletedProcess[str]:
        with self._files:
            returncode = self._proc.wait()
            out, err = _read_text(self._out, self._encoding), _read_text(self._err, self._encoding)
        return subprocess.CompletedProcess(self._argv, returncode, out, err)


def start_writing_pieces(argv: list[str], pieces: Iterable[str]) -> Started:
    """:func:`run_writing_pieces` up to the end of the input: the tool may still be running."""
    return _Running(argv, pieces)


def _write_pieces(proc: subprocess.Popen[bytes], pieces: Iterable[str], encoding: str) -> None:
    assert proc.stdin is not None
    try:
        for piece in pieces:
            data = piece.encode(encoding)
            try:
                proc.stdin.write(data)
            except BrokenPipeError:
                break  # the tool stopped reading (it failed): its status and stderr say why
    except BaseException:
        # Before its stdin closes: iptables-restore must never commit an input cut short
        # (ipset applies lines as it reads them: its caller treats all of them as unknown).
        proc.kill()
        raise
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()


@contextlib.contextmanager
def stream_through_files(argv: list[str]) -> Iterator[Streamed]:
    """Like :func:`run_through_files` without input, with stdout read a line at a time from its
    memory file: a refresh's ``iptables-save`` of the filter table is 12 MB at 1,000 endpoints,
    and was the driver's memory peak held whole (twice, while it was decoded)."""
    encoding = locale.getpreferredencoding(False)
    with _memory_file("stdout") as out, _memory_file("stderr") as err:
        proc = subprocess.run(argv, stdout=out, stderr=err, check=False)
        out.seek(0)
        # newline=None: \r\n and \r read as \n, as text=True does. Closing it closes `out`.
        with io.TextIOWrapper(out, encoding=encoding, newline=None) as lines:
            yield Streamed(argv, proc.returncode, lines, _read_text(err, encoding))


def _memory_file(name: str) -> IO[bytes]:
    fd = os.memfd_create(f"calico-{name}")
    try:
        return open(fd, "w+b")  # (the caller closes it, and so the fd)
    except BaseException:
        os.close(fd)
        raise


def _read_text(file: IO[bytes], encoding: str) -> str:
    file.seek(0)
    text = file.read().decode(encoding)
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


class LocalRunner:
    """Runs commands in the current process's network namespace."""

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_through_files(argv, input)

    def run_pieces(
        self, argv: list[str], pieces: Iterable[str]
    ) -> subprocess.CompletedProcess[str]:
        return run_writing_pieces(argv, pieces)

    def start_pieces(self, argv: list[str], pieces: Iterable[str]) -> Started:
        return start_writing_pieces(argv, pieces)

    def stream(self, argv: list[str]) -> contextlib.AbstractContextManager[Streamed]:
        return stream_through_files(argv)

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
        return self._as_asked(argv, run_through_files(self._inside(argv), input))

    def run_pieces(
        self, argv: list[str], pieces: Iterable[str]
    ) -> subprocess.CompletedProcess[str]:
        return self._as_asked(argv, run_writing_pieces(self._inside(argv), pieces))

    def start_pieces(self, argv: list[str], pieces: Iterable[str]) -> Started:
        return _AsAsked(argv, start_writing_pieces(self._inside(argv), pieces))

    @staticmethod
    def _as_asked(
        argv: list[str], proc: subprocess.CompletedProcess[str]
    ) -> subprocess.CompletedProcess[str]:
        # Report the argv the caller asked for, not the wrapper, so errors read naturally.
        return subprocess.CompletedProcess(argv, proc.returncode, proc.stdout, proc.stderr)

    @contextlib.contextmanager
    def stream(self, argv: list[str]) -> Iterator[Streamed]:
        with stream_through_files(self._inside(argv)) as streamed:
            yield Streamed(argv, streamed.returncode, streamed.lines, streamed.stderr)

    def _inside(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns_name, *argv]

    def __repr__(self) -> str:
        return f"NetnsRunner({self.ns_name!r})"


@dataclass(frozen=True)
class _AsAsked:
    """A command started inside a namespace, reported with the argv the caller asked for."""

    argv: list[str]
    started: Started

    def wait(self) -> subprocess.CompletedProcess[str]:
        return NetnsRunner._as_asked(self.argv, self.started.wait())


__all__ = [
    "CommandFailed",
    "CommandRunner",
    "LocalRunner",
    "NetnsRunner",
    "PiecewiseRunner",
    "Streamed",
    "StreamingRunner",
    "output_lines",
    "run_for_output",
    "run_with_pieces",
]
