"""docs/calicoctl.md: every command has its help block, the blocks hold the parser's current
help text (a test fails when they are stale: `python -m calico.ctl.docs --write`), and every
example command in it is one the parser accepts."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from calico.ctl import docs
from calico.ctl.cli import build_parser
from calico.ctl.errors import Invalid

DOC = docs.REPO_ROOT / docs.DOC_PATH


def test_help_blocks_are_up_to_date_and_complete() -> None:
    assert docs.problems(docs.REPO_ROOT) == [], f"run `{docs.REGENERATE}`"
    assert docs.main(["--check"]) == 0


def test_every_command_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    names = [path for path, _ in docs.commands()]
    assert {"get", "create", "apply", "replace", "delete", "config set", "node status"} <= set(
        names
    )
    assert {"endpoint show", "explain", "diags"} <= set(names)
    for name in names:
        assert f"<!-- calicoctl help: {name} -->" in text
        if name:
            assert f"$ calicoctl {name}" in text, f"no example of `calicoctl {name}`"


def test_staleness_and_missing_blocks_are_caught(tmp_path: Path) -> None:
    target = tmp_path / docs.DOC_PATH
    target.parent.mkdir(parents=True)
    text = DOC.read_text(encoding="utf-8")
    target.write_text(text.replace("is the operator's tool", "is the operators' tool"))
    assert docs.main(["--check", "--root", str(tmp_path)]) == 0  # prose is free
    stale = text.replace("--etcd-api {v2,v3}", "--etcd-api {v2}", 1)
    target.write_text(stale)
    assert docs.main(["--check", "--root", str(tmp_path)]) == 1
    assert docs.main(["--write", "--root", str(tmp_path)]) == 0
    assert target.read_text() == text
    start = text.index("<!-- calicoctl help: diags -->")
    end = text.index("<!-- end calicoctl help -->", start) + len("<!-- end calicoctl help -->")
    target.write_text(text[:start] + text[end:])
    assert any("`diags`" in p for p in docs.problems(tmp_path))
    target.write_text(text.replace("help: diags -->", "help: frobnicate -->"))
    assert any("unknown command" in p for p in docs.problems(tmp_path))
    target.unlink()
    assert docs.main(["--check", "--root", str(tmp_path)]) == 1


def _examples() -> list[str]:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    return [line[2:] for line in lines if line.startswith("$ calicoctl ")]


@pytest.mark.parametrize("example", _examples())
def test_every_example_parses(example: str) -> None:
    command = example.split("|", maxsplit=1)[0].split(">", maxsplit=1)[0]
    argv = shlex.split(command, comments=True)[1:]
    try:
        args = build_parser().parse_args(argv)
    except Invalid as e:
        pytest.fail(f"{example}: {e}")
    assert args.command is not None
