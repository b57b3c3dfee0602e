"""`calicoctl`: the argparse front end. Every command is a subcommand; the connection options
(`-c/--config-file`, `--etcd-endpoints`, `--etcd-api`) are accepted before or after it.

Exit status: 0 done; 1 not found, refused, lost a compare-and-swap, or etcd failed; 2 bad usage
or invalid input (nothing written).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn, TextIO

from calico.common import datamodel_v1 as dm
from calico.common.quoting import quoted
from calico.ctl import (
    connection,
    diags,
    endpoint_show,
    felix_config,
    node,
    output,
    resource_commands,
)
from calico.ctl.errors import EXIT_INVALID, EXIT_OK, CtlError, Invalid
from calico.ctl.explain import command as explain_command
from calico.felix.config.loader import DEFAULT_CONFIG_FILE

PROG = "calicoctl"
HELP_WIDTH = 100  # fixed, so that docs/calicoctl.md's generated help is the same everywhere
FILTERS = ("host", "orchestrator", "workload", "tier")


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=HELP_WIDTH, max_help_position=32)


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 2 with the usage line, as argparse does, but through CtlError so that
    main() returns the status instead of raising SystemExit in library use."""

    def error(self, message: str) -> NoReturn:
        raise Invalid(f"{self.prog}: {message}", f"(`{self.prog} --help` for usage)")


def _version() -> str:
    try:
        return version("calico-openstack-py")
    except PackageNotFoundError:
        return "unknown"


def _connection_options(parser: argparse.ArgumentParser, top: bool) -> None:
    # At the top level they carry the defaults; repeated after a subcommand they override them.
    default: Any = argparse.SUPPRESS
    group = parser.add_argument_group("etcd connection (read as Felix reads it)")
    group.add_argument(
        "-c",
        "--config-file",
        default=DEFAULT_CONFIG_FILE if top else default,
        help=f"Felix's ini config file (default {DEFAULT_CONFIG_FILE}; a missing file is fine)",
    )
    group.add_argument(
        "--etcd-endpoints",
        default=None if top else default,
        metavar="URLS",
        help="etcd endpoints, comma-separated (default: as Felix, from FELIX_ETCDENDPOINTS, "
        "the config file, or http://localhost:4001)",
    )
    group.add_argument(
        "--etcd-api",
        choices=("v2", "v3"),
        default=None if top else default,
        help="etcd API (default: as Felix's DataplaneDriver, etcdv2 or etcdv3)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if top else default,
        help="log warnings (e.g. invalid data in etcd) on stderr",
    )


def _filter_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    helps = {
        "host": "only this host's resources",
        "orchestrator": "only this orchestrator's workload endpoints",
        "workload": "only this workload's endpoints",
        "tier": "only this tier's policies",
    }
    for name in names:
        parser.add_argument(f"--{name}", metavar=name.upper(), help=helps[name])


def _output_option(parser: argparse.ArgumentParser, formats: Sequence[str]) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=formats,
        default=formats[0],
        help=f"output format (default {formats[0]})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        formatter_class=_Formatter,
        description="Look at and change the Calico data model in etcd, and explain policy "
        "verdicts. The etcd connection is read as Felix reads it.",
        epilog="Exit status: 0 done; 1 not found, refused, conflict or etcd error; "
        "2 bad usage or invalid input.",
    )
    _connection_options(parser, top=True)
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    kinds = ", ".join(k.name for k in resource_commands.KINDS)

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help_text, description=description, formatter_class=_Formatter
        )
        _connection_options(p, top=False)
        return p

    p = command(
        "get",
        "show resources",
        f"Show resources of one kind ({kinds}), or those a file names.",
    )
    p.add_argument("kind", nargs="?", metavar="KIND", help="resource kind (or an alias)")
    p.add_argument("name", nargs="?", metavar="NAME", help="only the resource with this name")
    p.add_argument(
        "-f", "--filename", metavar="FILE", help="the resources a file names ('-': stdin)"
    )
    _filter_options(p, FILTERS)
    _output_option(p, output.FORMATS)
    for verb, what in (
        ("create", "create resources; refused if one exists"),
        ("apply", "create or replace resources; unchanged ones are not written"),
        ("replace", "replace existing resources; refused if one does not exist"),
    ):
        p = command(verb, what, f"{what[0].upper()}{what[1:]}, from YAML or JSON documents.")
        p.add_argument("-f", "--filename", metavar="FILE", required=True, help="'-': stdin")
    p = command(
        "delete",
        "delete resources",
        "Delete the resources a file names, or one resource by kind and name.",
    )
    p.add_argument("kind", nargs="?", metavar="KIND", help="resource kind (or an alias)")
    p.add_argument("name", nargs="?", metavar="NAME", help="the resource's name")
    p.add_argument("-f", "--filename", metavar="FILE", help="'-': stdin")
    _filter_options(p, FILTERS)

    config = command("config", "Felix configuration in etcd", "Felix's parameters in etcd.")
    config_sub = config.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    p = config_sub.add_parser(
        "get",
        help="show parameters set in etcd",
        formatter_class=_Formatter,
        description="Show the parameters set in etcd (global and per host); with NAME, its "
        "global, host and default values and which applies.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="one parameter")
    p.add_argument("--host", metavar="HOST", help="also this host's value")
    _output_option(p, ("table", "json", "yaml"))
    p = config_sub.add_parser(
        "set",
        help="set a parameter",
        formatter_class=_Formatter,
        description="Set a parameter, validated as Felix validates it. Local-only parameters "
        "are refused: Felix never reads them from etcd.",
    )
    p.add_argument("name", metavar="NAME", help="a Felix parameter (docs/config-params.md)")
    p.add_argument("value", metavar="VALUE", help="its value, as Felix would parse it")
    p.add_argument("--host", metavar="HOST", help="for this host only (default: all hosts)")
    p = config_sub.add_parser(
        "unset",
        help="remove a parameter from etcd",
        formatter_class=_Formatter,
        description="Remove a parameter from etcd (global, or one host's).",
    )
    p.add_argument("name", metavar="NAME", help="the parameter")
    p.add_argument("--host", metavar="HOST", help="this host's value (default: the global one)")
    for p in config_sub.choices.values():
        _connection_options(p, top=False)

    nodes = command("node", "this host's Felix and BGP", "Felix's and BGP's state on one host.")
    node_sub = nodes.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    p = node_sub.add_parser(
        "status",
        help="Felix's liveness and the BGP peers",
        formatter_class=_Formatter,
        description="Felix's status on a host (alive, last report, uptime, endpoint statuses, "
        "from the keys it writes in etcd) and, on this host, the BGP peers as BIRD reports "
        "them (through `calico-bgp status`).",
    )
    p.add_argument("--host", metavar="HOST", help="the host (default: this one, FelixHostname)")
    p.add_argument("--bird-socket", metavar="PATH", help="BIRD's control socket for calico-bgp")
    _output_option(p, ("table", "json", "yaml"))
    _connection_options(p, top=False)

    endpoints = command("endpoint", "endpoints as policy sees them", "Endpoints.")
    ep_sub = endpoints.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    p = ep_sub.add_parser(
        "show",
        help="list endpoints",
        formatter_class=_Formatter,
        description="Workload and host endpoints with their labels as policy sees them "
        "(profiles' labels, then their own), state and the status Felix reports.",
    )
    _filter_options(p, ("host", "orchestrator", "workload"))
    p.add_argument("--selector", metavar="SEL", help="only endpoints whose labels match SEL")
    p.add_argument(
        "--detailed",
        action="store_true",
        help="every field, missing profiles, and the tiers of policy that apply",
    )
    _output_option(p, output.FORMATS)
    _connection_options(p, top=False)

    p = command(
        "explain",
        "why a flow is allowed or denied",
        "Trace the first packet of a flow from SRC to DST through the source's egress and the "
        "destination's ingress policy, tier by tier, policy by policy, rule by rule, with "
        "Felix's own calculation graph and rule renderer. SRC and DST: an endpoint ID, a "
        "workload ID, host/orchestrator/workload/endpoint, or an IP address (one outside every "
        "endpoint is an external host).",
    )
    p.add_argument("src", metavar="SRC", help="the source: endpoint, workload or address")
    p.add_argument("dst", metavar="DST", help="the destination: endpoint, workload or address")
    p.add_argument(
        "-p",
        "--protocol",
        default="tcp",
        help="tcp (default), udp, icmp, icmpv6, sctp, udplite or a number",
    )
    p.add_argument("--port", type=int, metavar="N", help="destination port")
    p.add_argument("--src-port", type=int, metavar="N", help="source port")
    p.add_argument("--icmp-type", type=int, metavar="T", help="ICMP type (default echo request)")
    p.add_argument("--icmp-code", type=int, metavar="C", help="ICMP code (default 0)")
    p.add_argument(
        "-6",
        "--ipv6",
        action="store_true",
        help="use the endpoints' IPv6 addresses (implied by IPv6 SRC/DST)",
    )
    _output_option(p, ("text", "json"))

    p = command(
        "diags",
        "collect diagnostics",
        "Collect Felix's diagnostics and calicoctl's view of etcd into a .tar.gz; print its path.",
    )
    p.add_argument("--output", metavar="PATH", help="where to write the tarball")
    return parser


def _emit(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _check_host(host: str | None) -> None:
    if host is not None and not dm.valid_id(host):
        raise Invalid(f"--host: invalid host name {quoted(host)} (need {dm.ID_SEGMENT_RULE})")


Handler = Callable[[argparse.Namespace, connection.Local, TextIO], str]


def _get(args: argparse.Namespace, local: connection.Local, stdin: TextIO) -> str:
    filters = {name: getattr(args, name) for name in FILTERS}
    _check_host(args.host)
    if args.filename:
        if args.kind or args.name:
            raise Invalid("get: give KIND [NAME] or -f FILE, not both")
        return resource_commands.get(
            local.client(), None, None, {}, args.output, args.filename, stdin
        )
    if not args.kind:
        raise Invalid("get: KIND or -f FILE is required")
    kind = resource_commands.kind_named(args.kind)
    filters = resource_commands.kind_filters(kind, filters)
    return resource_commands.get(local.client(), kind, args.name, filters, args.output)


def _writer(mode: str) -> Handler:
    def handler(args: argparse.Namespace, local: connection.Local, stdin: TextIO) -> str:
        resource_commands.write_file(local.client(), args.filename, mode, _emit, stdin)
        return ""

    return handler


def _delete(args: argparse.Namespace, local: connection.Local, stdin: TextIO) -> str:
    _check_host(args.host)
    if args.filename:
        if args.kind or args.name:
            raise Invalid("delete: give KIND NAME or -f FILE, not both")
        resource_commands.delete_file(local.client(), args.filename, _emit, stdin)
        return ""
    if not (args.kind and args.name):
        raise Invalid("delete: KIND NAME or -f FILE is required")
    kind = resource_commands.kind_named(args.kind)
    filters = resource_commands.kind_filters(kind, {n: getattr(args, n) for n in FILTERS})
    return resource_commands.delete_named(local.client(), kind, args.name, filters)


def _config(args: argparse.Namespace, local: connection.Local, stdin: TextIO) -> str:
    if args.action is None:
        raise Invalid("config: ACTION is required (get, set or unset)")
    _check_host(args.host)
    client = local.client()
    if args.action == "get":
        return felix_config.get(client, args.name, args.host, args.output)
    if args.action == "set":
        return felix_config.set_value(client, args.name, args.value, args.host)
    if args.action == "unset":
        return felix_config.unset(client, args.name, args.host)
    raise Invalid("config: ACTION is required (get, set or unset)")


def _node(args: argparse.Namespace, local: connection.Local, stdin: TextIO) -> str:
    if args.action is None:
        raise Invalid("node: ACTION is required (status)")
    _check_host(args.host)
    host = args.host or local.hostname
    return node.status(local.client(), host, local.hostname, args.output, args.bird_socket)


def _endpoint(args: argparse.Namespace, local: connection.Local, stdin: TextIO) -> str:
    if args.action is None:
        raise Invalid("endpoint: ACTION is required (show)")
    _check_host(args.host)
    return endpoint_show.show(
        local.client(),
        local,
        args.host,
        args.orchestrator,
        args.workload,
        args.selector,
        args.detailed,
        args.output,
    )


def _explain(args: argparse.Namespace, local: connection.Local, stdin: TextIO) -> str:
    for name in ("port", "src_port"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 65535:
            raise Invalid(f"--{name.replace('_', '-')}: {value} is not a port (0-65535)")
    for name, top in (("icmp_type", 254), ("icmp_code", 255)):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= top:
            raise Invalid(f"--{name.replace('_', '-')}: {value} is out of range 0-{top}")
    return explain_command.main(
        local,
        args.src,
        args.dst,
        args.output,
        protocol=args.protocol,
        port=args.port,
        src_port=args.src_port,
        icmp_type=args.icmp_type,
        icmp_code=args.icmp_code,
        ipv6=args.ipv6,
    )


def _diags(args: argparse.Namespace, local: connection.Local, stdin: TextIO) -> str:
    return diags.main(local, args.environ, args.output)


HANDLERS: dict[str, Handler] = {
    "get": _get,
    "create": _writer("create"),
    "apply": _writer("apply"),
    "replace": _writer("replace"),
    "delete": _delete,
    "config": _config,
    "node": _node,
    "endpoint": _endpoint,
    "explain": _explain,
    "diags": _diags,
}


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
) -> int:
    env = os.environ if environ is None else environ
    local: connection.Local | None = None
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, --version: printed; their status
            return int(e.code or 0)
        logging.basicConfig(
            level=logging.WARNING if args.verbose else logging.CRITICAL,
            format=f"{PROG}: %(levelname)s %(message)s",
            stream=sys.stderr,
        )
        if args.command is None:
            raise Invalid(f"{PROG}: a COMMAND is required (`{PROG} --help` for the list)")
        local = connection.load(env, args.config_file, args.etcd_endpoints, args.etcd_api)
        args.environ = env
        text = HANDLERS[args.command](args, local, stdin or sys.stdin)
    except CtlError as e:
        for line in e.lines:
            print(line if line.startswith(PROG) else f"{PROG}: {line}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return EXIT_INVALID
    finally:
        if local is not None:
            local.close()
    sys.stdout.write(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
