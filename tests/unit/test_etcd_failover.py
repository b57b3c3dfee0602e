"""calico.common.etcd.failover: each request tries the endpoints in turn until one answers,
and settings_for_endpoints / parse_endpoints, which give it its endpoint list."""

from __future__ import annotations

import logging

import pytest

from calico.common.etcd.base import (
    EtcdRequestError,
    EtcdUnavailable,
    Snapshot,
    WatchEvent,
    parse_endpoints,
    settings_for_endpoints,
)
from calico.common.etcd.failover import FailoverClient


class FakeCluster:
    """A KVStore over three endpoints, some of them down."""

    def __init__(self, down: set[int]):
        self.urls = ["http://e0:2379", "http://e1:2379", "http://e2:2379"]
        self.index = 0
        self.down = down
        self.data: dict[str, str] = {}
        self.tried: list[str] = []

    @property
    def endpoint(self) -> str:
        return self.urls[self.index]

    @property
    def cluster_id(self) -> str | None:
        return "c1"

    def rotate(self) -> None:
        self.index = (self.index + 1) % len(self.urls)

    def _answer(self) -> None:
        self.tried.append(self.endpoint)
        if self.index in self.down:
            raise EtcdUnavailable(f"{self.endpoint}: [Errno 111] Connection refused")

    def get(self, key: str) -> str | None:
        self._answer()
        return self.data.get(key)

    def read_prefix(self, prefix: str) -> Snapshot:
        self._answer()
        return Snapshot(1, {k: v for k, v in self.data.items() if k.startswith(prefix + "/")})

    def put(self, key: str, value: str, ttl: int | None = None) -> None:
        self._answer()
        self.data[key] = value

    def delete(self, key: str) -> bool:
        self._answer()
        return self.data.pop(key, None) is not None

    def delete_prefix(self, prefix: str) -> None:
        self._answer()

    def delete_empty_dir(self, path: str) -> bool:
        self._answer()
        return False

    def get_versioned(self, key: str) -> tuple[str, int] | None:
        self._answer()
        return (self.data[key], 1) if key in self.data else None

    def read_prefix_versioned(self, prefix: str) -> dict[str, tuple[str, int]]:
        self._answer()
        return {}

    def create(self, key: str, value: str, ttl: int | None = None) -> bool:
        self._answer()
        if key in self.data:
            return False
        self.data[key] = value
        return True

    def put_if(self, key: str, value: str, version: int, ttl: int | None = None) -> int | None:
        self._answer()
        if key == "/refused":
            raise EtcdRequestError("permission denied")
        return 2

    def delete_if(self, key: str, version: int) -> bool:
        self._answer()
        return True

    def watch(self, prefix: str, start_revision: int, timeout: float) -> list[WatchEvent]:
        self._answer()
        return []

    def close(self) -> None:
        pass


def test_a_request_moves_on_until_an_endpoint_answers(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeCluster(down={0, 1})
    client = FailoverClient(fake, 3)
    with caplog.at_level(logging.WARNING, "calico.common.etcd.failover"):
        client.put("/k", "v")
    assert fake.tried == ["http://e0:2379", "http://e1:2379", "http://e2:2379"]
    assert fake.data == {"/k": "v"}
    assert len(caplog.records) == 2 and "trying the next endpoint" in caplog.text
    # It stays on the endpoint that answered.
    fake.tried.clear()
    assert client.get("/k") == "v" and client.create("/k2", "x")
    assert fake.tried == ["http://e2:2379"] * 2
    assert client.endpoint == "http://e2:2379" and client.cluster_id == "c1"


def test_every_endpoint_down_raises_after_one_try_each() -> None:
    fake = FakeCluster(down={0, 1, 2})
    client = FailoverClient(fake, 3)
    with pytest.raises(EtcdUnavailable, match="e2"):
        client.read_prefix_versioned("/calico")
    assert fake.tried == ["http://e0:2379", "http://e1:2379", "http://e2:2379"]


def test_every_operation_fails_over() -> None:
    calls = {
        "get": lambda c: c.get("/k"),
        "read_prefix": lambda c: c.read_prefix("/calico"),
        "delete": lambda c: c.delete("/k"),
        "delete_prefix": lambda c: c.delete_prefix("/calico"),
        "delete_empty_dir": lambda c: c.delete_empty_dir("/calico/x"),
        "get_versioned": lambda c: c.get_versioned("/k"),
        "put_if": lambda c: c.put_if("/k", "v", 1),
        "delete_if": lambda c: c.delete_if("/k", 1),
    }
    for name, call in calls.items():
        fake = FakeCluster(down={0})
        call(FailoverClient(fake, 3))
        assert fake.tried == ["http://e0:2379", "http://e1:2379"], name


def test_a_refusal_is_not_retried_and_a_watch_is_left_to_its_syncer() -> None:
    fake = FakeCluster(down=set())
    client = FailoverClient(fake, 3)
    with pytest.raises(EtcdRequestError):
        client.put_if("/refused", "v", 1)
    assert fake.tried == ["http://e0:2379"]
    fake.down = {0}
    fake.tried.clear()
    with pytest.raises(EtcdUnavailable):
        client.watch("/calico", 5, 1.0)
    assert fake.tried == ["http://e0:2379"]


def test_one_endpoint_is_tried_once() -> None:
    fake = FakeCluster(down={0})
    with pytest.raises(EtcdUnavailable):
        FailoverClient(fake, 1).get("/k")
    assert fake.tried == ["http://e0:2379"]


def test_settings_for_endpoints() -> None:
    settings = settings_for_endpoints(["https://a:2379/", "https://[fd00::1]:2379"], ca_file="/ca")
    assert settings.endpoints == ("https://a:2379", "https://[fd00::1]:2379")
    assert settings.is_https and settings.ca_file == "/ca"
    assert settings_for_endpoints("http://a:1").endpoints == ("http://a:1",)
    with pytest.raises(ValueError, match="TLS files"):
        settings_for_endpoints("http://a:1", key_file="/k", cert_file="/c")


@pytest.mark.parametrize(
    "text",
    [
        "",
        " , ",
        "a:2379",
        "ftp://a:1",
        "http://a:1,https://b:2",
        "http://a:2379/v2",
        "http://a:70000",
        "http://a:0",
        "http://a:x",
        "http://u@a:1",
        "http://a:1#frag",
        "http://a b:1",
        "http://a\n.example:1",
        "http://-a:1",
        "http://a..b:1",
        "http://[fe80::1%eth0]:1",
        "http://:2379",
    ],
)
def test_bad_endpoint_lists(text: str) -> None:
    with pytest.raises(ValueError, match="etcd endpoint"):
        parse_endpoints(text)


def test_good_endpoint_lists() -> None:
    assert parse_endpoints("http://etcd-1.example.com:2379, http://10.0.0.2:2379/,") == (
        "http://etcd-1.example.com:2379",
        "http://10.0.0.2:2379",
    )
    assert parse_endpoints(["http://[::1]:2379", "http://localhost"]) == (
        "http://[::1]:2379",
        "http://localhost",
    )
