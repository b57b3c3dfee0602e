"""The e2e packet suite runs once per rules backend (NFTablesMode): a module's lab fixture asks
for ``backend``, and every Felix of that lab runs it (calico.lab.felix.LAB_NFTABLES_MODE).

``CALICO_E2E_BACKENDS=nftables`` (or ``iptables``; comma-separated) runs only those.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from calico.lab.felix import LAB_NFTABLES_MODE

MODES = {"iptables": "Disabled", "nftables": "Enabled"}
BACKENDS = [
    b.strip() for b in os.environ.get("CALICO_E2E_BACKENDS", ",".join(MODES)).split(",") if b
]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The rules backend of this module's lab: "iptables" or "nftables"."""
    name = str(request.param)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LAB_NFTABLES_MODE, MODES[name])
        yield name
