"""Hostile strings in every key segment and every value calico-bgp reads never reach BIRD's file.

The same hostile strings as tests/unit/test_hostile_inputs.py (imported from it), plus some
written against BIRD's own syntax, go into every slot of a complete BGP configuration: each host
name and IP segment of every kind of key, the pool ID, every plain value and every field of
every JSON value. For each case the oracle is exact: the rendered file must equal the file
rendered without the key the hostile string went into (the bad key or value is left out and
nothing else changes), and the real `bird -p -c` must accept it. Enumerated, not sampled.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from test_hostile_inputs import HOSTILE as FELIX_HOSTILE

from calico.bgp.model import BgpStore, encode_peer
from calico.bgp.peers import LocalHost
from calico.bgp.render import render
from calico.common.datamodel_bgp import parse_bgp_key
from calico.common.datamodel_v1 import BadKey, parse_key

G = "/calico/bgp/v1/global"
H = "/calico/bgp/v1/host"
POOL = "/calico/v1/ipam/v4/pool/10.65.0.0-16"
HOSTILE = [
    *FELIX_HOSTILE,
    '";\nprotocol bgp evil { neighbor 6.6.6.6 as 666; }\n#',
    '}; include "/etc/shadow"; {',
    "198.18.0.9; export all",
    "198.18.0.9 as 1",
    "64512;",
    "64512 ",
    " 64512",
    "+64512",
    "0x10",
    "1e3",
    "99999999999",
    "198.018.0.9",
    "::ffff:198.18.0.9",
    "ipv4 { export all; }",
    "${IP}",
]

BASE = {
    f"{G}/as_num": "64512",
    f"{G}/node_mesh": '{"enabled": true}',
    f"{G}/loglevel": "info",
    f"{G}/peer_v4/198.18.0.254": encode_peer("198.18.0.254", 65000),
    f"{G}/peer_v6/fd00:18::fe": encode_peer("fd00:18::fe", 65000),
    f"{H}/h1/ip_addr_v4": "198.18.0.1",
    f"{H}/h1/ip_addr_v6": "fd00:18::1",
    f"{H}/h1/peer_v4/198.18.0.253": encode_peer("198.18.0.253", 65001),
    f"{H}/h1/peer_v6/fd00:18::fd": encode_peer("fd00:18::fd", 65001),
    f"{H}/h2/ip_addr_v4": "198.18.0.2",
    f"{H}/h2/ip_addr_v6": "fd00:18::2",
    f"{H}/h2/as_num": "65002",
    f"{H}/h3/ip_addr_v4": "198.18.0.3",
    f"{H}/h3/rr_cluster_id": "1.0.0.1",
    POOL: '{"cidr": "10.65.0.0/16"}',
}
SAFE_SEGMENT_RE = re.compile(r"[a-zA-Z0-9_.:-]+")
ME = LocalHost("h1", "198.18.0.1", "fd00:18::1")
# Puts the hostile string into a model; returns the key it replaced and the key it wrote.
Case = Callable[[dict[str, str], str], tuple[str, str]]


def _segment(path: str, position: int) -> Case:
    def put(model: dict[str, str], hostile: str) -> str:
        parts = path.split("/")
        parts[position] = hostile
        new_path = "/".join(parts)
        model[new_path] = model.pop(path)
        return path, new_path

    return put


def _value(path: str) -> Case:
    def put(model: dict[str, str], hostile: str) -> str:
        model[path] = hostile
        return path, path

    return put


def _field(path: str, name: str) -> Case:
    def put(model: dict[str, str], hostile: str) -> str:
        data = json.loads(model[path])
        data[name] = hostile
        model[path] = json.dumps(data)
        return path, path

    return put


def _slots() -> dict[str, Case]:
    slots: dict[str, Case] = {}
    for path, value in BASE.items():
        parts = path.split("/")
        if parts[4] == "host":  # /calico/bgp/v1/host/<host>/...
            slots[f"host segment of {path}"] = _segment(path, 5)
        if "/peer_v" in path:
            slots[f"IP segment of {path}"] = _segment(path, len(parts) - 1)
        if path == POOL:
            slots["pool ID"] = _segment(path, len(parts) - 1)
        slots[f"value of {path}"] = _value(path)
        if value.startswith("{"):
            for name in json.loads(value):
                slots[f"{name} of {path}"] = _field(path, name)
    return slots


SLOTS = _slots()


def _render(model: dict[str, str]) -> tuple[str, BgpStore]:
    store = BgpStore()
    for path, value in model.items():
        store.update(path, value)
    return render(store.data(), ME), store


def _bird_accepts(texts: set[str], tmp_path: Path) -> None:
    for i, text in enumerate(sorted(texts)):
        path = tmp_path / f"{i}.conf"
        path.write_text(text)
        proc = subprocess.run(
            ["bird", "-p", "-c", str(path)], capture_output=True, text=True, timeout=30, check=False
        )
        assert proc.returncode == 0, f"{proc.stderr}\n{text}"


def test_the_slots_cover_every_kind_of_key_and_field() -> None:
    assert len(SLOTS) >= 30
    kinds = {name.split(" of ")[0] for name in SLOTS}
    assert {"host segment", "IP segment", "pool ID", "value", "ip", "as_num", "cidr"} <= kinds
    full, store = _render(dict(BASE))
    assert not store.refused
    # The base exercises every part of the file the hostile strings could reach.
    for text in (
        "Mesh_198_18_0_2",
        "Reflector_198_18_0_3",
        "Global_fd00_18__fe",
        "Node_198_18_0_253",
        "10.65.0.0/16+",
        "as 65002;",
        "local 198.18.0.1 as 64512",
    ):
        assert text in full, text  # fmt: skip


def _recognised(path: str) -> bool:
    key = parse_bgp_key(path) or parse_key(path)
    return key is not None and not isinstance(key, BadKey)


@pytest.mark.parametrize("slot", sorted(SLOTS))
def test_hostile_strings_in_every_slot_are_left_out(slot: str, tmp_path: Path) -> None:
    texts: set[str] = set()
    refused = 0
    for hostile in HOSTILE:
        model = dict(BASE)
        replaced, written = SLOTS[slot](model, hostile)
        text, store = _render(model)
        texts.add(text)
        refused += bool(store.refused)
        if not store.refused and written != replaced and _recognised(written):
            # A key segment that is a valid ID or address ("-A", "..." are not): a different,
            # valid key, which may rightly change the file. Only safe characters can do that.
            assert SAFE_SEGMENT_RE.fullmatch(hostile), (slot, hostile)
            continue
        without = dict(BASE)
        without.pop(replaced)
        expected, _ = _render(without)
        if text != expected:
            raise AssertionError(f"{slot} = {hostile[:60]!r} changed the file:\n{text}")
    assert refused >= len(HOSTILE) // 2, "the slot's values must be checked, not ignored"
    _bird_accepts(texts, tmp_path)
