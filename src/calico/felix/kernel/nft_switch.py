"""Choosing between the rules backends (NFTablesMode) and removing the other one's state.

* `probe_nftables`: whether this kernel and ``nft`` accept what Felix's table uses (an ``inet``
  table, a verdict map, ``fib``, ``inet`` NAT at Felix's priorities), by checking a probe table
  with ``nft --check`` (evaluated and sent to the kernel, then aborted: nothing is created).
* `remove_nft_table`: iptables mode's start-of-day cleanup after a switch from nftables (one
  ``delete table inet felix``; nothing else in nftables is ever Felix's).
* `remove_iptables_state`: nftables mode's cleanup after a switch from iptables: every
  ``felix-*`` chain and hook jump in the filter, nat and raw tables of both families, then every
  ``felix-*`` ipset. The host's own rules and sets are never touched.

Both removals run StartupCleanupDelay after the first in-sync, so traffic is policed by the
previous backend until the new one has programmed everything (a packet then passes both, whose
policy is the same).
"""

from __future__ import annotations

import logging

from calico.felix.dataplane import names
from calico.felix.kernel.commands import CommandRunner
from calico.felix.kernel.iptables import IptablesError, IptablesTable, uses_nft

log = logging.getLogger(__name__)

NFT = "nft"
PROBE_TABLE = "felix-probe"
_PROBE = f"""add table inet {PROBE_TABLE}
add chain inet {PROBE_TABLE} raw {{ type filter hook prerouting priority -305; policy accept; }}
add chain inet {PROBE_TABLE} nat {{ type nat hook prerouting priority -105; policy accept; }}
add map inet {PROBE_TABLE} wl {{ type ifname : verdict; }}
add set inet {PROBE_TABLE} pools {{ type ipv4_addr; flags interval; }}
add rule inet {PROBE_TABLE} raw meta nfproto ipv6 iifname "tap*" fib saddr . iif oif missing drop
add rule inet {PROBE_TABLE} raw iifname vmap @wl
add rule inet {PROBE_TABLE} raw ip saddr @pools meta mark set meta mark | 0x01000000
add rule inet {PROBE_TABLE} nat ip daddr 169.254.169.254 meta l4proto 6 th dport 80 \
dnat ip to 127.0.0.1:8775
"""
TABLES = (names.FILTER, names.NAT, names.RAW)


def probe_nftables(runner: CommandRunner) -> str | None:
    """None if Felix's nftables table can be used here, else why not."""
    try:
        proc = runner.run([NFT, "--check", "-f", "-"], input=_PROBE)
    except OSError as e:
        return f"cannot run {NFT}: {e}"
    if proc.returncode != 0:
        return f"{NFT} --check refused Felix's table: {proc.stderr.strip()[:300]}"
    return None


def auto_uses_nftables(runner: CommandRunner) -> tuple[bool, str]:
    """NFTablesMode=Auto: (use nftables?, why)."""
    try:
        nf_tables = uses_nft(4, runner)
    except OSError:
        nf_tables = False
    if not nf_tables:
        return False, "the host's iptables is not the nf_tables variant"
    problem = probe_nftables(runner)
    if problem is not None:
        return False, problem
    return True, "the host's iptables is iptables-nft and the kernel accepts Felix's table"


def remove_nft_table(runner: CommandRunner, table: str = "felix") -> None:
    """Delete Felix's nftables table if there is one (best effort, logged)."""
    try:
        listed = runner.run([NFT, "list", "tables"])
    except OSError:
        return  # no nft: there cannot be a table of ours either
    if f"table inet {table}\n" not in listed.stdout + "\n":
        return
    proc = runner.run([NFT, "delete", "table", "inet", table])
    if proc.returncode == 0:
        log.info("Removed the nftables table inet %s of an earlier NFTablesMode run", table)
    else:
        log.warning("Could not remove nftables table inet %s: %s", table, proc.stderr.strip())


def remove_iptables_state(runner: CommandRunner, versions: tuple[int, ...] = (4, 6)) -> None:
    """Delete every felix-* chain and hook (both families, filter/nat/raw) and every felix-*
    ipset (best effort, logged)."""
    removed = 0
    for version in versions:
        for table in TABLES:
            driver = IptablesTable(version, table, runner)
            driver.end_grace_period()  # nothing is desired: every felix-* chain is an orphan
            try:
                if driver.apply():
                    removed += 1
            except (IptablesError, OSError) as e:
                log.warning("Could not remove Felix's iptables chains (v%d %s): %s",
                            version, table, e)  # fmt: skip
    try:
        listed = runner.run(["ipset", "list", "-n"])
    except OSError:
        listed = None
    sets = [s for s in (listed.stdout.split() if listed else []) if names.is_felix_name(s)]
    if sets:
        script = "".join(f"destroy {name}\n" for name in sets)
        proc = runner.run(["ipset", "restore"], input=script)
        if proc.returncode != 0:
            log.warning("Could not destroy every Felix ipset: %s", proc.stderr.strip())
    if removed or sets:
        log.info(
            "Removed the iptables backend's state of an earlier run (%d tables, %d ipsets)",
            removed,
            len(sets),
        )
