"""What a lab Felix programmed, read (and tampered with) the same way whichever rules backend it
runs (NFTablesMode): iptables chains and ipsets, or the chains and sets of ``table inet felix``.

For tests and benchmarks: everything runs inside the lab host's namespace.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from calico.lab.felix import LAB_NFTABLES_MODE
from calico.lab.netns import NetNS

TABLE = ("inet", "felix")
# nftables: forwarded traffic meets Felix in two base chains (source, then destination policy).
FORWARD_CHAINS = ("felix-FORWARD", "felix-FORWARD-TO")
_HANDLE_RE = re.compile(r" # handle \d+$")
_COMMENT_RE = re.compile(r' comment "[^"]*"$')


def lab_backend() -> str:
    """The backend lab Felixes run: "nftables" or "iptables" (see LAB_NFTABLES_MODE)."""
    mode = os.environ.get(LAB_NFTABLES_MODE, "Disabled")
    return "nftables" if mode.lower() == "enabled" else "iptables"


class DataplaneView:
    def __init__(self, ns: NetNS, backend: str | None = None) -> None:
        self.ns = ns
        self.backend = backend or lab_backend()
        self.nftables = self.backend == "nftables"

    def _run(self, *argv: str, check: bool = True, input: str | None = None) -> str:
        return self.ns.run(list(argv), check=check, input=input).stdout

    def running_in(self, felix_output: str) -> str | None:
        """None if a Felix's output says its driver runs this backend, else what it says."""
        wanted = "nftables (table inet felix)" if self.nftables else "iptables,"
        for line in felix_output.splitlines():
            if "Dataplane driver ready: " in line:
                said = line.split("Dataplane driver ready: ", 1)[1]
                return None if said.startswith(wanted) else said
        return "(no 'Dataplane driver ready' line)"

    # -- reading -------------------------------------------------------------------------------

    def hooked(self, v6: bool = False) -> bool:
        """Felix's forward policy is hooked in: iptables' FORWARD jumps to felix-FORWARD, or the
        nftables base chain felix-FORWARD exists on the forward hook."""
        if self.nftables:
            texts = [
                self._run("nft", "list", "chain", *TABLE, chain, check=False)
                for chain in FORWARD_CHAINS
            ]
            return all("hook forward" in text for text in texts)
        tool = "ip6tables" if v6 else "iptables"
        return "felix-FORWARD" in self._run(tool, "-w", "-S", "FORWARD")

    def chain_rules(self, chain: str) -> list[str]:
        """The rules of one chain, as the tool lists them ([] if the chain does not exist)."""
        if self.nftables:
            proc = self.ns.run(["nft", "list", "chain", *TABLE, chain], check=False)
            if proc.returncode != 0:
                return []
            lines = [line.strip() for line in proc.stdout.splitlines()]
            body = lines[lines.index(f"chain {chain} {{") + 1 : -2]
            return [line for line in body if line and not line.startswith("type ")]
        proc = self.ns.run(["iptables", "-w", "-S", chain], check=False)
        return [line for line in proc.stdout.splitlines() if line.startswith("-A ")]

    def chains(self, v6: bool = False) -> set[str]:
        """Felix's chain names (iptables: the filter table of one family; nftables: the table)."""
        if self.nftables:
            return set(self._table()["chains"])
        saved = self._run("ip6tables-save" if v6 else "iptables-save", "-t", "filter")
        return set(re.findall(r"^:(felix-\S+) ", saved, flags=re.MULTILINE))

    def sets(self) -> dict[str, set[str]]:
        """Felix's IP sets and their members (ipsets, or the table's address sets)."""
        if self.nftables:
            return {
                name: members
                for name, members in self._table()["sets"].items()
                if name.startswith("felix-v")
            }
        sets: dict[str, set[str]] = {}
        current: set[str] | None = None
        in_members = False
        for line in self._run("ipset", "list").splitlines():
            if line.startswith("Name: "):
                name = line.removeprefix("Name: ").strip()
                current = sets.setdefault(name, set()) if name.startswith("felix-") else None
                in_members = False
            elif line.startswith("Members:"):
                in_members = True
            elif in_members and line.strip() and current is not None:
                current.add(line.split()[0])
        return sets

    def _table(self) -> dict[str, Any]:
        proc = self.ns.run(["nft", "-j", "list", "table", *TABLE], check=False)
        result: dict[str, Any] = {"chains": [], "sets": {}}
        if proc.returncode != 0:
            return result
        for item in json.loads(proc.stdout)["nftables"]:
            if "chain" in item:
                result["chains"].append(item["chain"]["name"])
            for kind in ("set", "map"):
                if kind in item:
                    elems = item[kind].get("elem", [])
                    members = {e for e in elems if isinstance(e, str)}
                    result["sets"][item[kind]["name"]] = members
        return result

    def dump(self) -> str:
        """Everything Felix programmed, for a failure message."""
        if self.nftables:
            return self._run("nft", "list", "table", *TABLE, check=False)
        return self._run("iptables-save", check=False) + self._run("ip6tables-save", check=False)

    def nat_dump(self) -> str:
        if self.nftables:
            return self.dump()
        return self._run("iptables-save", "-t", "nat", check=False)

    # -- NAT and metadata (felix.md §5.8) --------------------------------------------------------

    def fip_dnat(self, ext_ip: str, int_ip: str) -> bool:
        """Whether the floating IP ext_ip is DNATed to int_ip."""
        if self.nftables:
            wanted = f"ip daddr {ext_ip} dnat ip to {int_ip}"
            return any(rule.startswith(wanted) for rule in self._rules("felix-FIP-DNAT"))
        rule = f"-A felix-FIP-DNAT -d {ext_ip}/32 -j DNAT --to-destination {int_ip}"
        return rule in self.nat_dump()

    def metadata_dnat(self) -> str | None:
        """The address:port the metadata DNAT sends 169.254.169.254:80 to (None: no DNAT)."""
        if self.nftables:
            pattern = r"ip daddr 169\.254\.169\.254 tcp dport 80 dnat ip to (\S+)"
            rules = "\n".join(self._rules("felix-nat-PREROUTING"))
        else:
            pattern = r"-d 169\.254\.169\.254/32 .*--to-destination (\S+)"
            rules = self.nat_dump()
        match = re.search(pattern, rules)
        return match.group(1) if match else None

    def metadata_accept(self) -> tuple[str, str] | None:
        """(address, port) of felix-INPUT's accept of MetadataAddr:MetadataPort (§5.3 rule 8)."""
        if self.nftables:
            pattern = r"^ip daddr (\S+) tcp dport (\d+) accept$"
            rules = "\n".join(self._rules("felix-WL-TO-HOST"))
        else:
            pattern = r"^-A felix-INPUT -d (\S+)/32 -p tcp -m tcp --dport (\d+) -j ACCEPT$"
            rules = self._run("iptables", "-w", "-S", "felix-INPUT")
        match = re.search(pattern, rules, flags=re.MULTILINE)
        return (match.group(1), match.group(2)) if match else None

    def masquerades(self) -> bool:
        if self.nftables:
            return any("masquerade" in rule for rule in self._rules("felix-nat-POSTROUTING"))
        return "MASQUERADE" in self.nat_dump()

    def _rules(self, chain: str) -> list[str]:
        """nft rules without Felix's comment (its hash) or handles."""
        return [_COMMENT_RE.sub("", _HANDLE_RE.sub("", r)) for r in self.chain_rules(chain)]

    # -- tampering (another tool at work) --------------------------------------------------------

    def flush_forward(self) -> None:
        """Another tool flushes Felix's forward policy (nftables: both forward base chains)."""
        if self.nftables:
            for chain in FORWARD_CHAINS:
                self._run("nft", "flush", "chain", *TABLE, chain)
        else:
            self._run("iptables", "-w", "-F", "felix-FORWARD")

    def unhook_forward(self) -> None:
        """Remove what sends forwarded packets to Felix (iptables: the jump from FORWARD;
        nftables: the base chain itself)."""
        if self.nftables:
            script = "".join(
                f"flush chain {' '.join(TABLE)} {c}\ndelete chain {' '.join(TABLE)} {c}\n"
                for c in FORWARD_CHAINS
            )
            self._run("nft", "-f", "-", input=script)
        else:
            self._run("iptables", "-w", "-D", "FORWARD", "-j", "felix-FORWARD")
