"""BIRD's configuration from every kind of etcd data, each file checked by the real `bird -p -c`:
mesh, no mesh, route reflectors, global and per-host peers, per-host AS, IPv6, pools, log
levels, address conflicts and bad data (left out, the rest rendered)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from calico.bgp.model import BgpData, BgpStore, HostData, encode_peer
from calico.bgp.peers import LocalHost, peer_address, plan, session_name
from calico.bgp.render import RenderOptions, UnsafeValue, render, router_id

G = "/calico/bgp/v1/global"
H = "/calico/bgp/v1/host"
ME = LocalHost("h1", "198.18.0.1", "fd00:18::1")


def hosts(count: int, v6: bool = True) -> dict[str, str]:
    keys = {}
    for i in range(1, count + 1):
        keys[f"{H}/h{i}/ip_addr_v4"] = f"198.18.0.{i}"
        if v6:
            keys[f"{H}/h{i}/ip_addr_v6"] = f"fd00:18::{i}"
    return keys


def data_from(keys: Mapping[str, str]) -> BgpData:
    store = BgpStore()
    for path, value in keys.items():
        store.update(path, value)
    return store.data()


def bird_accepts(text: str, tmp_path: Path) -> None:
    path = tmp_path / "bird.conf"
    path.write_text(text)
    proc = subprocess.run(
        ["bird", "-p", "-c", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, f"{proc.stderr}\n{text}"


def rendered(keys: Mapping[str, str], tmp_path: Path, me: LocalHost = ME) -> str:
    text = render(data_from(keys), me)
    bird_accepts(text, tmp_path)
    return text


def protocols(text: str) -> dict[str, str]:
    """protocol name -> its block, for every `protocol bgp`."""
    blocks = re.findall(r"^protocol bgp (\S+) from \S+ \{\n(.*?)^\}", text, re.M | re.S)
    return dict(blocks)


def test_full_mesh_peers_with_every_other_host_never_itself(tmp_path: Path) -> None:
    text = rendered(hosts(3), tmp_path)
    sessions = protocols(text)
    assert set(sessions) == {
        "Mesh_198_18_0_2",
        "Mesh_198_18_0_3",
        "Mesh_fd00_18__2",
        "Mesh_fd00_18__3",
    }
    assert "neighbor 198.18.0.2 as 64511;" in sessions["Mesh_198_18_0_2"]
    assert "export filter calico_export_v4;" in sessions["Mesh_198_18_0_2"]
    assert "router id 198.18.0.1;" in text
    assert "local 198.18.0.1 as 64511;" in text and "local fd00:18::1 as 64511;" in text
    assert "graceful restart on;" in text and "learn; persist;" in text
    assert "graceful restart wait 20;" in text  # not BIRD's 240 s: a dead peer holds up routes
    assert "198.18.0.1 as" not in "".join(sessions.values())  # no session to itself
    assert "calico_reflect" not in text  # nobody reflects


def test_no_mesh_leaves_only_explicit_peers(tmp_path: Path) -> None:
    keys = {**hosts(3), f"{G}/node_mesh": '{"enabled": false}'}
    assert protocols(rendered(keys, tmp_path)) == {}
    keys[f"{G}/peer_v4/198.18.0.254"] = encode_peer("198.18.0.254", 65000)
    keys[f"{H}/h1/peer_v6/fd00:18::fe"] = encode_peer("fd00:18::fe", 65001)
    keys[f"{H}/h2/peer_v4/198.18.0.253"] = encode_peer("198.18.0.253", 65002)  # h2's only
    sessions = protocols(rendered(keys, tmp_path))
    assert set(sessions) == {"Global_198_18_0_254", "Node_fd00_18__fe"}
    assert "neighbor 198.18.0.254 as 65000;" in sessions["Global_198_18_0_254"]
    assert "neighbor fd00:18::fe as 65001;" in sessions["Node_fd00_18__fe"]
    assert 'description "global";' in sessions["Global_198_18_0_254"]


def test_mesh_on_by_default_and_when_node_mesh_is_invalid(tmp_path: Path) -> None:
    for value in ('{"enabled": true}', "not json", '{"enabled": "no"}', "[]"):
        keys = {**hosts(2, v6=False), f"{G}/node_mesh": value}
        assert set(protocols(rendered(keys, tmp_path))) == {"Mesh_198_18_0_2"}


def test_a_host_peer_wins_over_a_global_peer_and_over_the_mesh(tmp_path: Path) -> None:
    keys = {
        **hosts(2, v6=False),
        f"{G}/peer_v4/198.18.0.9": encode_peer("198.18.0.9", 65000),
        f"{H}/h1/peer_v4/198.18.0.9": encode_peer("198.18.0.9", 65009),
        f"{G}/peer_v4/198.18.0.2": encode_peer("198.18.0.2", 65002),  # a Calico host's address
        f"{G}/peer_v4/198.18.0.1": encode_peer("198.18.0.1", 65001),  # our own: never
    }
    sessions = protocols(rendered(keys, tmp_path))
    assert set(sessions) == {"Node_198_18_0_9", "Global_198_18_0_2"}
    assert "as 65009;" in sessions["Node_198_18_0_9"]


def test_route_reflector_with_two_clients_and_no_mesh(tmp_path: Path) -> None:
    keys = {
        **hosts(3),
        f"{G}/node_mesh": '{"enabled": false}',
        f"{H}/h3/rr_cluster_id": "1.0.0.1",
    }
    client = rendered(keys, tmp_path)
    assert set(protocols(client)) == {"Reflector_198_18_0_3", "Reflector_fd00_18__3"}
    assert "rr client" not in client
    reflector = rendered(keys, tmp_path, LocalHost("h3", "198.18.0.3", "fd00:18::3"))
    sessions = protocols(reflector)
    assert set(sessions) == {
        "Client_198_18_0_1",
        "Client_198_18_0_2",
        "Client_fd00_18__1",
        "Client_fd00_18__2",
    }
    for block in sessions.values():
        assert "rr client; rr cluster id 1.0.0.1;" in block
        assert re.search(r"export filter calico_reflect_v[46];", block)
    assert "filter calico_reflect_v4" in reflector


def test_reflectors_with_the_mesh_on_and_two_reflectors(tmp_path: Path) -> None:
    keys = {
        **hosts(4, v6=False),
        f"{H}/h3/rr_cluster_id": "1.0.0.1",
        f"{H}/h4/rr_cluster_id": "1.0.0.1",
    }
    client = protocols(rendered(keys, tmp_path))
    # The mesh between clients stays (migration step 1); sessions to both reflectors are added.
    assert set(client) == {"Mesh_198_18_0_2", "Reflector_198_18_0_3", "Reflector_198_18_0_4"}
    rr = protocols(rendered(keys, tmp_path, LocalHost("h3", "198.18.0.3", None)))
    assert set(rr) == {"Client_198_18_0_1", "Client_198_18_0_2", "Mesh_198_18_0_4"}
    assert "export filter calico_reflect_v4" in rr["Mesh_198_18_0_4"]  # reflectors meshed
    assert "rr client" not in rr["Mesh_198_18_0_4"]


def test_per_host_as_numbers(tmp_path: Path) -> None:
    keys = {
        **hosts(3, v6=False),
        f"{G}/as_num": "64512",
        f"{H}/h1/as_num": "65001",
        f"{H}/h2/as_num": "4200000000",  # 4-byte AS
    }
    text = rendered(keys, tmp_path)
    sessions = protocols(text)
    assert "local 198.18.0.1 as 65001;" in text
    assert "neighbor 198.18.0.2 as 4200000000;" in sessions["Mesh_198_18_0_2"]
    assert "neighbor 198.18.0.3 as 64512;" in sessions["Mesh_198_18_0_3"]  # the global AS


def test_a_reflector_and_a_host_of_another_as_peer_plainly(tmp_path: Path) -> None:
    keys = {
        **hosts(2, v6=False),
        f"{G}/node_mesh": '{"enabled": false}',
        f"{H}/h2/rr_cluster_id": "1.0.0.1",
        f"{H}/h1/as_num": "65001",
    }
    assert set(protocols(rendered(keys, tmp_path))) == {"Mesh_198_18_0_2"}
    rr = rendered(keys, tmp_path, LocalHost("h2", "198.18.0.2", None))
    assert set(protocols(rr)) == {"Mesh_198_18_0_1"}  # eBGP: no rr client
    assert "rr client" not in rr


def test_ipv6_only_host(tmp_path: Path) -> None:
    me = LocalHost("h1", None, "fd00:18::1")
    text = rendered(hosts(3), tmp_path, me)
    assert set(protocols(text)) == {"Mesh_fd00_18__2", "Mesh_fd00_18__3"}
    assert "No IPv4 address on this host" in text
    assert f"router id {router_id(me)};" in text and router_id(me) == router_id(me)
    assert router_id(me) != router_id(LocalHost("h2", None, "fd00:18::2"))


def test_a_host_without_an_address_of_a_family_gets_no_session_of_it(tmp_path: Path) -> None:
    keys = {**hosts(2), f"{H}/h3/ip_addr_v4": "198.18.0.3", f"{H}/h3/ip_addr_v6": ""}
    assert set(protocols(rendered(keys, tmp_path))) == {
        "Mesh_198_18_0_2",
        "Mesh_198_18_0_3",
        "Mesh_fd00_18__2",
    }


def test_pools_are_accepted_from_peers_and_host_addresses_never(tmp_path: Path) -> None:
    keys = {
        **hosts(2),
        "/calico/v1/ipam/v4/pool/10.65.0.0-16": '{"cidr": "10.65.0.0/16", "masquerade": true}',
        "/calico/v1/ipam/v6/pool/fd00:65::-64": '{"cidr": "fd00:65::/64"}',
    }
    text = rendered(keys, tmp_path)
    assert "if net ~ [ 10.65.0.0/16+ ] then return true;" in text
    assert "if net ~ [ fd00:65::/64+ ] then return true;" in text
    assert "198.18.0.2/32{0,32}" in text and "fd00:18::1/128{0,128}" in text
    assert "if krt_source != 80 then return false;" in text
    assert "if net = 0.0.0.0/0 then return false;" in text


@pytest.mark.parametrize(("level", "line"), [
    (None, "debug protocols { states };"),
    ("none", "debug protocols off;"),
    ("INFO", "debug protocols { states };"),
    ("debug", "debug protocols all;"),
    ("loud", "debug protocols { states };"),  # invalid: left out
])  # fmt: skip
def test_log_levels(level: str | None, line: str, tmp_path: Path) -> None:
    keys = hosts(2)
    if level is not None:
        keys[f"{G}/loglevel"] = level
    assert line in rendered(keys, tmp_path)


def test_bad_data_is_left_out_and_the_rest_rendered(tmp_path: Path) -> None:
    good = {**hosts(3), f"{G}/peer_v4/198.18.0.254": encode_peer("198.18.0.254", 65000)}
    bad = {
        f"{G}/as_num": "sixty-four",
        f"{H}/h2/as_num": "0",
        f"{H}/h3/as_num": "23456",
        f"{H}/h4/ip_addr_v4": "198.18.0.400",
        f"{H}/h5/ip_addr_v4": "127.0.0.1",
        f"{H}/h6/ip_addr_v6": "fd00:18::6%eth0",
        f"{H}/h7/ip_addr_v4": "fd00:18::7",
        f"{H}/h1/rr_cluster_id": "1.2.3",
        f"{G}/peer_v4/198.18.0.253": '{"ip": "198.18.0.252", "as_num": "65000"}',
        f"{G}/peer_v4/198.18.0.251": '{"ip": "198.18.0.251", "as_num": "-1"}',
        f"{G}/peer_v4/198.18.0.250": '{"ip": "198.18.0.250"}',
        f"{G}/peer_v6/198.18.0.249": '{"ip": "198.18.0.249", "as_num": "1"}',
        f"{G}/peer_v4/224.0.0.1": '{"ip": "224.0.0.1", "as_num": "1"}',
        f"{H}/h1/peer_v4/198.18.0.248": "[1, 2]",
        "/calico/v1/ipam/v4/pool/10.66.0.0-16": '{"cidr": "fd00::/64"}',
        "/calico/v1/ipam/v4/pool/x;y": '{"cidr": "10.67.0.0/16"}',
    }
    store = BgpStore()
    for path, value in {**good, **bad}.items():
        store.update(path, value)
    assert set(store.refused) == set(bad)
    text = render(store.data(), ME)
    bird_accepts(text, tmp_path)
    assert text == render(data_from(good), ME)  # the bad keys changed nothing
    for path in bad:
        store.update(path, None)
    assert store.refused == {}


def test_bad_values_logged_once_per_key_and_value(caplog: pytest.LogCaptureFixture) -> None:
    store = BgpStore()
    path = f"{H}/h1/as_num"
    for _ in range(3):
        store.update(path, "bad\nvalue")
    store.update(path, "also bad")
    messages = [r.getMessage() for r in caplog.records if "Ignoring BGP key" in r.getMessage()]
    assert len(messages) == 2
    assert all(repr(path) in m for m in messages)
    assert "\n" not in "".join(messages)


def test_address_conflicts_give_one_session_and_are_reported() -> None:
    keys = {**hosts(3, v6=False), f"{H}/h4/ip_addr_v4": "198.18.0.2"}
    the_plan = plan(data_from(keys), LocalHost("h1", "198.18.0.1", None))
    assert [s.name for s in the_plan.sessions] == ["Mesh_198_18_0_2", "Mesh_198_18_0_3"]
    assert the_plan.sessions[0].host == "h2"
    assert the_plan.conflicts == ("IPv4 address 198.18.0.2 is claimed by h2, h4",)
    # The claimants themselves see another host holding their own address.
    mine = plan(data_from(keys), LocalHost("h4", "198.18.0.2", None))
    assert "Mesh_198_18_0_2" not in [s.name for s in mine.sessions]
    assert mine.conflicts == ("IPv4 address 198.18.0.2 of this host (h4) is also claimed by h2",)


def test_rendering_is_deterministic_whatever_the_order_of_updates() -> None:
    keys = {**hosts(5), f"{H}/h3/rr_cluster_id": "1.0.0.1", f"{G}/as_num": "65000"}
    forward = render(data_from(keys), ME)
    backward = render(data_from(dict(reversed(list(keys.items())))), ME)
    assert forward == backward


def test_options_and_defence_in_depth(tmp_path: Path) -> None:
    text = render(data_from(hosts(2)), ME, RenderOptions(log=str(tmp_path / "bird.log")))
    assert f'log "{tmp_path}/bird.log" all;' in text
    bird_accepts(text, tmp_path)
    for target in ('/x" all; protocol', "relative.log", "/a b"):
        with pytest.raises(UnsafeValue):
            RenderOptions(log=target)
    # Values that did not come through the parsers are refused by the renderer itself.
    sneaky = [
        replace(data_from(hosts(2)), hosts={"h2": HostData(ip4="198.018.0.2")}),
        replace(data_from(hosts(2)), as_num=0),
        replace(data_from(hosts(2)), pools=("10.65.0.1/16",)),
        replace(data_from(hosts(2)), hosts={'h"2': HostData(ip4="198.18.0.2")}),
    ]
    for data in sneaky:
        with pytest.raises(UnsafeValue):
            render(data, ME)
    with pytest.raises(UnsafeValue):
        render(data_from(hosts(2)), LocalHost("h1\n", "198.18.0.1", None))


def test_session_names_turn_back_into_addresses() -> None:
    for kind, ip in [("mesh", "198.18.0.2"), ("client", "fd00:18::2"), ("node", "::1:2:3:4")]:
        assert peer_address(session_name(kind, ip)) == (kind, ip)
    assert peer_address("kernel4") is None
