"""docs/calicoctl.md's help sections, generated from the argparse parser itself.

The document is written by hand, except the blocks between `<!-- calicoctl help: CMD -->` and
`<!-- end calicoctl help -->`, which hold `calicoctl CMD --help` as the parser prints it (at a
fixed width). `python -m calico.ctl.docs --write` refreshes them; `--check` exits 1 when one is
stale or a command has no block (tests/unit/test_ctl_docs.py runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from calico.ctl.cli import PROG, build_parser

REPO_ROOT = Path(__file__).resolve().parents[3]
DOC_PATH = Path("docs/calicoctl.md")
REGENERATE = "python -m calico.ctl.docs --write"
BLOCK_RE = re.compile(
    r"(<!-- calicoctl help: (?P<command>[a-z ]*) -->\n```text\n)(?P<body>.*?)(```\n"
    r"<!-- end calicoctl help -->)",
    re.DOTALL,
)


def commands(
    parser: argparse.ArgumentParser | None = None, path: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command ("" for calicoctl itself, "get", "config set", ...) and its parser."""
    parser = parser or build_parser()
    yield path, parser
    # argparse has no public way to walk its subcommands.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, f"{path} {name}".strip())


def help_text(command: str) -> str:
    for path, parser in commands():
        if path == command:
            return parser.format_help()
    raise KeyError(command)


def render(text: str) -> str:
    """`text` with every help block holding the current help; KeyError for an unknown one."""

    def block(match: re.Match[str]) -> str:
        return match[1] + help_text(match["command"]) + match[4]

    return BLOCK_RE.sub(block, text)


def missing(text: str) -> list[str]:
    """Commands without a help block."""
    present = {m["command"] for m in BLOCK_RE.finditer(text)}
    return [path or PROG for path, _ in commands() if path not in present]


def problems(root: Path) -> list[str]:
    path = root / DOC_PATH
    if not path.is_file():
        return [f"{DOC_PATH} is missing"]
    text = path.read_text(encoding="utf-8")
    found = [f"{DOC_PATH} has no help block for `{name}`" for name in missing(text)]
    try:
        if render(text) != text:
            found.append(f"{DOC_PATH}'s help text is stale: run `{REGENERATE}`")
    except KeyError as e:
        found.append(f"{DOC_PATH} has a help block for an unknown command {e}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m calico.ctl.docs",
        description=f"Refresh or check the generated help text in {DOC_PATH}.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="refresh the help blocks")
    mode.add_argument("--check", action="store_true", help="exit 1 if any is stale or missing")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    args = parser.parse_args(argv)
    path = args.root / DOC_PATH
    if args.check:
        found = problems(args.root)
        for line in found:
            print(line, file=sys.stderr)
        return 1 if found else 0
    text = path.read_text(encoding="utf-8")
    path.write_text(render(text), encoding="utf-8")
    for name in missing(text):
        print(f"{DOC_PATH}: no help block for `{name}` (add one by hand)", file=sys.stderr)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
