"""describe_error: what Felix and the tools say when etcd cannot be reached (no etcd here)."""

from __future__ import annotations

import requests

from calico.common.etcd.transport import describe_error

RESET = "('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))"


def test_a_reset_on_https_is_reported_as_the_likely_tls_mismatch() -> None:
    # A plain etcd may reset a TLS ClientHello instead of failing the handshake.
    message = describe_error(requests.exceptions.ConnectionError(RESET), "https://127.0.0.1:2379")
    assert message.startswith("TLS error (likely")
    assert "if etcd serves plain HTTP, use http://" in message


def test_a_reset_on_plain_http_is_not_called_a_tls_error() -> None:
    message = describe_error(requests.exceptions.ConnectionError(RESET), "http://127.0.0.1:2379")
    assert "TLS error" not in message
    assert "if it serves TLS only, use https://" in message
