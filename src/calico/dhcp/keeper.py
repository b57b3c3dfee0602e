"""dnsmasq's keeper: a small process between the agent and dnsmasq that makes dnsmasq die with
the agent, even when the agent is killed with SIGKILL (issue 19).

    calico-dhcp-agent ──> keeper (parent-death signal: SIGTERM) ──> dnsmasq

Why not simply give dnsmasq a parent-death signal (prctl PR_SET_PDEATHSIG in a preexec_fn)?
The kernel clears a process's parent-death signal whenever its effective user or group changes,
and dnsmasq drops root for an unprivileged user ("nobody") right after it starts: the setting
is gone a few milliseconds later, and a SIGKILLed agent leaves dnsmasq running (tried with
dnsmasq 2.90 on Debian 12). Running dnsmasq as root instead would keep the signal but give a
DHCP packet parser full root privileges. The keeper never changes its credentials, so its own
parent-death signal holds, and it is dnsmasq's parent, so it can stop dnsmasq by PID without
any race (a PID is not reused before its parent reaps it):

* the agent dies, however: the kernel sends the keeper SIGTERM; the keeper stops dnsmasq
  (SIGTERM, then SIGKILL after STOP_TIMEOUT) and exits;
* the agent stops or restarts dnsmasq: it sends the keeper SIGTERM, the same path;
* the agent reloads dnsmasq: it sends the keeper SIGHUP, which passes it on;
* dnsmasq exits by itself: the keeper exits with its status, and the agent, whose child the
  keeper is, starts a new one.

The keeper sets its parent-death signal itself rather than in a preexec_fn (which is unsafe in
the multi-threaded agent) and then checks that its parent is still the agent that started it,
which closes the window between the fork and the prctl. The signal is tied to the thread that
forked the keeper: the agent starts dnsmasq from its main thread, which lives as long as the
agent. Where prctl is not available (not Linux), the keeper says so and carries on: the agent's
start-up clean-up (`calico.dhcp.dnsmasq_process.stop_leftovers`) still stops an orphaned
dnsmasq before a new one is started, and the systemd unit's KillMode=control-group stops it
with the service.

Usage: python -m calico.dhcp.keeper <agent PID> -- <dnsmasq command line...>
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from calico.common.children import set_parent_death_signal

STOP_TIMEOUT = 5  # seconds between SIGTERM and SIGKILL for dnsmasq (an alarm: whole seconds)


class Keeper:
    def __init__(self, argv: Sequence[str]):
        self.argv = list(argv)
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self._stop_child()

    def _stop_child(self) -> None:
        if self.child is not None:
            # send_signal skips a child already reaped, and only this process reaps it.
            self.child.send_signal(signal.SIGTERM)
            signal.alarm(STOP_TIMEOUT)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.child is not None:
            self.child.kill()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        if self.child is not None:
            self.child.send_signal(signal.SIGHUP)

    def run(self, parent_pid: int) -> int:
        """Run dnsmasq until it exits; its exit status (128 + N for death by signal N)."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGALRM, self._on_alarm)
        if not set_parent_death_signal(signal.SIGTERM):
            print(
                "calico-dhcp-agent keeper: no parent-death signal on this platform; dnsmasq "
                "will outlive a killed agent until the agent's next start",
                file=sys.stderr,
            )
        if os.getppid() != parent_pid or self.stopping:
            return 0  # the agent died (or stopped us) before the signal was set: start nothing
        self.child = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
        if self.stopping:  # a SIGTERM that came while dnsmasq was being started
            self._stop_child()
        status = self.child.wait()
        return status if status >= 0 else 128 - status


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or not args[0].isdigit() or args[1] != "--":
        print("usage: python -m calico.dhcp.keeper <agent PID> -- <command...>", file=sys.stderr)
        return 2
    return Keeper(args[2:]).run(int(args[0]))


if __name__ == "__main__":
    sys.exit(main())
