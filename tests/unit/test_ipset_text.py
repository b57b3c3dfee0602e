"""calico.felix.kernel.ipset_text: pure parsing of ``ipset list`` / ``ipset save`` output and the
normalisation of members (no kernel, no root). The driver that uses it is tested in
tests/dataplane/test_ipsets.py."""

from __future__ import annotations

import pytest

from calico.felix.kernel.ipset_text import (
    HASH_IP,
    HASH_NET,
    KernelSet,
    normalize,
    parse_ipset_list,
    parse_ipset_save,
)

# -- ipset list ----------------------------------------------------------------------------------


def test_parse_ipset_list() -> None:
    text = (
        "Name: a\nType: hash:net\nRevision: 7\nHeader: family inet hashsize 1024 maxelem 10\n"
        "Size in memory: 552\nReferences: 2\nNumber of entries: 2\nMembers:\n10.0.0.0/8\n"
        "10.1.1.1 timeout 5\n\nName: b\nType: hash:ip\nRevision: 6\n"
        "Header: family inet6 hashsize 1024 maxelem 65536\nReferences: 0\nNumber of entries: 0\n"
        "Members:\n"
    )
    sets = parse_ipset_list(text)
    assert sets["a"].members == {"10.0.0.0/8", "10.1.1.1"}
    assert (sets["a"].set_type, sets["a"].family, sets["a"].maxelem) == (HASH_NET, "inet", 10)
    assert sets["a"].references == 2
    assert sets["b"].members == frozenset() and sets["b"].family == "inet6"


def test_parse_terse_ipset_list_has_no_members() -> None:
    text = (
        "Name: felix-v4-x\nType: hash:ip\nRevision: 6\n"
        "Header: family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x1\n"
        "Size in memory: 200\nReferences: 0\nNumber of entries: 3\n"
        "\n"
        "Name: other\nType: hash:net\nRevision: 7\nHeader: family inet6\n"
    )
    sets = parse_ipset_list(text)
    assert sets == {
        "felix-v4-x": KernelSet("felix-v4-x", HASH_IP, "inet", 1048576, 0, None),
        "other": KernelSet("other", HASH_NET, "inet6", None, None, None),
    }
    assert parse_ipset_list("") == {}
    assert parse_ipset_list("\n\n") == {}


# -- ipset save ----------------------------------------------------------------------------------


def test_parse_ipset_save() -> None:
    text = (
        "create felix-v4-a hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12\n"
        "add felix-v4-a 10.0.0.1\n"
        "add felix-v4-a 10.0.0.2 timeout 5\n"
        "create felix-v6-b hash:net family inet6 hashsize 1024 maxelem 5\n"
        "create other hash:ip family inet\n"
        "add other 1.2.3.4\n"
    )
    sets = parse_ipset_save(text)
    assert sorted(sets) == ["felix-v4-a", "felix-v6-b", "other"]
    assert sets["felix-v4-a"].members() == ["10.0.0.1", "10.0.0.2"]
    assert sets["felix-v6-b"].members() == []
    assert sets["felix-v6-b"].kset.family == "inet6"
    assert sets["felix-v6-b"].kset.set_type == "hash:net"
    assert sets["felix-v6-b"].kset.maxelem == 5
    assert sets["felix-v4-a"].digest() != sets["other"].digest()


def test_saved_text_and_digest_follow_each_sets_lines() -> None:
    create = "create felix-v4-a hash:ip family inet hashsize 1024 maxelem 65536\n"
    one = parse_ipset_save(create + "add felix-v4-a 10.0.0.1\n")["felix-v4-a"]
    again = parse_ipset_save(create + "add felix-v4-a 10.0.0.1\n\n")["felix-v4-a"]
    two = parse_ipset_save(create + "add felix-v4-a 10.0.0.1\nadd felix-v4-a 10.0.0.2\n")
    assert one.text == create + "add felix-v4-a 10.0.0.1"
    assert one.digest() == again.digest()  # trailing blank lines are not the set's
    assert one.digest() != two["felix-v4-a"].digest()
    assert one.kset.maxelem == 65536 and one.kset.members is None
    odd = parse_ipset_save("create x hash:ip family inet maxelem lots\ncreate\n")
    assert odd["x"].kset.maxelem is None and list(odd) == ["x"]
    assert parse_ipset_save("") == {}


# -- normalize -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "set_type", "version", "expected"),
    [
        ("10.65.0.1", HASH_IP, 4, "10.65.0.1"),
        ("10.65.0.1/32", HASH_IP, 4, "10.65.0.1"),
        (" 10.65.0.1 ", HASH_IP, 4, "10.65.0.1"),
        ("10.65.0.1/32", HASH_NET, 4, "10.65.0.1"),
        ("10.66.1.7/16", HASH_NET, 4, "10.66.0.0/16"),  # host bits dropped, as the kernel does
        ("FD00:65:0:0::1", HASH_IP, 6, "fd00:65::1"),
        ("fd00:65::1/128", HASH_NET, 6, "fd00:65::1"),
        ("fd00:65::/64", HASH_NET, 6, "fd00:65::/64"),
        ("10.65.0.1", HASH_IP, 6, None),  # the other family's table takes it
        ("fd00:65::1", HASH_NET, 4, None),
    ],
)
def test_normalize_gives_the_kernels_spelling(
    member: str, set_type: str, version: int, expected: str | None
) -> None:
    assert normalize(member, set_type, version) == expected


@pytest.mark.parametrize(
    ("member", "set_type", "version", "logged"),
    [
        ("10.67.0.0/24", HASH_IP, 4, "a hash:ip set holds single addresses"),
        ("0.0.0.0/0", HASH_NET, 4, "cannot hold a /0"),
        ("::/0", HASH_NET, 6, "cannot hold a /0"),
        ("fe80::1%eth0", HASH_IP, 6, "invalid ipset member"),
        ("fe80::1%eth0\nadd x y", HASH_IP, 6, "invalid ipset member"),
        ("10.67.0.1\nadd felix-v4-a 1.2.3.4", HASH_IP, 4, "invalid ipset member"),
        ("not-an-ip", HASH_IP, 4, "invalid ipset member"),
        ("10.67.0.0/33", HASH_NET, 4, "invalid ipset member"),
    ],
)
def test_normalize_refuses_what_does_not_belong_and_says_why(
    member: str, set_type: str, version: int, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    normalize.cache_clear()  # a refused member is logged once per cached normalisation
    assert normalize(member, set_type, version) is None
    assert logged in caplog.text
