"""What Felix says when etcd cannot be used (issue 12): every "etcd unavailable" carries its
reason on both APIs, and a scheme that does not match the server's says what is probably wrong.
Real etcd servers, plain and TLS-only."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from calico.common.etcd import connect
from calico.common.etcd.base import EtcdSettings, EtcdUnavailable
from calico.lab.etcd_server import EtcdServer


def _error(api: str, url: str) -> str:
    client = connect(api, EtcdSettings((url,), timeout=3))
    try:
        with pytest.raises(EtcdUnavailable) as caught:
            client.get("/calico/v1/Ready")
    finally:
        client.close()
    return str(caught.value)


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_connection_refused_has_its_reason(api: str) -> None:
    assert "Connection refused" in _error(api, "http://127.0.0.1:1")


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_plain_http_to_a_tls_only_etcd_says_so(
    api: str, etcd_factory: Callable[..., EtcdServer]
) -> None:
    server = etcd_factory(tls=True)
    message = _error(api, server.client_url.replace("https://", "http://"))
    # A TLS server meets an HTTP request by closing the connection: Python sees the close
    # (RemoteDisconnected) or, depending on timing, a reset; either way the hint must be there.
    assert "RemoteDisconnected" in message or "Connection reset by peer" in message
    assert "if it serves TLS only, use https://" in message


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_tls_to_a_plain_etcd_says_so(api: str, etcd_factory: Callable[..., EtcdServer]) -> None:
    server = etcd_factory()
    message = _error(api, server.client_url.replace("http://", "https://"))
    assert "TLS error" in message
    assert "if etcd serves plain HTTP, use http://" in message
