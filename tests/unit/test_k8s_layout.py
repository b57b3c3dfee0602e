"""calico.k8s stays etcd-free and Neutron-free, and its mapping stays pure (no I/O module is
loaded by importing it), checked in a fresh interpreter per module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PURE = ["names", "selectors", "mapping", "policy", "model"]
ALL = [*PURE, "settings", "client", "syncer", "felix"]
NEVER = ("calico.common.etcd", "etcd3gw", "neutron", "neutron_lib", "oslo_config")
IO = ("requests", "urllib3", "socket", "ssl", "http.client", "subprocess", "yaml")


def loaded(module: str) -> set[str]:
    code = f"import sys, json, calico.k8s.{module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", ALL)
def test_no_etcd_and_no_neutron(module: str) -> None:
    modules = loaded(module)
    bad = sorted(m for m in modules if m.startswith(NEVER))
    assert not bad, f"calico.k8s.{module} loads {bad}"


@pytest.mark.parametrize("module", PURE)
def test_the_mapping_is_pure(module: str) -> None:
    modules = loaded(module)
    bad = sorted(m for m in modules if m in IO)
    assert not bad, f"calico.k8s.{module} loads {bad}"
