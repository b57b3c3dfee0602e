"""The fake kernel (kernel_model.py) that the manager tests run the real drivers on: it must
refuse what iptables-restore and ipset restore refuse, and accept what they accept with the same
result, or the manager tests could pass against a kernel that does not exist.

The first tests check the fake alone; the last two feed the same inputs, in the same order, to
the fake and to the real tools in a throwaway network namespace (nft and legacy iptables), and
compare each answer and the resulting tables and sets.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kernel_model import FakeKernel, declared_chains, hook_targets
from pyroute2.netlink.exceptions import NetlinkError

from calico.felix.kernel.commands import NetnsRunner
from calico.felix.kernel.ipset_text import parse_ipset_list, parse_ipset_save
from calico.felix.kernel.iptables_text import failed_line, parse_save
from calico.lab.netns import NetNS

RESTORE = ["iptables-restore", "--noflush", "--verbose", "--wait", "10"]
BASE = (
    "*filter\n:felix-A - [0:0]\n:felix-B - [0:0]\n-A felix-A -j felix-B\n"
    '-A felix-B -m comment --comment "a b" -j ACCEPT\n-I INPUT 1 -j felix-A\nCOMMIT\n'
)


def restore(kernel: FakeKernel, text: str, argv: list[str] = RESTORE) -> tuple[int, str]:
    proc = kernel.run(argv, input=text)
    return proc.returncode, proc.stderr


def test_a_transaction_is_parsed_into_the_model_and_saved_back() -> None:
    kernel = FakeKernel()
    assert restore(kernel, BASE) == (0, "")
    assert kernel.chains("filter") == {
        "INPUT": ["-j felix-A"],
        "FORWARD": [],
        "OUTPUT": [],
        "felix-A": ["-j felix-B"],
        "felix-B": ['-m comment --comment "a b" -j ACCEPT'],
    }
    assert hook_targets(kernel, "filter") == {"INPUT": ["felix-A"], "FORWARD": [], "OUTPUT": []}
    saved = kernel.run(["iptables-save", "-t", "filter"]).stdout
    assert parse_save(saved, "filter")["felix-B"] == [
        ("-m", "comment", "--comment", "a b", "-j", "ACCEPT")
    ]
    assert kernel.run(["ip6tables-save", "-t", "filter"]).stdout.count("-A ") == 0  # per version
    assert kernel.restores() == [BASE] and kernel.restores("ip6tables") == []
    assert declared_chains(BASE) == {"felix-A", "felix-B"}
    # Declaring an existing chain flushes it under --noflush; without it the table is replaced.
    restore(kernel, "*filter\n:felix-B - [0:0]\n-A felix-B -j RETURN\nCOMMIT\n")
    assert kernel.chains("filter")["felix-B"] == ["-j RETURN"]
    assert kernel.chains("filter")["INPUT"] == ["-j felix-A"]
    no_flush = ["iptables-restore"]
    assert restore(kernel, "*filter\n:felix-G - [0:0]\nCOMMIT\n", no_flush) == (0, "")
    assert kernel.chains("filter") == {"INPUT": [], "FORWARD": [], "OUTPUT": [], "felix-G": []}


@pytest.mark.parametrize(
    ("text", "bad_line"),
    [
        ("*filter\n:felix-C - [0:0]\n-A felix-Z -j ACCEPT\nCOMMIT\n", "-A felix-Z -j ACCEPT"),
        ("*filter\n:felix-C - [0:0]\n-A felix-C -j felix-Z\nCOMMIT\n", "-A felix-C -j felix-Z"),
        ("*filter\n-X felix-B\nCOMMIT\n", "-X felix-B"),  # referenced by felix-A
        ("*filter\n-D INPUT -j felix-A\n-X felix-A\nCOMMIT\n", "-X felix-A"),  # not empty
        ("*filter\n-X INPUT\nCOMMIT\n", "-X INPUT"),
        ("*filter\n-D felix-B -j DROP\nCOMMIT\n", "-D felix-B -j DROP"),
        ("*filter\n-I felix-B 3 -j DROP\nCOMMIT\n", "-I felix-B 3 -j DROP"),
        ("*filter\n:felix-E - [0:0]\n-A felix-E -j INPUT\nCOMMIT\n", "-A felix-E -j INPUT"),
        ("-A felix-B -j DROP\n", "-A felix-B -j DROP"),
        ("*filter\n*nat\nCOMMIT\n", "*nat"),
        ("*filter\n:felix-" + "x" * 23 + " - [0:0]\nCOMMIT\n", ":felix-" + "x" * 23 + " - [0:0]"),
        (
            "*filter\n:felix-E - [0:0]\n-A felix-E -m set --match-set nosuch src -j DROP\nCOMMIT\n",
            "-A felix-E -m set --match-set nosuch src -j DROP",
        ),
        (
            "*filter\n:felix-E - [0:0]\n-A felix-E -m nosuchmatch -j DROP\nCOMMIT\n",
            "-A felix-E -m nosuchmatch -j DROP",
        ),
    ],
)
def test_refused_input_changes_nothing_and_names_its_line(text: str, bad_line: str) -> None:
    kernel = FakeKernel()
    kernel.missing_modules.add("nosuchmatch")
    restore(kernel, BASE)
    before = kernel.chains("filter")
    rc, stderr = restore(kernel, text)
    assert rc != 0
    assert failed_line(stderr, text) == bad_line  # what IptablesTable reads to isolate a chain
    assert kernel.chains("filter") == before


def test_input_without_commit_is_refused_and_commits_nothing() -> None:
    kernel = FakeKernel()
    rc, stderr = restore(kernel, "*filter\n:felix-D - [0:0]\n")
    assert rc == 1 and "COMMIT expected at line 3" in stderr
    assert "felix-D" not in kernel.chains("filter")
    # A table is committed at its COMMIT: a later table's failure does not undo it.
    rc, _ = restore(kernel, "*filter\n:felix-F - [0:0]\nCOMMIT\n*nat\n-A felix-N -j ACCEPT\n")
    assert rc == 1 and "felix-F" in kernel.chains("filter")


def test_sets_in_rules_must_exist_in_the_family_and_hold_references() -> None:
    kernel = FakeKernel()
    v4_rule = (
        "*filter\n:felix-R - [0:0]\n-A felix-R -m set --match-set felix-s src -j DROP\nCOMMIT\n"
    )
    assert (
        kernel.run(["ipset", "restore"], input="create felix-s hash:ip family inet\n").returncode
        == 0
    )
    assert restore(kernel, v4_rule)[0] == 0
    rc, stderr = restore(kernel, v4_rule, ["ip6tables-restore", "--noflush"])
    assert rc != 0 and "protocol family of set felix-s is IPv4" in stderr
    assert kernel.references("felix-s") == 1
    listing = parse_ipset_list(kernel.run(["ipset", "list", "-t"]).stdout)
    assert listing["felix-s"].references == 1 and listing["felix-s"].members is None
    destroy = kernel.run(["ipset", "restore"], input="destroy felix-s\n")
    assert destroy.returncode == 1 and "in use by a kernel component" in destroy.stderr
    restore(kernel, "*filter\n:felix-R - [0:0]\n-X felix-R\nCOMMIT\n")
    assert kernel.run(["ipset", "restore"], input="destroy felix-s\n").returncode == 0
    assert kernel.sets == {}


def test_ipset_restore_sends_a_sets_adds_together_and_refuses_a_missing_set() -> None:
    kernel = FakeKernel()
    text = (
        "create felix-a hash:ip family inet maxelem 4\nadd felix-a 10.0.0.1\nCOMMIT\n"
        "add felix-a 10.0.0.2\nadd felix-b 10.0.0.3\nadd felix-a 10.0.0.4\n"
    )
    proc = kernel.run(["ipset", "restore"], input=text)
    assert proc.returncode == 1
    assert (
        proc.stderr == "ipset v7.17: Error in line 5: The set with the given name does not exist\n"
    )
    # Sent at COMMIT: applied. Waiting when felix-b was refused: dropped. After: never read.
    assert kernel.members("felix-a") == {"10.0.0.1"}
    saved = parse_ipset_save(kernel.run(["ipset", "save"]).stdout)
    assert saved["felix-a"].members() == ["10.0.0.1"] and saved["felix-a"].kset.maxelem == 4
    assert kernel.run(["ipset", "restore"], input="frobnicate x\n").returncode == 2


def test_links_routes_neighbours_proxies_and_sysctls_share_one_model() -> None:
    kernel = FakeKernel()
    index = kernel.add_link("tap1", up=True)
    kernel.netlink.route("replace", dst="10.65.0.2/32", oif=index, proto=80)
    kernel.netlink.neigh("replace", dst="10.65.0.2", ifindex=index, lladdr="aa:bb:cc:dd:ee:01")
    assert (
        kernel.run(["ip", "-6", "neigh", "replace", "proxy", "fd00::1", "dev", "tap1"]).returncode
        == 0
    )
    kernel.sysctls.write("net/ipv4/conf/tap1/rp_filter", "1")
    with pytest.raises(NetlinkError):  # a route del names the route: another device's is not it
        kernel.netlink.route("del", dst="10.65.0.2/32", oif=index + 1, proto=80)
    with pytest.raises(NetlinkError):
        kernel.netlink.route("del", dst="10.65.0.2/32", oif=index, proto=4)
    with pytest.raises(NetlinkError):
        kernel.netlink.link("get", ifname="tap9")
    missing = kernel.run(["ip", "-6", "neigh", "replace", "proxy", "fd00::1", "dev", "tap9"])
    assert missing.returncode == 1 and "Cannot find device" in missing.stderr
    with pytest.raises(OSError):
        kernel.sysctls.write("net/ipv4/conf/tap9/rp_filter", "1")
    assert kernel.proxies == {("tap1", "fd00::1")}
    kernel.set_link_up("tap1", False)  # the kernel flushes these at NETDEV_DOWN
    assert (kernel.routes, kernel.neighbours, kernel.proxies) == ({}, {}, set())
    assert kernel.sysctls.read("net/ipv4/conf/tap1/rp_filter") == "1"
    kernel.del_link("tap1")
    with pytest.raises(OSError):
        kernel.sysctls.read("net/ipv4/conf/tap1/rp_filter")
    with pytest.raises(AssertionError, match="does not model"):
        kernel.run(["conntrack", "-F"])


# -- against the real tools ----------------------------------------------------------------------

# (what it tries, restore input, accepted?), run in this order from the same start.
IPTABLES_STEPS: list[tuple[str, str, bool]] = [
    ("chains, rules and a hook", BASE, True),
    (
        "a rule in an unknown chain",
        "*filter\n:felix-C - [0:0]\n-A felix-Z -j ACCEPT\nCOMMIT\n",
        False,
    ),
    (
        "a jump to a missing chain",
        "*filter\n:felix-C - [0:0]\n-A felix-C -j felix-Z\nCOMMIT\n",
        False,
    ),
    ("-X of a referenced chain", "*filter\n-X felix-B\nCOMMIT\n", False),
    ("-X of a chain with rules", "*filter\n-D INPUT -j felix-A\n-X felix-A\nCOMMIT\n", False),
    ("-X of a built-in chain", "*filter\n-X INPUT\nCOMMIT\n", False),
    ("-X of a missing chain", "*filter\n-X felix-NOPE\nCOMMIT\n", False),
    ("-D of a rule that is not there", "*filter\n-D felix-B -j DROP\nCOMMIT\n", False),
    ("-I past the end", "*filter\n-I felix-B 3 -j DROP\nCOMMIT\n", False),
    ("no COMMIT", "*filter\n:felix-D - [0:0]\n", False),
    ("a line outside a table", "-A felix-B -j DROP\n", False),
    ("a table inside a table", "*filter\n*nat\nCOMMIT\n", False),
    ("an unknown table", "*bogus\nCOMMIT\n", False),
    ("a chain name of 29 characters", "*filter\n:felix-" + "x" * 23 + " - [0:0]\nCOMMIT\n", False),
    (
        "a jump to a built-in chain",
        "*filter\n:felix-E - [0:0]\n-A felix-E -j INPUT\nCOMMIT\n",
        False,
    ),
    (
        "a set that does not exist",
        "*filter\n:felix-E - [0:0]\n-A felix-E -m set --match-set felix-no src -j DROP\nCOMMIT\n",
        False,
    ),
    (
        "a match the kernel lacks",
        "*filter\n:felix-E - [0:0]\n-A felix-E -m nosuchmatch -j DROP\nCOMMIT\n",
        False,
    ),
    (
        "a set that exists",
        "*filter\n:felix-E - [0:0]\n-A felix-E -m set --match-set felix-s src -j DROP\nCOMMIT\n",
        True,
    ),
    ("declaring flushes", "*filter\n:felix-B - [0:0]\n-A felix-B -j RETURN\nCOMMIT\n", True),
    (
        "hooks moved",
        "*filter\n-D INPUT -j felix-A\n-I INPUT 1 -j felix-E\n-A INPUT -j felix-A\n"
        "-I INPUT 2 -s 10.65.0.9/32 -j ACCEPT\nCOMMIT\n",
        True,
    ),
    (
        "chains flushed then deleted together",
        "*filter\n:felix-A - [0:0]\n:felix-B - [0:0]\n-D INPUT -j felix-A\n-X felix-A\n"
        "-X felix-B\nCOMMIT\n",
        True,
    ),
    (
        "two tables, the second refused",
        "*filter\n:felix-F - [0:0]\nCOMMIT\n*nat\n-A felix-NOPE -j ACCEPT\nCOMMIT\n",
        False,
    ),
    ("-X of a chain a hook uses", "*filter\n-F felix-E\n-X felix-E\nCOMMIT\n", False),
    (
        "unhooked, flushed, deleted",
        "*filter\n-D INPUT -j felix-E\n-F felix-E\n-X felix-E\nCOMMIT\n",
        True,
    ),
]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_the_fake_agrees_with_iptables_restore(backend: str, netns: Callable[[], NetNS]) -> None:
    ns = netns()
    real = NetnsRunner(ns.name)
    fake = FakeKernel()
    fake.missing_modules.add("nosuchmatch")
    for runner in (real, fake):
        assert runner.run(["ipset", "restore"], input="create felix-s hash:ip\n").returncode == 0
    tool = f"iptables-{backend}"
    for what, text, accepted in IPTABLES_STEPS:
        real_rc = real.run([f"{tool}-restore", "--noflush"], input=text).returncode
        fake_rc = fake.run([f"{tool}-restore", "--noflush"], input=text).returncode
        assert (real_rc == 0, fake_rc == 0) == (accepted, accepted), what
        for table in ("filter", "nat"):
            real_save = real.run([f"{tool}-save", "-t", table]).stdout
            fake_save = fake.run([f"{tool}-save", "-t", table]).stdout
            assert parse_save(fake_save, table) == parse_save(real_save, table), what
    assert fake.chains("filter")["felix-F"] == []  # the model is not empty: it was compared
    v6_rule = (
        "*filter\n:felix-6 - [0:0]\n-A felix-6 -m set --match-set felix-s src -j DROP\nCOMMIT\n"
    )
    for runner in (real, fake):  # an IPv4 set in an IPv6 rule
        assert runner.run([f"ip6tables-{backend}-restore", "--noflush"], input=v6_rule).returncode


# (what it tries, ipset restore input, accepted?), in this order from the same start.
IPSET_STEPS: list[tuple[str, str, bool]] = [
    (
        "create and add",
        "create felix-a hash:ip family inet maxelem 6\nadd felix-a 10.0.0.1\n",
        True,
    ),
    ("an add to a missing set", "add felix-nosuch 10.0.0.1\n", False),
    (
        "a batch dropped by a missing set",
        "add felix-a 10.0.0.2\nadd felix-nosuch 10.0.0.1\nadd felix-a 10.0.0.3\n",
        False,
    ),
    ("a batch sent at COMMIT", "add felix-a 10.0.0.2\nCOMMIT\nadd felix-nosuch 10.0.0.1\n", False),
    ("a batch dropped by a bad member", "add felix-a 10.0.0.3\nadd felix-a notanip\n", False),
    ("a duplicate add", "add felix-a 10.0.0.1\n", False),
    (
        "a batch up to a refused element",
        "add felix-a 10.0.0.3\nadd felix-a 10.0.0.1\nadd felix-a 10.0.0.4\n",
        False,
    ),
    ("a duplicate add with -exist", "add felix-a 10.0.0.1 -exist\n", True),
    ("a del of a missing member", "del felix-a 10.9.9.9\n", False),
    ("a del from a missing set", "del felix-nosuch 10.0.0.1\n", False),
    ("a member of the other family", "add felix-a fd00::1\n", False),
    ("a second create", "create felix-a hash:ip family inet maxelem 6\n", False),
    ("a second create with -exist", "create felix-a hash:ip family inet maxelem 6 -exist\n", True),
    ("... with other parameters", "create felix-a hash:ip family inet maxelem 7 -exist\n", False),
    (
        "a v6 hash:net set",
        "create felix-b hash:net family inet6\nadd felix-b fd00::/64\nadd felix-b fd00:1::1/128\n"
        "add felix-b fd00:2::1/64\n",
        True,
    ),
    (
        "a batch sent when the set changes",
        "add felix-a 10.0.0.4\nadd felix-b fd00:3::/64\nadd felix-nosuch 10.0.0.1\n",
        False,
    ),
    ("a full set", "add felix-a 10.0.0.5\nadd felix-a 10.0.0.6\nadd felix-a 10.0.0.7\n", False),
    ("a /0", "add felix-b ::/0\n", False),
    ("a swap of different types", "swap felix-a felix-b\n", False),
    ("a swap with a missing set", "swap felix-a felix-nosuch\n", False),
    (
        "replace by swap",
        "create felix-t hash:ip family inet maxelem 6\nflush felix-t\nadd felix-t 10.0.0.9\n"
        "swap felix-t felix-a\ndestroy felix-t\nCOMMIT\n",
        True,
    ),
    ("a name of 32 characters", "create " + "x" * 32 + " hash:ip\n", False),
    ("an unknown command", "frobnicate felix-a\n", False),
    ("a destroy of a set a rule uses", "destroy felix-a\n", False),
    ("a destroy of a missing set", "destroy felix-nosuch\n", False),
    ("flush", "flush felix-b\n", True),
]


def test_the_fake_agrees_with_ipset_restore(netns: Callable[[], NetNS]) -> None:
    ns = netns()
    real = NetnsRunner(ns.name)
    fake = FakeKernel()
    uses_a = (
        "*filter\n:felix-R - [0:0]\n-A felix-R -m set --match-set felix-a src -j DROP\nCOMMIT\n"
    )
    for what, text, accepted in IPSET_STEPS:
        if what.startswith("a destroy of a set a rule uses"):
            for runner in (real, fake):
                assert runner.run(["iptables-restore", "--noflush"], input=uses_a).returncode == 0
        real_rc = real.run(["ipset", "restore"], input=text).returncode
        fake_rc = fake.run(["ipset", "restore"], input=text).returncode
        assert (real_rc == 0, fake_rc == 0) == (accepted, accepted), what
        real_sets = parse_ipset_save(real.run(["ipset", "save"]).stdout)
        fake_sets = parse_ipset_save(fake.run(["ipset", "save"]).stdout)
        assert {n: (s.kset, set(s.members())) for n, s in fake_sets.items()} == {
            n: (s.kset, set(s.members())) for n, s in real_sets.items()
        }, what
        real_refs = {
            n: s.references
            for n, s in parse_ipset_list(real.run(["ipset", "list", "-t"]).stdout).items()
        }
        fake_refs = {
            n: s.references
            for n, s in parse_ipset_list(fake.run(["ipset", "list", "-t"]).stdout).items()
        }
        assert fake_refs == real_refs, what
    assert fake.members("felix-a") == {"10.0.0.9"}  # the model is not empty: it was compared
