"""The example felix.cfg and docs/config-params.md: up to date, complete, and truthful."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from calico.felix.config import docs, loader
from calico.felix.config.loader import Source, read_file, resolve
from calico.felix.config.params import PARAMS

ROOT = docs.REPO_ROOT
REGENERATE = "python -m calico.felix.config.docs --write"
# A commented-out assignment in the example: "# Name = value" (value may be empty).
ASSIGNMENT = re.compile(r"^# (?P<name>[A-Za-z0-9]+) =(?: (?P<value>.*))?$")


def _example_assignments(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = ASSIGNMENT.match(line)
        if m:
            assert m["name"] not in found, f"{m['name']} assigned twice in the example"
            found[m["name"]] = m["value"] or ""
    return found


# -- (a) the checked-in files match the table -----------------------------------------------


@pytest.mark.parametrize(
    ("rel", "generate"),
    [(docs.EXAMPLE_PATH, docs.example_config), (docs.MARKDOWN_PATH, docs.params_markdown)],
    ids=["example", "markdown"],
)
def test_generated_file_is_up_to_date(rel, generate):
    path = ROOT / rel
    assert path.is_file(), f"{rel} is missing: run `{REGENERATE}`"
    assert path.read_text(encoding="utf-8") == generate(), f"{rel} is stale: run `{REGENERATE}`"


def test_repo_root_is_the_project():
    assert (ROOT / "pyproject.toml").is_file()
    assert (ROOT / "src/calico/felix/config/docs.py").is_file()


def test_check_passes_on_the_repository():
    assert docs.main(["--check"]) == 0


def test_write_then_check_and_check_catches_staleness(tmp_path: Path, capsys):
    assert docs.main(["--check", "--root", str(tmp_path)]) == 1  # missing counts as stale
    assert docs.main(["--write", "--root", str(tmp_path)]) == 0
    assert (tmp_path / docs.EXAMPLE_PATH).read_text() == docs.example_config()
    assert (tmp_path / docs.MARKDOWN_PATH).read_text() == docs.params_markdown()
    assert docs.main(["--check", "--root", str(tmp_path)]) == 0

    md = tmp_path / docs.MARKDOWN_PATH
    md.write_text(md.read_text().replace("| `MetadataPort` | `8775` |", "| `MetadataPort` | `1` |"))
    capsys.readouterr()
    assert docs.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "docs/config-params.md is stale" in err
    assert REGENERATE in err
    assert "felix.cfg.example" not in err


def test_write_or_check_is_required():
    with pytest.raises(SystemExit) as e:
        docs.main([])
    assert e.value.code == 2


# -- (b) the example lists every parameter ----------------------------------------------------


def test_example_lists_every_parameter():
    text = (ROOT / docs.EXAMPLE_PATH).read_text(encoding="utf-8")
    headings = {line[2:] for line in text.splitlines() if line.startswith("# ")}
    assignments = _example_assignments(text)
    for p in PARAMS:
        assert p.name in headings, f"{p.name} has no heading in the example"
        assert p.name in assignments, f"{p.name} has no commented-out assignment"
        assert f"FELIX_{p.name.upper()}" in text
        for alias in p.aliases:
            assert alias in text
    assert set(assignments) == {p.name for p in PARAMS}


def test_example_lines_fit_and_sections_follow_the_table():
    text = docs.example_config()
    assert all(len(line) <= docs.WRAP for line in text.splitlines())
    for section in {p.section for p in PARAMS}:
        start = text.index(f"\n# {section}\n")
        positions = [text.index(f"\n# {p.name}\n") for p in PARAMS if p.section == section]
        assert start < positions[0]
        assert positions == sorted(positions), f"{section}: parameters out of table order"


# -- (c) the example parses and its defaults are the real ones --------------------------------


def test_example_parses_and_as_shipped_sets_nothing(tmp_path: Path):
    text = (ROOT / docs.EXAMPLE_PATH).read_text(encoding="utf-8")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    assert parser.sections() == ["global"]
    assert dict(parser.items("global")) == {}

    path = tmp_path / "felix.cfg"
    path.write_text(text)
    assert read_file(str(path)) == {}
    assert resolve({}, read_file(str(path))).values() == resolve({}, {}).values()


def test_uncommented_example_resolves_to_exactly_the_defaults(tmp_path: Path, monkeypatch):
    # Setting EtcdCaFile explicitly makes the loader check the file is readable; this test is
    # about the values written in the example, not about the CA bundle on the test host.
    monkeypatch.setattr(loader, "_readable_file", lambda _path: True)
    computed = {p.name for p in PARAMS if p.default is None}
    text = (ROOT / docs.EXAMPLE_PATH).read_text(encoding="utf-8")

    lines = []
    uncommented = set()
    for line in text.splitlines():
        m = ASSIGNMENT.match(line)
        if m and m["name"] not in computed:
            uncommented.add(m["name"])
            lines.append(line.removeprefix("# "))
        else:
            lines.append(line)
    assert uncommented == {p.name for p in PARAMS} - computed

    path = tmp_path / "felix.cfg"
    path.write_text("\n".join(lines) + "\n")
    configparser.ConfigParser(interpolation=None).read(path)  # still well-formed
    raw = read_file(str(path))
    # Every non-empty default really came from the file...
    assert raw == {p.name: p.default for p in PARAMS if p.default}
    config = resolve({}, raw, file_path=str(path))
    for name in raw:
        assert config.source(name) == Source.FILE
    # ...and resolves to exactly what nothing at all resolves to.
    assert config.values() == resolve({}, {}).values()


def test_computed_defaults_are_marked_as_computed():
    assignments = _example_assignments(docs.example_config())
    for p in PARAMS:
        if p.default is None:
            assert assignments[p.name].startswith("<computed: "), p.name
            assert assignments[p.name].endswith(">"), p.name
    assert assignments["FelixHostname"] == "<computed: socket.gethostname()>"
    assert assignments["EtcdEndpoints"] == "<computed: EtcdScheme://EtcdAddr>"


# -- (d) the markdown has a row per parameter, with its default --------------------------------


def test_markdown_has_a_row_per_parameter_with_its_default():
    text = (ROOT / docs.MARKDOWN_PATH).read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\| `(?P<name>[A-Za-z0-9]+)`", line)
        if m:
            assert m["name"] not in rows, f"{m['name']} has two rows"
            rows[m["name"]] = line
    assert set(rows) == {p.name for p in PARAMS}
    for p in PARAMS:
        row = rows[p.name]
        cells = re.split(r"(?<!\\)\|", row.strip().strip("|"))
        assert len(cells) == 6, p.name
        default = cells[1].strip()
        if p.default is None:
            assert default.startswith("computed: "), p.name
        elif p.default == "":
            assert default == "*(empty)*", p.name
        else:
            assert default == f"`{p.default}`", p.name
        assert f"`FELIX_{p.name.upper()}`" in cells[3]
        assert cells[4].strip() == ("yes" if p.local_only else "no")


def test_markdown_has_a_table_per_section_and_mentions_aliases_and_exit_status():
    text = docs.params_markdown()
    for section in {p.section for p in PARAMS}:
        assert f"\n## {section}\n" in text
    assert text.count("| Parameter | Default | Values | Env var | Local-only | Meaning |") == len(
        {p.section for p in PARAMS}
    )
    assert "`DatastoreType` is accepted as an alias of `DataplaneDriver`" in text
    assert "`FELIX_DATASTORETYPE`" in text
    assert "status 2" in text
    assert "`none`" in text
