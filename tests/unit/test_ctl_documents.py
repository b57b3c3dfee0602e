"""calicoctl's input and output without etcd: reading YAML/JSON documents strictly, planning
writes from them (kinds, identities, revisions, specs validated by Felix's parsers), tables and
the stable JSON/YAML output, and usage errors (exit 2)."""

from __future__ import annotations

import json

import pytest

from calico.ctl import documents, output, resource_commands
from calico.ctl.cli import main
from calico.ctl.errors import Invalid


def test_yaml_and_json_one_or_many_documents() -> None:
    docs = documents.parse("kind: tier\nmetadata: {name: a}\n---\nkind: tier\n---\n", "f")
    assert [d.index for d in docs] == [1, 2]
    assert docs[1].where == "f document 2"
    as_list = documents.parse('[{"kind": "tier"}, {"kind": "profile"}]', "f")
    assert [d.data["kind"] for d in as_list] == ["tier", "profile"]
    assert documents.parse('{"kind": "tier"}', "f")[0].data == {"kind": "tier"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: 1\na: 2\n", "duplicate key 'a' (line 2)"),
        ("a: [\n", "not valid YAML or JSON"),
        ("spec: {when: 2020-01-01}\n", "spec.when: date value"),
        ("spec: {1: x}\n", "spec: key 1 is not a string"),
        ("spec: !!binary aGVsbG8=\n", "spec: bytes value"),
        ("spec: {x: .nan}\n", "spec.x: float value"),
        ("- 1\n", "document 1: expected a mapping"),
        ("---\n", "no documents"),
    ],
)
def test_input_that_is_not_plain_json_data_is_refused(text: str, problem: str) -> None:
    with pytest.raises(Invalid, match=problem.replace("(", r"\(").replace(")", r"\)")):
        documents.parse(text, "f")


def test_plan_validates_kind_identity_revision_and_spec() -> None:
    [doc] = documents.parse(
        "apiVersion: v1\nkind: POLICY\nmetadata: {tier: t, name: p, revision: 7}\n"
        "spec: {selector: all()}\n",
        "f",
    )
    write = resource_commands.plan(doc)
    assert (write.kind.name, write.meta, write.revision) == (
        "policy",
        {"tier": "t", "name": "p"},
        7,
    )
    assert write.values == {"/calico/v1/policy/tier/t/policy/p": '{"selector":"all()"}'}
    bad = documents.parse(
        "apiVersion: v9\nkind: pol\nmetadata: {tier: t, name: p, revision: x, colour: red}\n"
        "spec: {selector: 'a ==', order: y}\nextra: 1\n",
        "f",
    )[0]
    with pytest.raises(Invalid) as e:
        resource_commands.plan(bad)
    text = "\n".join(e.value.lines)
    for problem in (
        "extra: unknown field",
        "apiVersion: 'v9'",
        "metadata.colour: unknown field",
        "metadata.revision: 'x'",
        "spec.selector: invalid selector",
        "spec.order: expected a number",
    ):
        assert f"f document 1 (policy t/p): {problem}" in text, text
    # delete and get do not read the spec
    named = documents.parse("kind: tier\nmetadata: {name: t}\nspec: {order: bad}\n", "f")[0]
    assert resource_commands.plan(named, need_spec=False).values == {}
    with pytest.raises(Invalid, match="unknown resource kind 'widget'"):
        resource_commands.plan(documents.parse("kind: widget\n", "f")[0])


def test_tables_align_and_show_missing_cells() -> None:
    text = output.table(["A", "LONGER"], [["x", None], ["much longer", ["a", "b"]], [True, {}]])
    assert text.splitlines() == [
        "A            LONGER",
        "x            -",
        "much longer  a,b",
        "true         -",
    ]
    assert output.cell_text({"k": "v", "a": "b"}) == "k=v,a=b"
    assert output.cell_text(2.0) == "2" and output.cell_text(2.5) == "2.5"


def test_json_and_yaml_output_read_back() -> None:
    docs = [{"kind": "tier", "metadata": {"name": "a"}, "spec": {"order": 1}}] * 2
    assert json.loads(output.dump(docs, "json")) == docs
    assert [d.data for d in documents.parse(output.dump(docs, "yaml"), "y")] == docs
    assert [d.data for d in documents.parse(output.dump(docs, "json"), "j")] == docs
    assert output.dump([], "yaml") == "" and output.dump([], "json") == "[]\n"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["get"],
        ["get", "profile", "-f", "x.yaml"],
        ["delete", "profile"],
        ["frobnicate"],
        ["create"],
        ["config"],
        ["node"],
        ["endpoint"],
        ["explain", "a"],
        ["explain", "a", "b", "--port", "70000"],
        ["explain", "a", "b", "--icmp-type", "255"],
        ["get", "profile", "-o", "xml"],
        ["get", "wep", "--host", "bad host"],
    ],
)
def test_usage_errors_are_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "-c", "/nonexistent/felix.cfg"], {}) == 2
    assert capsys.readouterr().err.startswith("calicoctl")


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"], {}) == 0
    assert capsys.readouterr().out.startswith("calicoctl ")
    assert main(["explain", "--help"], {}) == 0
    assert "SRC" in capsys.readouterr().out


def test_bad_felix_configuration_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"FELIX_ETCDENDPOINTS": "not-a-url"}
    assert main(["get", "profile", "-c", "/nonexistent"], env) == 2
    assert "EtcdEndpoints" in capsys.readouterr().err
