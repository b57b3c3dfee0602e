"""calicoctl against a real etcd, over the v2 and the v3 API: every resource kind round-trips
through create / get / apply / replace / delete; invalid documents are refused naming the
document and the field, with nothing written; writers racing on one resource lose cleanly
(compare-and-swap). Felix configuration and the connection: test_calicoctl_config.py."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from calico.common.etcd import connect
from calico.common.etcd.base import EtcdSettings, KVStore
from calico.ctl import store
from calico.ctl.cli import main
from calico.lab.etcd_server import EtcdServer

# One document per kind, and a changed version of it (for replace).
DOCS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "profile": (
        {
            "metadata": {"name": "web"},
            "spec": {
                "inbound_rules": [{"protocol": "tcp", "dst_ports": [80], "src_tag": "web"}],
                "outbound_rules": [{}],
                "tags": ["web"],
                "labels": {"role": "web"},
            },
        },
        {
            "metadata": {"name": "web"},
            "spec": {"inbound_rules": [{"action": "deny"}], "outbound_rules": []},
        },
    ),
    "tier": (
        {"metadata": {"name": "t1"}, "spec": {"order": 10}},
        {"metadata": {"name": "t1"}, "spec": {"order": "default"}},
    ),
    "policy": (
        {
            "metadata": {"tier": "t1", "name": "p1"},
            "spec": {"selector": "role == 'web'", "order": 1, "inbound_rules": [{}]},
        },
        {
            "metadata": {"tier": "t1", "name": "p1"},
            "spec": {
                "selector": "has(role) && role != 'db'",
                "outbound_rules": [{"action": "next-tier", "!dst_net": "10.0.0.0/8"}],
                "untracked": False,
            },
        },
    ),
    "ipPool": (
        {"metadata": {"name": "10.65.0.0/16"}, "spec": {"masquerade": True}},
        {"metadata": {"name": "10.65.0.0/16"}, "spec": {"masquerade": False, "disabled": True}},
    ),
    "workloadEndpoint": (
        {
            "metadata": {
                "host": "h1",
                "orchestrator": "openstack",
                "workload": "vm1",
                "name": "p1",
            },
            "spec": {
                "state": "active",
                "name": "tap1234",
                "mac": "aa:bb:cc:dd:ee:ff",
                "profile_ids": ["web"],
                "ipv4_nets": ["10.65.0.2/32"],
            },
        },
        {
            "metadata": {
                "host": "h1",
                "orchestrator": "openstack",
                "workload": "vm1",
                "name": "p1",
            },
            "spec": {
                "state": "inactive",
                "name": "tap1234",
                "mac": "aa:bb:cc:dd:ee:ff",
                "ipv6_nets": ["fd00::2/128"],
                "labels": {"a": "b"},
                "fqdn": "vm1.example.org",
            },
        },
    ),
    "hostEndpoint": (
        {"metadata": {"host": "h1", "name": "eth0"}, "spec": {"name": "eth0"}},
        {
            "metadata": {"host": "h1", "name": "eth0"},
            "spec": {"expected_ipv4_addrs": ["192.0.2.1"], "profile_ids": ["web"]},
        },
    ),
    "bgpPeer": (
        {"metadata": {"name": "192.0.2.7"}, "spec": {"as_num": 64512}},
        {"metadata": {"name": "192.0.2.7"}, "spec": {"as_num": 65000}},
    ),
    "bgpConfig": (
        {"metadata": {}, "spec": {"as_num": 64511, "node_mesh": True}},
        {"metadata": {}, "spec": {"as_num": 64512, "node_mesh": False, "loglevel": "debug"}},
    ),
}
NAMES = {  # kind -> (get/delete arguments)
    "profile": ["web"],
    "tier": ["t1"],
    "policy": ["p1", "--tier", "t1"],
    "ipPool": ["10.65.0.0/16"],
    "workloadEndpoint": ["p1", "--host", "h1"],
    "hostEndpoint": ["eth0", "--host", "h1"],
    "bgpPeer": ["192.0.2.7"],
    "bgpConfig": ["global"],
}


@pytest.fixture(params=["v2", "v3"])
def api(request: pytest.FixtureRequest) -> str:
    return request.param


class Ctl:
    """Runs calicoctl's main() in-process against one etcd and API."""

    def __init__(self, etcd: EtcdServer, api: str, tmp: Path, capsys: pytest.CaptureFixture[str]):
        self.env = {"FELIX_ETCDENDPOINTS": etcd.client_url, "FELIX_DATAPLANEDRIVER": f"etcd{api}"}
        self.tmp = tmp
        self.capsys = capsys
        self.client: KVStore = connect(api, EtcdSettings((etcd.client_url,)), shuffle=False)
        self.files = 0

    def __call__(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        argv = [*args, "-c", str(self.tmp / "absent.cfg")]
        code = main(argv, self.env, io.StringIO(stdin) if stdin is not None else None)
        out, err = self.capsys.readouterr()
        return code, out, err

    def file(self, *docs: dict[str, Any], fmt: str = "yaml") -> str:
        self.files += 1
        path = self.tmp / f"doc{self.files}.{fmt}"
        text = yaml.safe_dump_all(docs) if fmt == "yaml" else json.dumps(list(docs))
        path.write_text(text)
        return str(path)

    def tree(self) -> dict[str, tuple[str, int]]:
        return self.client.read_prefix_versioned("/calico")


@pytest.fixture
def ctl(
    etcd: EtcdServer, api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Ctl]:
    runner = Ctl(etcd, api, tmp_path, capsys)
    yield runner
    runner.client.close()


def doc(kind: str, which: int = 0, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, **json.loads(json.dumps(DOCS[kind][which])), **extra}


def get_json(ctl: Ctl, kind: str) -> list[dict[str, Any]]:
    code, out, err = ctl("get", kind, *NAMES[kind], "-o", "json")
    assert code == 0, err
    return json.loads(out)


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DOCS))
def test_every_kind_round_trips(ctl: Ctl, kind: str) -> None:
    first, second = doc(kind), doc(kind, 1)
    code, out, err = ctl("create", "-f", ctl.file(first))
    assert (code, err) == (0, "")
    assert out.endswith("created\n")
    [got] = get_json(ctl, kind)
    assert got["spec"] == _expected_spec(kind, first["spec"])
    revision = got["metadata"]["revision"]

    # create again: refused; apply the same: nothing written; get -o yaml reads back with -f.
    assert ctl("create", "-f", ctl.file(first))[0] == 1
    code, out, _ = ctl("apply", "-f", ctl.file(first))
    assert (code, out.split()[-1]) == (0, "unchanged")
    code, yaml_out, _ = ctl("get", kind, *NAMES[kind], "-o", "yaml")
    assert ctl("apply", "-f", "-", stdin=yaml_out)[1].split()[-1] == "unchanged"
    assert get_json(ctl, kind)[0]["metadata"]["revision"] == revision

    code, out, err = ctl(
        "replace",
        "-f",
        ctl.file(second),
    )
    assert (code, out.split()[-1]) == (0, "replaced"), err
    [got] = get_json(ctl, kind)
    assert got["spec"] == _expected_spec(kind, second["spec"])
    assert got["metadata"]["revision"] > revision

    code, out, _ = ctl("apply", "-f", ctl.file(first, fmt="json"))
    assert (code, out.split()[-1]) == (0, "replaced")
    assert get_json(ctl, kind)[0]["spec"] == _expected_spec(kind, first["spec"])

    code, out, _ = ctl("delete", "-f", ctl.file(first))
    assert (code, out.split()[-1]) == (0, "deleted")
    assert ctl("get", kind, *NAMES[kind])[0] == 1
    assert ctl("replace", "-f", ctl.file(first))[0] == 1  # nothing to replace
    assert ctl("delete", kind, *NAMES[kind])[0] == 1
    assert ctl("apply", "-f", ctl.file(first))[0] == 0
    assert ctl("delete", kind, *NAMES[kind])[1].split()[-1] == "deleted"
    assert not [k for k in ctl.tree() if "/felix/" not in k], "keys left behind"


def _expected_spec(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What get shows for a written spec (the forms written, e.g. rule lists always present)."""
    if kind == "profile":
        out = {"inbound_rules": [], "outbound_rules": [], **spec}
        return out
    if kind == "ipPool":
        return {**spec, "cidr": "10.65.0.0/16"}
    return spec


def test_values_in_etcd_are_the_documents(ctl: Ctl) -> None:
    for kind in DOCS:
        assert ctl("create", "-f", ctl.file(doc(kind)))[0] == 0
    values = {k: json.loads(v) if v[:1] in "{[" else v for k, (v, _) in ctl.tree().items()}
    base = "/calico/v1/policy/profile/web"
    assert values[f"{base}/rules"] == {
        "inbound_rules": [{"protocol": "tcp", "dst_ports": [80], "src_tag": "web"}],
        "outbound_rules": [{}],
    }
    assert values[f"{base}/tags"] == ["web"]
    assert values[f"{base}/labels"] == {"role": "web"}
    assert values["/calico/v1/policy/tier/t1/metadata"] == {"order": 10}
    assert values["/calico/v1/ipam/v4/pool/10.65.0.0-16"] == {
        "masquerade": True,
        "cidr": "10.65.0.0/16",
    }
    assert values["/calico/bgp/v1/global/peer_v4/192.0.2.7"] == {
        "ip": "192.0.2.7",
        "as_num": "64512",
    }
    assert values["/calico/bgp/v1/global/as_num"] == "64511"
    assert values["/calico/bgp/v1/global/node_mesh"] == {"enabled": True}
    endpoint = "/calico/v1/host/h1/workload/openstack/vm1/endpoint/p1"
    assert values[endpoint] == DOCS["workloadEndpoint"][0]["spec"]


def test_get_lists_filters_and_prints_tables(ctl: Ctl) -> None:
    second = doc("workloadEndpoint")
    second["metadata"] = {**second["metadata"], "host": "h2", "name": "p2"}
    second["spec"] = {**second["spec"], "name": "tap5678", "ipv4_nets": ["10.65.0.3/32"]}
    assert ctl("create", "-f", ctl.file(doc("workloadEndpoint"), second))[0] == 0
    code, out, _ = ctl("get", "wep")
    lines = out.splitlines()
    assert lines[0].split() == [
        "HOST", "ORCHESTRATOR", "WORKLOAD", "NAME", "INTERFACE", "IPS", "STATE", "STATUS",
    ]  # fmt: skip
    assert [line.split()[:4] for line in lines[1:]] == [
        ["h1", "openstack", "vm1", "p1"],
        ["h2", "openstack", "vm1", "p2"],
    ]
    assert len({line.index("tap") for line in lines[1:]}) == 1  # aligned
    assert [
        d["metadata"]["host"]
        for d in json.loads(ctl("get", "wep", "--host", "h2", "-o", "json")[1])
    ] == ["h2"]
    assert "MAC" in ctl("get", "wep", "-o", "wide")[1]
    assert ctl("get", "wep", "p1", "--host", "h2")[0] == 1  # not found there
    assert ctl("get", "wep", "--tier", "t1")[0] == 2  # not a filter of endpoints
    assert ctl("get", "nonsense")[0] == 2
    # Two endpoints named alike on two hosts: delete by name needs the host.
    second["metadata"]["name"] = "p1"
    assert ctl("create", "-f", ctl.file(second))[0] == 0
    code, _, err = ctl("delete", "wep", "p1")
    assert code == 2 and "--host" in err


def test_endpoint_status_from_felix_is_shown(ctl: Ctl, etcd: EtcdServer, api: str) -> None:
    assert ctl("create", "-f", ctl.file(doc("workloadEndpoint")))[0] == 0
    status_key = "/calico/felix/v1/host/h1/workload/openstack/vm1/endpoint/p1"
    ctl.client.put(status_key, json.dumps({"status": "up"}))
    [got] = get_json(ctl, "workloadEndpoint")
    assert got["status"] == {"status": "up"}
    assert ctl("get", "wep")[1].splitlines()[1].split()[-1] == "up"


def test_invalid_data_in_etcd_is_shown_with_its_problems(ctl: Ctl) -> None:
    ctl.client.put("/calico/v1/policy/tier/t9/metadata", '{"order": "first"}')
    ctl.client.put("/calico/v1/policy/profile/lonely/tags", '["x"]')
    docs = json.loads(ctl("get", "tier", "-o", "json")[1])
    assert docs[0]["status"]["valid"] is False
    assert "order" in docs[0]["status"]["problems"][0]
    [profile] = json.loads(ctl("get", "profile", "-o", "json")[1])
    assert "deny-all stand-in" in profile["status"]["problems"][0]


# -- validation ------------------------------------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("profile", {"spec": {"inbound_rules": [{"protocol": "tcp", "dst_ports": [70000]}]}},
     "spec.inbound_rules[0]: dst_ports[0]: port 70000 out of range"),
    ("profile", {"spec": {"inbound_rules": [{"src_selector": "a ==="}]}},
     "spec.inbound_rules[0]: src_selector: invalid selector"),
    ("profile", {"spec": {"inbound_rules": [{"colour": "red"}]}},
     "spec.inbound_rules[0]: unknown rule key 'colour'"),
    ("profile", {"spec": {"tags": ["a b"]}}, "spec.tags[0]: invalid ID"),
    ("profile", {"spec": {"labels": {"k": 1}}}, "spec.labels: value of label 'k'"),
    ("profile", {"metadata": {"name": "bad/name"}}, "metadata.name: invalid 'bad/name'"),
    ("profile", {"spec": {"rules": []}}, "spec.rules: unknown field"),
    ("tier", {"spec": {"order": "first"}}, "spec.order: expected a number"),
    ("policy", {"spec": {"order": 1}}, "spec.selector: missing"),
    ("policy", {"spec": {"selector": "has("}}, "spec.selector: invalid selector"),
    ("policy", {"metadata": {"tier": None}}, "metadata.tier: missing"),
    ("ipPool", {"metadata": {"name": "10.65.0.1/16"}}, "not canonical: write 10.65.0.0/16"),
    ("ipPool", {"spec": {"masquerade": "yes"}}, "spec.masquerade: expected true or false"),
    ("ipPool", {"spec": {"cidr": "10.66.0.0/16"}}, "spec.cidr: '10.66.0.0/16' is not the pool"),
    ("workloadEndpoint", {"spec": {"state": "up", "name": "tap1"}}, "spec.state: 'up'"),
    ("workloadEndpoint", {"spec": {"state": "active", "name": "t'ap"}},
     "spec.name: invalid interface name"),
    ("workloadEndpoint",
     {"spec": {"state": "active", "name": "tap1", "ipv4_nets": ["10/8"]}},
     "spec.ipv4_nets[0]: invalid IPv4 CIDR"),
    ("workloadEndpoint",
     {"spec": {"state": "active", "name": "tap1", "mac": "aa:bb", "fqdn": "x"}},
     "spec.mac: invalid MAC"),
    ("workloadEndpoint",
     {"spec": {"state": "active", "name": "tap1", "fqdn": "not a name!"}},
     "spec.fqdn"),
    ("hostEndpoint", {"spec": {"profile_ids": ["web"]}}, "need 'name' or at least one expected"),
    ("bgpPeer", {"spec": {"as_num": 0}}, "spec.as_num: invalid AS number 0"),
    ("bgpPeer", {"metadata": {"name": "10.0.0.1/32"}}, "metadata.name: '10.0.0.1/32' is not an IP"),
    ("bgpConfig", {"spec": {"node_mesh": "on"}}, "spec.node_mesh: enabled: expected true or false"),
    ("bgpConfig", {"metadata": {"host": "h 1"}}, "metadata.host: invalid 'h 1'"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "change", "problem"), INVALID)
def test_invalid_documents_are_refused_naming_the_field(
    ctl: Ctl, kind: str, change: dict[str, Any], problem: str
) -> None:
    good = doc("tier")  # a valid document first: nothing at all may be written
    bad = doc(kind)
    for part in ("metadata", "spec"):
        if part in change:
            bad[part] = {**bad[part], **change[part]} if part == "metadata" else change[part]
    before = ctl.tree()
    for verb in ("create", "apply", "replace"):
        code, out, err = ctl(verb, "-f", ctl.file(good, bad))
        assert code == 2, err
        assert out == ""
        assert "document 2" in err and problem in err, err
        assert "nothing was written" in err
    assert ctl.tree() == before


def test_malformed_input_is_refused(ctl: Ctl) -> None:
    cases = {
        "kind: profile\nmetadata: {name: a}\nmetadata: {name: b}\n": "duplicate key",
        "kind: profile\nmetadata: {name: [\n": "not valid YAML",
        "kind: profile\nmetadata: {name: a}\nspec: {labels: {d: 2020-01-01}}\n": "plain JSON",
        "kind: widget\nmetadata: {name: a}\nspec: {}\n": "unknown resource kind",
        "apiVersion: v3\nkind: tier\nmetadata: {name: a}\nspec: {}\n": "apiVersion",
        "kind: tier\nmetadata: {name: a}\nspec: {}\nextra: 1\n": "extra: unknown field",
        "- 1\n- 2\n": "expected a mapping",
        "": "no documents",
    }
    before = ctl.tree()
    for text, problem in cases.items():
        code, _, err = ctl("apply", "-f", "-", stdin=text)
        assert code == 2 and problem in err, (text, err)
    assert ctl("apply", "-f", str(ctl.tmp / "missing.yaml"))[0] == 2
    assert ctl("get")[0] == 2
    assert ctl("frobnicate")[0] == 2
    assert ctl.tree() == before


# -- compare-and-swap -----------------------------------------------------------------------------


def test_a_stale_revision_is_refused(ctl: Ctl) -> None:
    assert ctl("create", "-f", ctl.file(doc("profile")))[0] == 0
    code, seen, _ = ctl("get", "profile", "web", "-o", "yaml")
    mine = yaml.safe_load(seen)
    theirs = yaml.safe_load(seen)
    theirs["spec"]["tags"] = ["theirs"]
    assert ctl("apply", "-f", "-", stdin=yaml.safe_dump(theirs))[0] == 0
    mine["spec"]["tags"] = ["mine"]
    before = ctl.tree()
    for verb in ("apply", "replace"):
        code, _, err = ctl(verb, "-f", "-", stdin=yaml.safe_dump(mine))
        assert code == 1 and "changed after revision" in err
    code, _, err = ctl("delete", "-f", "-", stdin=yaml.safe_dump(mine))
    assert code == 1 and "changed after revision" in err
    assert ctl.tree() == before
    assert get_json(ctl, "profile")[0]["spec"]["tags"] == ["theirs"]


def test_a_write_between_read_and_write_loses_cleanly(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ctl("create", "-f", ctl.file(doc("profile")))[0] == 0
    rules = "/calico/v1/policy/profile/web/rules"
    real_read = store.read

    def read_then_someone_writes(*args: Any, **kw: Any) -> Any:
        found = real_read(*args, **kw)
        ctl.client.put(rules, '{"inbound_rules": [], "outbound_rules": []}')
        return found

    monkeypatch.setattr(store, "read", read_then_someone_writes)
    code, out, err = ctl("apply", "-f", ctl.file(doc("profile", 1)))
    assert code == 1 and "nothing was written" in err and out == ""
    assert json.loads(ctl.client.get(rules) or "") == {"inbound_rules": [], "outbound_rules": []}
    assert ctl.client.get("/calico/v1/policy/profile/web/tags") == '["web"]'


def test_concurrent_writers_leave_one_whole_document(ctl: Ctl) -> None:
    """Two operators apply different profiles with the same name at the same time, many
    times: each run ends with exactly one writer's whole document, the other exits 1."""
    a = doc("profile")
    b = doc("profile", 1, spec={"inbound_rules": [], "tags": ["b"], "labels": {"b": "b"}})
    files = [ctl.file(a), ctl.file(b)]
    outcomes: set[tuple[int, int]] = set()
    for _ in range(12):
        ctl("delete", "profile", "web")
        barrier = threading.Barrier(2)
        codes = [0, 0]
        threads = [
            threading.Thread(target=_apply_at_once, args=(barrier, files[i], ctl.env, codes, i))
            for i in (0, 1)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        outcomes.add((codes[0], codes[1]))
        [got] = get_json(ctl, "profile")
        spec = got["spec"]
        assert spec in (_expected_spec("profile", a["spec"]), _expected_spec("profile", b["spec"]))
        assert set(codes) <= {0, 1}
    assert outcomes <= {(0, 0), (0, 1), (1, 0)}


def _apply_at_once(
    barrier: threading.Barrier, path: str, env: dict[str, str], codes: list[int], i: int
) -> None:
    barrier.wait()
    codes[i] = main(["apply", "-f", path, "-c", "/nonexistent"], env)


def test_apply_of_what_another_writer_stored_writes_nothing(ctl: Ctl) -> None:
    """A value written by another tool with other spacing and key order is the same value."""
    path = "/calico/v1/policy/tier/t1/policy/p1"
    ctl.client.put(path, '{ "order": 1,  "selector": "all()" }')
    out = ctl("get", "policy", "p1", "-o", "yaml")[1]
    before = ctl.tree()
    assert ctl("apply", "-f", "-", stdin=out)[1].split()[-1] == "unchanged"
    assert ctl.tree() == before
    ctl.client.put(path, '{"order": true, "selector": "all()"}')  # true is not 1
    changed = "\n".join(line for line in out.splitlines() if "revision" not in line)
    changed = changed.replace("order: 1", "order: 1.0")
    assert ctl("apply", "-f", "-", stdin=changed)[0] == 0
    assert json.loads(ctl.client.get(path) or "")["order"] == 1.0


def test_a_pool_stored_under_a_non_canonical_name_can_be_deleted(ctl: Ctl) -> None:
    path = "/calico/v1/ipam/v4/pool/10.65.0.1-16"
    ctl.client.put(path, '{"cidr": "10.65.0.0/16"}')
    [got] = json.loads(ctl("get", "ippool", "-o", "json")[1])
    assert got["metadata"]["name"] == "10.65.0.1/16"
    assert ctl("apply", "-f", "-", stdin=json.dumps(got))[0] == 2  # writes need the canonical
    assert ctl("delete", "ippool", "10.65.0.1/16")[0] == 0
    assert ctl.client.get(path) is None
