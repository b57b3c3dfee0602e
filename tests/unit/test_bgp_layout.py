"""calico-bgp's boundaries, read from the imports with `ast` (the helpers of
tests/unit/test_boundaries.py): the modules that turn etcd data into BIRD's text and parse BIRD's
answers are pure (nothing they reach does I/O), the daemon never imports Felix's daemon, kernel
code or Neutron, and the numbers the BIRD file shares with Felix agree with Felix's."""

from __future__ import annotations

import pytest
from test_boundaries import IO_MODULES, MODULES, NEUTRON, imports, reachable

from calico.bgp import render
from calico.felix.kernel import routes

PURE = ["calico.bgp.model", "calico.bgp.peers", "calico.bgp.render", "calico.bgp.status"]
BGP = sorted(m for m in MODULES if m == "calico.bgp" or m.startswith("calico.bgp."))


def _top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


@pytest.mark.parametrize("module", PURE)
def test_rendering_and_parsing_reach_no_io(module: str) -> None:
    problems = []
    for reached in sorted(reachable(module)):
        bad = {name for name in imports(reached) if _top(name) in IO_MODULES}
        bad |= {name for name in imports(reached) if name.startswith("calico.common.etcd")}
        if bad:
            problems.append(f"{module} -> {reached} imports {sorted(bad)}")
    assert not problems, "\n".join(problems)


def test_the_daemon_keeps_out_of_felix_and_neutron() -> None:
    assert len(BGP) >= 12
    forbidden = ("calico.felix.daemon", "calico.felix.cli", "calico.felix.kernel",
                 "calico.felix.dataplane", "calico.felix.calc", "calico.openstack")  # fmt: skip
    for module in BGP:
        reached = reachable(module)
        assert not {m for m in reached if m.startswith(forbidden)}, module
        assert not {n for m in reached for n in imports(m) if _top(n) in NEUTRON}, module


def test_felix_route_protocol_number_agrees() -> None:
    assert render.RTPROT_FELIX == routes.RTPROT_FELIX
