"""Operating calico-bgp: `calico-bgp status` and its exit codes, hostile and conflicting data in
etcd while daemons run (logged once with the key, left out, nothing stops, no session drops,
an address claimed twice is an error on both claimants), the metrics, and the exit codes of a
bad start."""

from __future__ import annotations

import sys
import time

import pytest
from bgp_support import READY, G, H, Store, mesh_names, start_hosts, wait_for

from calico.lab.bgp import CALICO_BGP
from calico.lab.etcd_server import EtcdServer
from calico.lab.fabric import Fabric

pytestmark = pytest.mark.root


def test_status_lists_the_peers_and_fails_without_bird(fabric: Fabric, store: Store) -> None:
    h1, _h2, _h3 = start_hosts(fabric, 3, store)
    assert h1.bird is not None
    h1.bird.wait_established(mesh_names(fabric.hosts, h1))
    socket = str(h1.bird.socket)
    proc = h1.run([CALICO_BGP, "status", "--bird-socket", socket], check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "BIRD is running (BIRD 2.0.12)."
    v4, v6 = proc.stdout.split("IPv6 BGP status")
    for ip, block in (("198.18.0.2", v4), ("198.18.0.3", v4), ("fd00:18::2", v6)):
        row = next(line for line in block.splitlines() if f"| {ip} " in line)
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1:3] == ["node-to-node mesh", "up"] and cells[4] == "Established", row
    h1.bird.stop()
    proc = h1.run([CALICO_BGP, "status", "--bird-socket", socket], check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"BIRD cannot be reached at {socket}" in proc.stderr


HOSTILE = {
    f"{H}/evil host/ip_addr_v4": "198.18.0.9",
    f"{H}/h4/ip_addr_v4": '198.18.0.9";\nprotocol bgp x { neighbor 6.6.6.6 as 6; }',
    f"{G}/as_num": "64512; router id 6.6.6.6",
    f"{G}/peer_v4/198.18.0.250": '{"ip": "198.18.0.250", "as_num": "0"}',
    f"{G}/peer_v4/198.18.0.251;x": '{"ip": "198.18.0.251", "as_num": "65000"}',
    f"{H}/host1/rr_cluster_id": "} protocol",
    "/calico/v1/ipam/v4/pool/10.70.0.0-16": '{"cidr": "10.70.0.0/16\\n}"}',
}


def test_hostile_and_conflicting_data_is_logged_once_and_left_out(
    fabric: Fabric, store: Store
) -> None:
    h1, h2 = start_hosts(fabric, 2, store, "--ip6", "none", "--metrics-port", "9094")
    assert h1.bird is not None and h2.bird is not None
    h1.bird.wait_established(["Mesh_198_18_0_2"])
    before = h1.bird.config.read_text()
    mark = len(h1.bgp[-1].text())
    for key, value in HOSTILE.items():
        store.put(key, value)
    for key, value in HOSTILE.items():  # written twice: still logged once
        store.put(key, value)
    h1.bgp[-1].wait_for(r"Ignoring BGP key '/calico/v1/ipam/v4/pool/10.70.0.0-16'", start=mark)
    store.put(f"{G}/loglevel", "debug")  # a good change after the bad ones: rendered
    wait_for(lambda: "debug protocols all;" in h1.bird.config.read_text(), 10, "the good change")
    after = h1.bird.config.read_text()
    assert after == before.replace("debug protocols { states };", "debug protocols all;")
    log = h1.bgp[-1].text()[mark:]
    for key in HOSTILE:
        assert log.count(f"Ignoring BGP key {key!r}") == 1, key
    assert h1.bgp[-1].proc.poll() is None and h2.bgp[-1].proc.poll() is None
    h1.bird.wait_established(["Mesh_198_18_0_2"])

    # host3 claims host2's address: an error on host3 at start and on host2 from its watch.
    h3 = fabric.add_host()
    h3.start_calico_bgp("--ip", h2.ip, "--ip6", "none", env=store.env())
    h3.bgp[-1].wait_for(r"ERROR.*IPv4 address 198.18.0.2 of this host \(host3\) is already "
                        r"claimed by host host2")  # fmt: skip
    h2.bgp[-1].wait_for(r"ERROR.*Address conflict: IPv4 address 198.18.0.2 of this host "
                        r"\(host2\) is also claimed by host3")  # fmt: skip
    h1.bgp[-1].wait_for(r"ERROR.*IPv4 address 198.18.0.2 is claimed by host2, host3")
    assert "198.18.0.2 is not an address of this host" in h3.bgp[-1].text()
    assert "Mesh_198_18_0_2" in h1.bird.protocols()  # still one session for that address

    url = "http://127.0.0.1:9094/metrics"
    scrape = f"import urllib.request as u; print(u.urlopen({url!r}).read().decode())"
    values: dict[str, float] = {}

    def scraped() -> dict[str, float]:
        text = h1.run([sys.executable, "-c", scrape]).stdout
        values.update(
            (line.split()[0], float(line.split()[1]))
            for line in text.splitlines()
            if line.startswith("calico_bgp_")
        )
        return values

    # The session metrics are as fresh as the last poll of BIRD (--poll-interval 1).
    wait_for(lambda: scraped()["calico_bgp_peers_established"] >= 1, 5, "the session's metric")
    assert values["calico_bgp_refused_keys"] == len(HOSTILE)
    assert values["calico_bgp_bird_up"] == 1 and values["calico_bgp_in_sync"] == 1
    assert values["calico_bgp_peers"] >= 1
    assert values["calico_bgp_reloads_total"] >= 1  # the hostile keys and the good change: one
    assert values["calico_bgp_config_writes_total"] >= 2
    assert values["calico_bgp_render_failures_total"] == 0
    assert "calico_bgp_routes_imported" in values and "calico_bgp_routes_exported" in values


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--as-number", "0"], {}, "invalid AS number"),
        (["--ip", "198.18.0.1; x"], {}, "--ip: "),
        (["--ip6", "198.18.0.1"], {}, "invalid IPv6 address"),
        (["--bird", "no-such-bird"], {}, "BIRD binary 'no-such-bird' not found"),
        (["--bird-config", "/tmp/a b.conf"], {}, "--bird-config"),
        (["--bird-log", "relative.log"], {}, "log target"),
        (["--ip", "none", "--ip6", "none"], {}, "no BGP address"),
        (["--poll-interval", "0"], {}, "--poll-interval"),
        ([], {"FELIX_ETCDSCHEME": "ftp"}, "configuration error: EtcdScheme"),
        ([], {"FELIX_FELIXHOSTNAME": "bad host"}, "FelixHostname"),
        ([], {"FELIX_DATAPLANEDRIVER": "kubernetes"}, "DataplaneDriver"),
    ],
)
def test_a_bad_start_exits_2_with_the_reason(
    fabric: Fabric, store: Store, args: list[str], env: dict[str, str], message: str
) -> None:
    host = fabric.add_host()
    process = host.start_calico_bgp(*args, env=env)
    assert process.proc.wait(30) == 2
    assert message in process.text()
    assert store.get(f"{H}/{host.hostname}/ip_addr_v4") is None  # nothing was written


def test_nothing_is_rendered_before_ready(fabric: Fabric, etcd: EtcdServer) -> None:
    """Like Felix, calico-bgp waits for /calico/v1/Ready before it trusts the datastore (it
    registers its host before, which needs no trust)."""
    store = Store(etcd)
    host = fabric.add_host()
    process = host.start_calico_bgp("--ip6", "none", env=store.env())
    process.wait_for(r"Registered host host1")
    wait_for(lambda: store.get(f"{H}/host1/ip_addr_v4") == host.ip, 10, "the registration")
    time.sleep(1.5)
    assert "Wrote" not in process.text() and not (host.work_dir / "bird.conf").exists()
    store.put(READY, "true")
    process.wait_for(r"Wrote .*bird\.conf")
