"""Documents derived from the parameter table: the example felix.cfg and docs/config-params.md.

Both are pure functions of `params.PARAMS`, so they cannot drift from what the loader does.
`python -m calico.felix.config.docs --write` (or `make docs`) regenerates the checked-in copies
and `--check` fails (exit status 1) when either copy is stale.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from calico.common import datamodel_v1
from calico.felix.config.loader import DEFAULT_CONFIG_FILE, ENV_PREFIX
from calico.felix.config.params import PARAMS, Param

REPO_ROOT = Path(__file__).resolve().parents[4]
EXAMPLE_PATH = Path("packaging/felix.cfg.example")
MARKDOWN_PATH = Path("docs/config-params.md")
REGENERATE = "python -m calico.felix.config.docs --write"

WRAP = 90
# How each computed default is worked out (default=None in the table).
COMPUTED: dict[str, str] = {
    "FelixHostname": "socket.gethostname()",
    "EtcdEndpoints": "EtcdScheme://EtcdAddr",
}


def env_var(name: str) -> str:
    """The environment variable that sets a parameter (or one of its aliases)."""
    return ENV_PREFIX + name.upper()


def computed_marker(param: Param) -> str:
    """The placeholder written where a computed default's value would go."""
    return f"<computed: {COMPUTED.get(param.name, 'at start-up')}>"


def _sections() -> dict[str, list[Param]]:
    """Parameters grouped by section, sections in order of first appearance."""
    grouped: dict[str, list[Param]] = {}
    for param in PARAMS:
        grouped.setdefault(param.section, []).append(param)
    return grouped


def _aliased() -> list[Param]:
    return [p for p in PARAMS if p.aliases]


def _host_key() -> str:
    return f"{datamodel_v1.HOST_DIR}/<FelixHostname>/config/<Name>"


def _global_key() -> str:
    return f"{datamodel_v1.global_config_dir()}/<Name>"


# -- Example felix.cfg -------------------------------------------------------------------------


def _comment(text: str, first: str = "# ", rest: str | None = None) -> list[str]:
    """`text` wrapped into comment lines of at most WRAP columns."""
    return textwrap.wrap(
        text,
        width=WRAP,
        initial_indent=first,
        subsequent_indent=first if rest is None else rest,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _example_header() -> list[str]:
    lines = [
        f"# Example Felix configuration file ({DEFAULT_CONFIG_FILE}).",
        "#",
        "# Generated from src/calico/felix/config/params.py; do not edit by hand, run",
        f"#   {REGENERATE}",
        "#",
    ]
    lines += _comment(
        "The file is in ini format. Section names are ignored: a parameter may go in any "
        "section (this example puts them all in [global]). Parameter names are "
        "case-insensitive, and an empty value counts as not set. Felix reads "
        f"{DEFAULT_CONFIG_FILE} unless started with -c/--config-file PATH; a missing file is "
        "fine, a malformed one is a configuration error."
    )
    lines += ["#"]
    lines += _comment("Each parameter is taken from the first of these sources that sets it:")
    lines += [
        f"#   1. the environment: {ENV_PREFIX}<NAME IN UPPER CASE>, e.g. "
        f"{env_var('MetadataPort')}=8775",
        "#   2. this file",
        f"#   3. etcd, for this host: {_host_key()}",
        f"#   4. etcd, for all hosts: {_global_key()}",
        "#   5. the built-in default",
    ]
    lines += _comment(
        "Local-only parameters are never read from etcd: set them in the environment or in "
        "this file. A bad value is an error (calico-felix exits with status 2), never a silent "
        "fall-through to a lower-priority source."
    )
    for param in _aliased():
        spellings = ", ".join(param.aliases)
        lines += _comment(f"{param.name} may also be spelled {spellings}.")
    lines += ["#"]
    lines += _comment(
        "Everything below is commented out, so this file as shipped sets nothing. Each "
        "parameter ends with a commented-out assignment of its built-in default: uncomment it "
        "and change the value to override the default. A default shown as <computed: ...> is "
        "worked out when Felix starts; replace the whole placeholder with a real value."
    )
    return lines


def _example_param(param: Param) -> list[str]:
    lines = [f"# {param.name}"]
    lines += _comment(param.help, first="#   ")
    lines += _comment(f"Values: {param.type.describe()}", first="#   ", rest="#     ")
    if param.local_only:
        lines += ["#   Local-only: yes (environment or config file only, never etcd)"]
    else:
        lines += ["#   Local-only: no (may also be set in etcd)"]
    env = ", ".join(env_var(s) for s in (param.name, *param.aliases))
    lines += [f"#   Environment: {env}"]
    if param.aliases:
        lines += [f"#   Aliases: {', '.join(param.aliases)}"]
    if param.default is None:
        lines += [f"# {param.name} = {computed_marker(param)}"]
    else:
        lines += [f"# {param.name} = {param.default}".rstrip()]
    return lines


def example_config() -> str:
    """The text of packaging/felix.cfg.example: every parameter, commented out at its default."""
    lines = [*_example_header(), "", "[global]"]
    rule = "# " + "-" * (WRAP - 2)
    for section, params in _sections().items():
        lines += ["", rule, f"# {section}", rule]
        for param in params:
            lines += ["", *_example_param(param)]
    return "\n".join(lines) + "\n"


# -- docs/config-params.md ---------------------------------------------------------------------


def _cell(text: str) -> str:
    """Text made safe for one cell of a markdown table."""
    for raw, safe in (("\\", "\\\\"), ("|", "\\|"), ("<", "&lt;"), ("\n", " ")):
        text = text.replace(raw, safe)
    return text


def _code(text: str) -> str:
    return f"`{text}`"


def default_cell(param: Param) -> str:
    """The Default column of a parameter's row."""
    if param.default is None:
        return f"computed: {_code(COMPUTED.get(param.name, 'at start-up'))}"
    if param.default == "":
        return "*(empty)*"
    return _code(param.default)


def _markdown_row(param: Param) -> str:
    name = _code(param.name)
    if param.aliases:
        name += " (alias " + ", ".join(_code(a) for a in param.aliases) + ")"
    env = " or ".join(_code(env_var(s)) for s in (param.name, *param.aliases))
    cells = [
        name,
        default_cell(param),
        _cell(param.type.describe()),
        env,
        "yes" if param.local_only else "no",
        _cell(param.help),
    ]
    return "| " + " | ".join(cells) + " |"


def _markdown_intro() -> list[str]:
    lines = [
        "# Felix configuration parameters",
        "",
        "<!-- Generated from src/calico/felix/config/params.py by "
        f"`{REGENERATE}`; do not edit by hand. -->",
        "",
        "Felix takes each parameter from the first of these sources that sets it:",
        "",
        f"1. the environment variable `{ENV_PREFIX}<NAME>`, the parameter name in upper case "
        f"(for example `{env_var('MetadataPort')}`);",
        f"2. the config file, `{DEFAULT_CONFIG_FILE}` unless `calico-felix -c/--config-file "
        "PATH` names another: ini format, section names ignored, parameter names "
        "case-insensitive, a missing file is fine (see "
        f"[`{EXAMPLE_PATH.as_posix()}`](../{EXAMPLE_PATH.as_posix()}));",
        f"3. etcd, for this host: `{_host_key()}`;",
        f"4. etcd, for all hosts: `{_global_key()}`;",
        "5. the built-in default.",
        "",
        "**Local-only** parameters are never read from etcd: set them in the environment or the "
        "config file. An empty value counts as not set. Several parameters accept `none` "
        '(any case) to mean "not set" or "disabled", as their Values column says.',
        "",
        "A bad value is never skipped in favour of a lower-priority source: the first source "
        "that sets a parameter decides it, and if its value does not parse Felix lists every "
        "problem and exits with status 2 (a restart will not cure bad configuration). "
        "`calico-felix --show-config` prints the resolved configuration, with the source of "
        "each value, as JSON.",
    ]
    for param in _aliased():
        aliases = ", ".join(_code(a) for a in param.aliases)
        envs = ", ".join(_code(env_var(a)) for a in param.aliases)
        lines += [
            "",
            f"{aliases} is accepted as an alias of {_code(param.name)} wherever that parameter "
            f"may be set (environment {envs}).",
        ]
    return lines


def params_markdown() -> str:
    """The text of docs/config-params.md: one table per section."""
    lines = _markdown_intro()
    header = "| Parameter | Default | Values | Env var | Local-only | Meaning |"
    for section, params in _sections().items():
        lines += ["", f"## {section}", "", header, "|---|---|---|---|---|---|"]
        lines += [_markdown_row(p) for p in params]
    return "\n".join(lines) + "\n"


# -- Command line ------------------------------------------------------------------------------


def generated() -> dict[Path, str]:
    """Each generated file (relative to the repository root) and its up-to-date content."""
    return {EXAMPLE_PATH: example_config(), MARKDOWN_PATH: params_markdown()}


def stale_files(root: Path) -> list[Path]:
    """The generated files under `root` that are missing or differ from the table."""
    stale = []
    for rel, text in generated().items():
        path = root / rel
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != text:
            stale.append(rel)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m calico.felix.config.docs",
        description="Generate packaging/felix.cfg.example and docs/config-params.md from the "
        "Felix parameter table.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="(re)write both files")
    mode.add_argument(
        "--check", action="store_true", help="exit 1 if either file is missing or stale"
    )
    parser.add_argument(
        "--root", type=Path, default=REPO_ROOT, help=f"repository root (default {REPO_ROOT})"
    )
    args = parser.parse_args(argv)
    root: Path = args.root

    if args.check:
        stale = stale_files(root)
        for rel in stale:
            print(f"{rel.as_posix()} is stale: run `{REGENERATE}`", file=sys.stderr)
        return 1 if stale else 0

    for rel, text in generated().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
