"""BIRD's control socket protocol (against a fake BIRD on a Unix socket), `show protocols all`
parsed (a capture from BIRD 2.0.12), and the table `calico-bgp status` prints."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from calico.bgp.birdctl import BirdControl, BirdError, BirdUnavailable
from calico.bgp.status import format_status, parse_protocols, parse_reply

# `show protocols all` from BIRD 2.0.12 with calico-bgp's time format (shortened: the device and
# kernel protocols' channel statistics, the capability lists).
SHOW_PROTOCOLS_ALL = "\n".join(
    [
        "2002-Name       Proto      Table      State  Since         Info",
        "1002-device1    Device     ---        up     2026-12-04 19:25:10  ",
        "1006-",
        "1002-kernel4    Kernel     master4    up     2026-12-04 19:25:10  ",
        "1006-  Channel ipv4",
        "     State:          UP",
        "     Routes:         2 imported, 0 exported, 2 preferred",
        " ",
        "1002-Mesh_198_18_0_2 BGP        ---        up     2026-12-04 19:25:11  Established   ",
        "1006-  BGP state:          Established",
        "     Neighbor address: 198.18.0.2",
        "     Neighbor AS:      64511",
        "     Local AS:         64511",
        "   Channel ipv4",
        "     State:          UP",
        "     Routes:         3 imported, 0 filtered, 1 exported, 3 preferred",
        " ",
        "1002-Mesh_fd00_18__3 BGP        ---        start  2026-12-04 19:25:12  Active        "
        "Socket: Connection refused",
        "1006-  BGP state:          Active",
        "     Neighbor address: fd00:18::3",
        "     Neighbor AS:      64511",
        " ",
        "1002-Global_198_18_0_254 BGP        ---        up     19:25:13.123  Established",
        "1006-  BGP state:          Established",
        "     Neighbor address: 198.18.0.254",
        "   Channel ipv4",
        "     Routes:         0 imported, 1 exported, 0 preferred",
        " ",
        "0000 ",
        "",
    ]
)  # BIRD pads its columns with spaces; a line holding one space ends a block


def _reply(text: str) -> bytes:
    return text.encode()


def test_parse_reply_codes_continuations_and_the_end() -> None:
    lines, complete = parse_reply(b"0002-Reading configuration from /x\n0003 Reconfigured\n")
    assert complete and [(ln.code, ln.text) for ln in lines] == [
        (2, "Reading configuration from /x"),
        (3, "Reconfigured"),
    ]
    lines, complete = parse_reply(b"1007-3 of 3 routes\n 0 of 0 routes\n0014 Total\n")
    assert complete and [ln.code for ln in lines] == [1007, 1007, 14]
    assert parse_reply(b"1002-row\n 1006 partial")[1] is False  # no final line yet
    assert parse_reply(b"+spontaneous\n0000 \n")[0][0].code == 0


def test_show_protocols_all_parsed() -> None:
    lines, complete = parse_reply(_reply(SHOW_PROTOCOLS_ALL))
    assert complete
    protocols = {p.name: p for p in parse_protocols(lines)}
    assert list(protocols) == [
        "device1",
        "kernel4",
        "Mesh_198_18_0_2",
        "Mesh_fd00_18__3",
        "Global_198_18_0_254",
    ]
    mesh = protocols["Mesh_198_18_0_2"]
    assert (mesh.proto, mesh.state, mesh.since, mesh.info) == (
        "BGP",
        "up",
        "2026-12-04 19:25:11",
        "Established",
    )
    assert mesh.established and (mesh.neighbor, mesh.neighbor_as) == ("198.18.0.2", "64511")
    assert (mesh.imported, mesh.exported) == (3, 1)
    down = protocols["Mesh_fd00_18__3"]
    assert not down.established and down.info == "Active Socket: Connection refused"
    assert down.address == "fd00:18::3" and down.peer_type == "node-to-node mesh"
    tor = protocols["Global_198_18_0_254"]
    assert tor.since == "19:25:13.123" and tor.established and tor.peer_type == "global"
    assert not protocols["kernel4"].established and protocols["kernel4"].imported == 2


def test_status_table() -> None:
    lines, _ = parse_reply(_reply(SHOW_PROTOCOLS_ALL))
    text = format_status(parse_protocols(lines), "BIRD 2.0.12")
    assert text.splitlines()[0] == "BIRD is running (BIRD 2.0.12)."
    assert "| PEER ADDRESS " in text and "IPv4 BGP status" in text and "IPv6 BGP status" in text
    v4, v6 = text.split("IPv6 BGP status")
    assert "| 198.18.0.2   | node-to-node mesh | up    | 2026-12-04 19:25:11 | Established" in v4
    assert "198.18.0.254" in v4 and "global" in v4 and "fd00" not in v4
    assert "| fd00:18::3   | node-to-node mesh | start | " in v6
    assert "Active Socket: Connection refused" in v6
    assert "device1" not in text and "kernel4" not in text
    assert "No IPv6 peers found." in format_status([], "")


class FakeBird:
    """A Unix socket that greets and answers like BIRD (one scripted reply per connection)."""

    def __init__(
        self, path: Path, replies: list[bytes], greeting: bytes = b"0001 BIRD 2.0.12 ready.\n"
    ):
        self.path = path
        self.replies = replies
        self.greeting = greeting
        self.commands: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.replies:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.greeting)
                self.commands.append(conn.recv(4096).decode())
                reply = self.replies.pop(0)
                for i in range(0, len(reply), 7):  # in small pieces: partial reads
                    conn.sendall(reply[i : i + 7])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "bird.ctl"


def test_commands_over_the_socket(sock_path: Path) -> None:
    fake = FakeBird(
        sock_path,
        [
            b"0002-Reading configuration from /etc/bird/bird.conf\n0003 Reconfigured\n",
            _reply(SHOW_PROTOCOLS_ALL),
            b"0002-Reading configuration from /x\n8002 /x: No such file or directory\n",
            b"9001 syntax error\n",
        ],
    )
    try:
        bird = BirdControl(str(sock_path), timeout=2)
        assert bird.configure("/etc/bird/bird.conf") == "Reconfigured"
        assert len(parse_protocols(bird.show_protocols())) == 5
        with pytest.raises(BirdError, match="8002") as err:
            bird.configure("/x")
        assert err.value.code == 8002
        with pytest.raises(BirdError, match="9001"):
            bird.command("show nonsense")
        assert fake.commands == [
            'configure "/etc/bird/bird.conf"\n',
            "show protocols all\n",
            'configure "/x"\n',
            "show nonsense\n",
        ]
        with pytest.raises(ValueError, match="unsafe"):
            bird.configure('/x" ; down')
        with pytest.raises(ValueError, match="one line"):
            bird.command("show status\ndown")
    finally:
        fake.close()


def test_unreachable_and_silent_birds(sock_path: Path) -> None:
    with pytest.raises(BirdUnavailable):
        BirdControl(str(sock_path), timeout=1).command("show status")
    fake = FakeBird(sock_path, [b"1000-BIRD 2.0.12\n"], greeting=b"0001 BIRD 2.0.12 ready.\n")
    try:  # a reply that never ends: the timeout gives up
        with pytest.raises(BirdUnavailable):
            BirdControl(str(sock_path), timeout=0.5).command("show status")
    finally:
        fake.close()
