"""The dataplane driver process: reads calc messages from Felix and programs the kernel.

Started by Felix (`connection.DriverProcess`) as
`python -m calico.felix.driver --from-felix FD --to-felix FD --felix-pid PID`; it is killed when
Felix dies (`calico.common.children`), so a crashed Felix never leaves a driver programming
stale state, and a restarted one never finds two. The first frame from Felix is `DriverInit`
with the typed `DriverConfig`; `build()` wires the dataplane manager to this namespace's kernel
drivers, and `loop.DriverLoop` runs until Felix goes. Any unexpected exception ends the process
after telling Felix why (`DriverFatal`); Felix, seeing the pipe close, exits for the service
manager to restart both.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import signal
import sys

from calico.common import heap, logs
from calico.common.children import die_with_parent
from calico.felix.dataplane.manager import DataplaneManager, KernelTables
from calico.felix.driver import metrics
from calico.felix.driver.config import DriverConfig
from calico.felix.driver.loop import EXIT_FELIX_GONE, DriverLoop
from calico.felix.driver.pipe import (
    DriverFatal,
    DriverInit,
    FrameReader,
    FrameWriter,
)
from calico.felix.driver.resolver import RESOLVE_FIRST_WAIT_SECS, MetadataResolver
from calico.felix.kernel.commands import CommandRunner, LocalRunner
from calico.felix.kernel.ipsets import IpsetTable
from calico.felix.kernel.iptables import IptablesTable, uses_nft
from calico.felix.kernel.libnftables import local_executor
from calico.felix.kernel.neighbours import ProxyNdpTable
from calico.felix.kernel.nft import NftTable
from calico.felix.kernel.nft_switch import (
    auto_uses_nftables,
    remove_iptables_state,
    remove_nft_table,
)
from calico.felix.kernel.nftables import GenerationReader, nft_generation
from calico.felix.kernel.routes import RouteTable, local_link_lookup, open_netlink
from calico.felix.kernel.sysctls import LooseRPFError, ProcSysctlWriter, configure_global
from calico.felix.kernel.watcher import InterfaceWatcher

log = logging.getLogger("calico.felix.dataplane")

PROG = "calico-felix-dataplane"
EXIT_FATAL = 1


def ipv6_available(nftables: bool = False) -> bool:
    """The host has IPv6 (and, for the iptables backend, ip6tables)."""
    if not os.path.exists("/proc/net/if_inet6"):
        return False
    return nftables or shutil.which("ip6tables-restore") is not None


def ip_versions(ipv6_support: bool | str, nftables: bool = False) -> tuple[int, ...]:
    """Ipv6Support: True, False, or "auto" (on when the host has IPv6 and ip6tables)."""
    if ipv6_support is True or (ipv6_support == "auto" and ipv6_available(nftables)):
        return (4, 6)
    return (4,)


def use_nftables(mode: str, runner: CommandRunner) -> bool:
    """NFTablesMode: Enabled, Disabled, or Auto (nftables where iptables is iptables-nft and
    the kernel accepts Felix's table)."""
    if mode != "Auto":
        return mode == "Enabled"
    chosen, why = auto_uses_nftables(runner)
    log.info("NFTablesMode=Auto: using %s (%s)", "nftables" if chosen else "iptables", why)
    return chosen


def build(
    config: DriverConfig,
) -> tuple[DataplaneManager, InterfaceWatcher, MetadataResolver | None]:
    """The manager wired to this namespace's kernel drivers, the interface watcher (snapshot
    taken) and the MetadataAddr resolver, if the address is a host name."""
    render = config.render
    resolver = None
    if config.metadata_name is not None:
        resolver = MetadataResolver(config.metadata_name)
        # Wait a little for the first answer, so that a name that resolves is programmed at once.
        render = dataclasses.replace(
            render, metadata_addr=resolver.wait_first(RESOLVE_FIRST_WAIT_SECS)
        )
    runner = metrics.MeteredRunner(LocalRunner())
    nftables = use_nftables(config.nftables_mode, LocalRunner())
    versions = ip_versions(config.ipv6_support, nftables)
    ipr = open_netlink()
    prefixes = config.interface_prefixes
    if nftables:
        # One table for both families, written in-process through libnftables (this process
        # runs in the namespace it programs); the generation tells a refresh when to read.
        table = NftTable(
            local_executor(runner),
            generation=GenerationReader(),
            max_elements=config.max_ipset_size,
        )
        kernel = KernelTables(
            versions,
            None,
            None,
            lambda v: RouteTable(
                v, ipr, prefixes, conntrack_runner=runner, link_lookup=local_link_lookup
            ),
            lambda: ProxyNdpTable(runner, prefixes),
            nft=table,
            sweep_other=lambda: remove_iptables_state(runner),
        )
    else:
        # On iptables-nft (the tables are in this process's namespace) a refresh can tell from
        # the nf_tables generation that nothing changed, and skip reading the tables.
        on_nft = {v: uses_nft(v, LocalRunner()) for v in versions}
        generations = {v: nft_generation if on_nft[v] else None for v in versions}
        kernel = KernelTables(
            versions,
            lambda v, t: IptablesTable(v, t, runner, generation=generations[v]),
            lambda v: IpsetTable(v, runner, max_size=config.max_ipset_size),
            lambda v: RouteTable(
                v, ipr, prefixes, conntrack_runner=runner, link_lookup=local_link_lookup
            ),
            lambda: ProxyNdpTable(runner, prefixes),
            sweep_other=lambda: remove_nft_table(runner),
            filters_together=all(on_nft.values()),
        )
    sysctls = ProcSysctlWriter()
    for v in versions:
        configure_global(v, sysctls, config.ignore_loose_rpf, runner)
    manager = DataplaneManager(render, kernel, sysctls)
    watcher = InterfaceWatcher(manager)
    watcher.snapshot()
    log.info(
        "Dataplane driver ready: %s, IP versions %s, interface prefixes %s",
        "nftables (table inet felix)" if nftables else "iptables",
        versions,
        prefixes,
    )
    return manager, watcher, resolver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--from-felix", type=int, required=True, help="fd of Felix's messages")
    parser.add_argument("--to-felix", type=int, required=True, help="fd for reports to Felix")
    parser.add_argument("--felix-pid", type=int, help="exit when this parent process dies")
    args = parser.parse_args(argv)
    # A Felix that crashes must not leave its driver programming stale state, nor a restarted
    # Felix find two drivers: SIGKILL when Felix dies (every kernel write is one transaction,
    # so there is nothing to finish). Felix's end of the pipe closing ends it too, but only
    # once it reads the pipe again.
    if args.felix_pid is not None and not die_with_parent(signal.SIGKILL, args.felix_pid):
        return EXIT_FELIX_GONE
    logs.configure_early(os.environ, "FELIX_LOGSEVERITYSCREEN", sys.stderr)
    heap.fix_mmap_threshold()
    reader, writer = FrameReader(args.from_felix), FrameWriter(args.to_felix)
    first = reader.read()
    while first == []:
        first = reader.read()
    if not first or not first[0] or not isinstance(first[0][0], DriverInit):
        log.critical("Felix did not start with its configuration; exiting")
        return EXIT_FATAL
    init: DriverInit = first[0][0]
    config = init.config
    logs.configure(
        program=PROG,
        screen=config.log.screen,
        file_path=config.log.file_path,
        file_level=config.log.file_level,
        syslog_level=config.log.syslog_level,
    )
    try:
        if config.metrics_port is not None:
            metrics.serve(config.metrics_port)
        manager, watcher, resolver = build(config)
    except LooseRPFError as e:
        return _fatal(writer, str(e))
    except Exception as e:
        log.exception("The dataplane driver cannot start")
        return _fatal(writer, f"cannot start: {type(e).__name__}: {e}")
    loop = DriverLoop(config, reader, writer, manager, watcher, resolver)
    try:
        loop.feed([first[0][1:], *first[1:]])
        return loop.run()
    except BrokenPipeError:
        log.info("Felix closed the pipe; the dataplane driver stops")
        return EXIT_FELIX_GONE
    except Exception as e:
        log.exception("The dataplane driver failed")
        return _fatal(writer, f"{type(e).__name__}: {e}")
    finally:
        watcher.close()


def _fatal(writer: FrameWriter, reason: str) -> int:
    """Tell Felix why we stop (so the reason is in its log, not only on our stderr); exit."""
    log.critical("%s", reason)
    try:
        writer.send([DriverFatal(reason)])
    except OSError:
        pass  # Felix has gone already
    return EXIT_FATAL


if __name__ == "__main__":
    sys.exit(main())
