"""calico.felix.kernel.ipset_text: pure parsing of ``ipset list`` / ``ipset save`` output, the
normalisation of members and the ``ipset restore`` input (no kernel, no root). The driver that
uses it is tested in tests/dataplane/test_ipsets.py."""

from __future__ import annotations

import pytest

from calico.felix.kernel.ipset_text import (
    HASH_IP,
    HASH_NET,
    KernelSet,
    delta_op,
    destroy_op,
    failed_op,
    normalize,
    parse_ipset_list,
    parse_ipset_save,
    replace_op,
    restore_input,
    restore_pieces,
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
    assert one.text == create.removeprefix("create ") + "add felix-v4-a 10.0.0.1"
    assert one.members() == ["10.0.0.1"]
    assert one.digest() == again.digest()  # trailing blank lines are not the set's
    assert one.digest() != two["felix-v4-a"].digest()
    assert one.kset.maxelem == 65536 and one.kset.members is None
    odd = parse_ipset_save("create x hash:ip family inet maxelem lots\ncreate\n")
    assert odd["x"].kset.maxelem is None and list(odd) == ["x"]
    assert parse_ipset_save("") == {}
    assert list(parse_ipset_save("# a header\n" + create + "add felix-v4-a 10.0.0.1\n")) == [
        "felix-v4-a"
    ]


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


# -- ipset restore input -------------------------------------------------------------------------

PARAMS = (HASH_IP, "inet", 1024)


def test_a_delta_deletes_before_it_adds_and_is_none_without_changes() -> None:
    op = delta_op("felix-v4-a", ["10.0.0.3"], ["10.0.0.1", "10.0.0.2"])
    assert op is not None and op.kind == "delta"
    assert op.lines == [
        "del felix-v4-a 10.0.0.1",
        "del felix-v4-a 10.0.0.2",
        "add felix-v4-a 10.0.0.3",
    ]
    assert op.members == ["10.0.0.3"] and op.line_count == 3
    assert delta_op("felix-v4-a", [], []) is None


def test_a_replace_fills_the_temporary_set_and_swaps_it_in() -> None:
    op = replace_op("felix-v4-a", "felix-tmp-v4-a", PARAMS, {"10.0.0.2", "10.0.0.1"}, None, None)
    create = "hash:ip family inet maxelem 1024"
    assert op.kind == "replace" and op.name == "felix-v4-a"
    assert op.lines == [
        f"create felix-v4-a {create} -exist",
        f"create felix-tmp-v4-a {create} -exist",
        "flush felix-tmp-v4-a",
        "add felix-tmp-v4-a 10.0.0.1",
        "add felix-tmp-v4-a 10.0.0.2",
        "swap felix-tmp-v4-a felix-v4-a",
        "destroy felix-tmp-v4-a",
    ]


def test_a_replace_recreates_what_the_swap_or_create_would_refuse() -> None:
    same = KernelSet("felix-v4-a", HASH_IP, "inet", 1024)
    # The main set exists as wanted (any maxelem: the swap gives it ours): not created again.
    old_size = KernelSet("felix-v4-a", HASH_IP, "inet", 10)
    for existing in (same, old_size):
        lines = replace_op("felix-v4-a", "felix-tmp-v4-a", PARAMS, [], existing, None).lines
        assert not any(
            line.startswith(("create felix-v4-a", "destroy felix-v4-a")) for line in lines
        )
    # Another type or family cannot be swapped with: destroyed first, then created.
    other = KernelSet("felix-v4-a", "hash:net", "inet", 1024)
    lines = replace_op("felix-v4-a", "felix-tmp-v4-a", PARAMS, [], other, None).lines
    assert lines[:2] == [
        "destroy felix-v4-a",
        "create felix-v4-a hash:ip family inet maxelem 1024 -exist",
    ]
    # A leftover temporary set with other parameters would make its "create -exist" fail.
    temp = KernelSet("felix-tmp-v4-a", HASH_IP, "inet", 10)
    lines = replace_op("felix-v4-a", "felix-tmp-v4-a", PARAMS, [], same, temp).lines
    assert lines[0] == "destroy felix-tmp-v4-a"
    good_temp = KernelSet("felix-tmp-v4-a", HASH_IP, "inet", 1024)
    lines = replace_op("felix-v4-a", "felix-tmp-v4-a", PARAMS, [], same, good_temp).lines
    assert "destroy felix-tmp-v4-a" == lines[-1] and lines.count("destroy felix-tmp-v4-a") == 1


def test_restore_input_and_the_op_an_error_names() -> None:
    ops = [
        delta_op("felix-v4-a", ["10.0.0.1", "10.0.0.2"], []),  # lines 1-2
        destroy_op("felix-v4-b"),  # line 3
        delta_op("felix-v4-c", ["10.0.0.3"], ["10.0.0.4"]),  # lines 4-5
    ]
    assert all(op is not None for op in ops)
    checked = [op for op in ops if op is not None]
    text = restore_input(checked)
    assert text.splitlines()[2] == "destroy felix-v4-b" and text.endswith("\nCOMMIT\n")
    assert len(text.splitlines()) == 6
    error = "ipset v7.17: Error in line {}: Set cannot be destroyed: it is in use\n"
    found = [failed_op(error.format(n), checked) for n in range(1, 6)]
    assert found == [0, 0, 1, 2, 2]
    assert failed_op(error.format(6), checked) == -1  # COMMIT: no op's line
    assert failed_op(error.format(0), checked) == -1
    assert failed_op("ipset v7.17: Kernel error received: Operation not permitted\n", checked) == -1
    assert restore_input([]) == "COMMIT\n"


def test_a_big_replace_is_made_a_few_thousand_lines_at_a_time() -> None:
    members = [f"10.65.{i // 256}.{i % 256}" for i in range(10_000)]
    op = replace_op("felix-v4-a", "felix-tmp-v4-a", PARAMS, members, None, None)
    pieces = list(op.pieces())
    # Its head, its members in pieces of 4,096 lines, its tail; each piece ends a line.
    assert [piece.count("\n") for piece in pieces] == [3, 4096, 4096, 1808, 2]
    assert op.line_count == 10_005 == len(op.lines)
    assert op.lines[3:5] == ["add felix-tmp-v4-a 10.65.0.0", "add felix-tmp-v4-a 10.65.0.1"]
    delta = delta_op("felix-v4-a", ["10.0.0.3"], ["10.0.0.1"])
    assert delta is not None
    ops = [op, delta, destroy_op("felix-v4-b")]
    assert "".join(restore_pieces(ops)) == restore_input(ops)
    assert restore_input(ops).endswith("add felix-v4-a 10.0.0.3\ndestroy felix-v4-b\nCOMMIT\n")
