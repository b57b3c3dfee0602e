"""The command runner's pipes-free path (kernel/commands.py, run_through_files): the same
answers as ``subprocess.run(..., capture_output=True, text=True)``, for big inputs and outputs
too; input written a piece at a time as it is made (run_writing_pieces), or started and
collected later (start_writing_pieces); and the heap setting both daemons make at start
(common/heap.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from calico.common.heap import fix_mmap_threshold
from calico.felix.kernel.commands import (
    Finished,
    LocalRunner,
    NetnsRunner,
    PiecewiseRunner,
    StartingRunner,
    StreamingRunner,
    output_lines,
    run_through_files,
    run_with_pieces,
    run_writing_pieces,
    start_with_pieces,
    start_writing_pieces,
)


def _piped(argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=input, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("argv", "input"),
    [
        (["cat"], "add a 10.65.0.1\nadd a 10.65.0.2\n"),
        (["cat"], ""),
        (["true"], None),  # (no input: stdin is inherited, as with pipes)
        (["sh", "-c", "echo out; echo err >&2; exit 3"], None),
        (["sh", "-c", "printf 'a\\r\\nb\\rc'"], None),  # newlines translated as text=True does
        (["sh", "-c", "printf 'caf\\303\\251 \\342\\234\\223'"], None),  # UTF-8 both ways
    ],
)
def test_same_answer_as_pipes(argv: list[str], input: str | None) -> None:
    ours, piped = run_through_files(argv, input), _piped(argv, input)
    assert (ours.args, ours.returncode, ours.stdout, ours.stderr) == (
        piped.args,
        piped.returncode,
        piped.stdout,
        piped.stderr,
    )


def test_input_bigger_than_a_slice_arrives_whole_and_in_order() -> None:
    # Several 1 MB slices, with multi-byte characters throughout (slices are cut in characters).
    text = "".join(f"add s 10.65.{i // 256}.{i % 256} é\n" for i in range(200_000))
    assert len(text) > 3 * (1 << 20)
    proc = run_through_files(["wc", "-c"], text)
    assert proc.returncode == 0
    assert int(proc.stdout) == len(text.encode())
    assert LocalRunner().run(["cat"], text).stdout == text


def test_a_missing_command_raises_as_subprocess_does() -> None:
    with pytest.raises(FileNotFoundError):
        run_through_files(["/nonexistent/calico-no-such-tool"], "x")


def test_the_heap_setting_is_accepted_by_glibc() -> None:
    # Debian's C library is glibc: mallopt must accept it (False would mean no effect).
    assert fix_mmap_threshold() is True


@pytest.mark.parametrize(
    "script",
    [
        "echo one; echo two",
        "printf 'no newline at the end'",
        "printf 'a\\r\\nb\\rc\\n'",
        "echo out; echo err >&2; exit 4",
        "true",
    ],
)
def test_streamed_lines_are_the_text_runs_lines(script: str) -> None:
    argv = ["sh", "-c", script]
    whole = _piped(argv)
    with LocalRunner().stream(argv) as streamed:
        lines = list(streamed.lines)
    assert (streamed.returncode, "".join(lines), streamed.stderr) == (
        whole.returncode,
        whole.stdout,
        whole.stderr,
    )
    assert lines == whole.stdout.splitlines(keepends=True)


def test_output_lines_streams_from_real_runners_and_splits_a_fakes_text() -> None:
    class Fake:  # a test double with run() only
        def run(
            self, argv: list[str], input: str | None = None
        ) -> subprocess.CompletedProcess[str]:
            return subprocess.CompletedProcess(argv, 0, "x\ny\n", "")

    assert isinstance(LocalRunner(), StreamingRunner)
    assert not isinstance(Fake(), StreamingRunner)
    with output_lines(Fake(), ["anything"]) as streamed:
        assert list(streamed.lines) == ["x\n", "y\n"]
    with output_lines(LocalRunner(), ["seq", "3"]) as streamed:
        assert list(streamed.lines) == ["1\n", "2\n", "3\n"]


# -- input written a piece at a time ---------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "pieces"),
    [
        (["cat"], ["add a 10.65.0.1\n", "add a 10.65.0.2\n", "COMMIT\n"]),
        (["cat"], []),
        (["sh", "-c", "cat >/dev/null; echo out; echo err >&2; exit 3"], ["x\n"]),
        (["cat"], ["caf\u00e9 ", "\u2713\r\n"]),  # UTF-8, and newlines as text=True reads them
    ],
)
def test_pieces_give_the_same_answer_as_the_joined_text(argv: list[str], pieces: list[str]) -> None:
    ours, piped = run_writing_pieces(argv, iter(pieces)), _piped(argv, "".join(pieces))
    assert (ours.args, ours.returncode, ours.stdout, ours.stderr) == (
        piped.args,
        piped.returncode,
        piped.stdout,
        piped.stderr,
    )


def test_pieces_are_made_while_the_tool_reads() -> None:
    # Far more than a pipe holds (64 KB): the writer must not wait for the tool to finish.
    pieces = (f"add s 10.65.{i // 256}.{i % 256}\n" * 100 for i in range(2_000))
    proc = run_writing_pieces(["wc", "-l"], pieces)
    assert (proc.returncode, int(proc.stdout)) == (0, 200_000)


def test_a_tool_that_stops_reading_reports_its_own_failure() -> None:
    # The tool exits at once: the rest of the input meets a closed pipe, which is not an error
    # of ours; the tool's status and message are what the caller sees.
    pieces = ("x" * 65_536 for _ in range(100))
    proc = run_writing_pieces(["sh", "-c", "echo refused >&2; exit 2"], pieces)
    assert (proc.returncode, proc.stderr) == (2, "refused\n")


def test_a_failure_making_the_input_stops_the_tool_before_it_sees_the_end(tmp_path: Path) -> None:
    # A tool that acts at the end of its input (as ipset and iptables restores do) must never
    # act on an input cut short: it is killed before its stdin closes.
    acted = tmp_path / "acted"

    def pieces() -> Iterator[str]:
        yield "add s 10.65.0.1\n"
        raise RuntimeError("bug while rendering")

    with pytest.raises(RuntimeError, match="bug while rendering"):
        run_writing_pieces(["sh", "-c", f"cat >/dev/null; touch {acted}"], pieces())
    assert not acted.exists()


def test_the_tool_is_killed_before_its_input_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_popen = subprocess.Popen

    class Watched(real_popen):  # type: ignore[valid-type,misc]
        def kill(self) -> None:
            events.append("kill")
            super().kill()

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            close = self.stdin.close

            def closed() -> None:
                events.append("close")
                close()

            self.stdin.close = closed  # type: ignore[method-assign]

    monkeypatch.setattr(subprocess, "Popen", Watched)

    def pieces() -> Iterator[str]:
        yield "x\n"
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        run_writing_pieces(["cat"], pieces())
    assert events == ["kill", "close"]
    # A pipe the tool closed is its own failure, reported as such, not a kill.
    events.clear()
    proc = run_writing_pieces(["true"], ("y" * 65_536 for _ in range(100)))
    assert (proc.returncode, events) == (0, ["close"])


class RunOnly:
    """A test double with run() only: it records each input and answers `stdout`."""

    def __init__(self, stdout: str = "") -> None:
        self.inputs: list[str | None] = []
        self.stdout = stdout

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        self.inputs.append(input)
        return subprocess.CompletedProcess(argv, 0, self.stdout, "")


def test_run_with_pieces_writes_through_real_runners_and_joins_for_fakes() -> None:
    fake = RunOnly()
    assert not isinstance(fake, PiecewiseRunner)
    assert run_with_pieces(fake, ["ipset", "restore"], iter(["a\n", "b\n"])).returncode == 0
    assert fake.inputs == ["a\nb\n"]
    for runner in (LocalRunner(), NetnsRunner("calico-unused")):
        assert isinstance(runner, PiecewiseRunner)
    assert run_with_pieces(LocalRunner(), ["cat"], iter(["a\n", "b\n"])).stdout == "a\nb\n"


def test_a_started_tool_runs_on_after_its_input_and_is_collected_later(tmp_path: Path) -> None:
    # The tool reads all of its input, then works on (an iptables-restore's commit): start
    # returns once the input is written, before the tool ends; wait() gives its answer.
    gate = tmp_path / "gate"
    script = f"wc -l; while [ ! -e {gate} ]; do sleep 0.01; done; echo done >&2; exit 4"
    started = start_writing_pieces(["sh", "-c", script], iter(["a\n", "b\n"]))
    gate.touch()  # (had start waited for the tool to end, this would never have run)
    proc = started.wait()
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (4, "2", "done\n")


def test_a_failure_making_a_started_tools_input_stops_it_before_the_end(tmp_path: Path) -> None:
    acted = tmp_path / "acted"

    def pieces() -> Iterator[str]:
        yield "add s 10.65.0.1\n"
        raise RuntimeError("bug while rendering")

    with pytest.raises(RuntimeError, match="bug while rendering"):
        start_writing_pieces(["sh", "-c", f"cat >/dev/null; touch {acted}"], pieces())
    assert not acted.exists()


def test_start_with_pieces_leaves_real_runners_running_and_runs_fakes_to_the_end() -> None:
    fake = RunOnly(stdout="ok")
    assert not isinstance(fake, StartingRunner)
    started = start_with_pieces(fake, ["iptables-restore"], iter(["a\n", "b\n"]))
    assert isinstance(started, Finished)
    assert fake.inputs == ["a\nb\n"], "run before start returned"
    assert started.wait().stdout == "ok"
    for runner in (LocalRunner(), NetnsRunner("calico-unused")):
        assert isinstance(runner, StartingRunner)
    assert start_with_pieces(LocalRunner(), ["cat"], iter(["a\n"])).wait().stdout == "a\n"
