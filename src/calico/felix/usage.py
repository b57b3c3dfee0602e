"""Usage reporting (felix.md §6.3): when UsageReportingEnabled, tell the usage server this
Felix's version, the cluster's ClusterGUID and ClusterType and how many hosts the datastore
holds, once shortly after start and then daily; log, at warning, any warning it sends back.

It runs on a daemon thread and every request has a short timeout, so an unreachable, slow or
broken server never delays or breaks anything else: a failed report is logged at INFO and
tried again at the next interval. The process can exit at any time without waiting for it.

The request is an HTTP GET of UsageReportingURL with the query parameters `version`, `guid`,
`type` and `size` (upstream Felix 2.0's names; it also sent the hostname, which we do not, to
keep the report anonymous as the spec describes it).
"""

from __future__ import annotations

import logging
import random
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from calico.common.resources import InvalidValue, decode_object

log = logging.getLogger(__name__)

# Seconds for connecting and for each read; the whole exchange is on a daemon thread anyway.
REQUEST_TIMEOUT = 10.0
# The server's answer is a small JSON object; never hold more than this of it in memory.
MAX_REPLY_BYTES = 64 * 1024
# Jitter, so that a cluster's Felixes (all restarted together, say) do not report in lockstep.
INITIAL_JITTER = 0.1  # first report: delay x [1, 1.1]
INTERVAL_JITTER = 0.1  # then: interval x [0.9, 1.1]
# An empty ClusterType is reported as this, as upstream Felix 2.0 did.
UNKNOWN_TYPE = "unknown"


class Params(Protocol):
    """The resolved configuration (a loader.Config), or any stand-in indexable by name."""

    def __getitem__(self, name: str) -> Any: ...


@dataclass(frozen=True)
class UsageSettings:
    url: str
    version: str
    cluster_guid: str
    cluster_type: str
    initial_delay: float
    interval: float

    @classmethod
    def from_config(cls, config: Params, version: str) -> UsageSettings:
        """From the resolved configuration (anything indexable by parameter name)."""
        return cls(
            url=config["UsageReportingURL"],
            version=version,
            cluster_guid=config["ClusterGUID"],
            cluster_type=config["ClusterType"],
            initial_delay=config["UsageReportingInitialDelaySecs"],
            interval=config["UsageReportingIntervalSecs"],
        )


def report_url(settings: UsageSettings, cluster_size: int) -> str:
    """The URL of one report: UsageReportingURL plus the query (kept: any query it has)."""
    query = urllib.parse.urlencode(
        {
            "version": settings.version,
            "guid": settings.cluster_guid,
            "type": settings.cluster_type or UNKNOWN_TYPE,
            "size": str(cluster_size),
        }
    )
    parts = urllib.parse.urlsplit(settings.url)
    joined = f"{parts.query}&{query}" if parts.query else query
    return urllib.parse.urlunsplit(parts._replace(query=joined))


def warnings_in_reply(body: bytes) -> list[str]:
    """The warning texts in the server's JSON reply: every top-level member whose name contains
    "warning" (upstream's is `usage_warning`) with a non-empty string, or list of strings."""
    try:
        reply = decode_object(body.decode("utf-8"), "usage server reply")
    except (UnicodeDecodeError, InvalidValue):
        log.info("Usage server reply is not a JSON object; ignoring it")
        return []
    found: list[str] = []
    for name, value in reply.items():
        if "warning" not in str(name).lower():
            continue
        texts = value if isinstance(value, list) else [value]
        found.extend(t.strip() for t in texts if isinstance(t, str) and t.strip())
    return found


def send_report(
    settings: UsageSettings, cluster_size: int, timeout: float = REQUEST_TIMEOUT
) -> bool:
    """One report; logs the outcome and any warnings. True when the server answered."""
    url = report_url(settings, cluster_size)
    log.info("Sending usage report: %s", url)
    # The HttpUrl parameter type admits only http:// and https:// (no file: or custom schemes).
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read(MAX_REPLY_BYTES)
    except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts are OSErrors
        # INFO, not WARNING: a site without internet access would otherwise warn every day.
        log.info("Usage report failed (will try again at the next interval): %s", e)
        return False
    log.debug("Usage server replied: %r", body)
    for text in warnings_in_reply(body):
        log.warning("Usage server warning: %s", text)
    return True


class UsageReporter:
    """Reports on a daemon thread until stopped (or until the process exits)."""

    def __init__(
        self,
        settings: UsageSettings,
        cluster_size: Callable[[], int],
        rng: random.Random | None = None,
    ):
        self._settings = settings
        self._cluster_size = cluster_size
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-reporter", daemon=True)

    def start(self) -> UsageReporter:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop reporting; waits up to timeout for a report in flight to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def first_delay(self) -> float:
        return self._settings.initial_delay * self._rng.uniform(1.0, 1.0 + INITIAL_JITTER)

    def next_delay(self) -> float:
        jitter = self._rng.uniform(1.0 - INTERVAL_JITTER, 1.0 + INTERVAL_JITTER)
        return self._settings.interval * jitter

    def _run(self) -> None:
        delay = self.first_delay()
        while not self._stop.wait(delay):
            try:
                send_report(self._settings, self._cluster_size())
            except Exception:  # a bug here must not end reporting, let alone Felix
                log.exception("Usage report failed unexpectedly")
            delay = self.next_delay()


def start_if_enabled(
    config: Params, version: str, cluster_size: Callable[[], int]
) -> UsageReporter | None:
    """Felix's entry point: start the reporter when UsageReportingEnabled."""
    if not config["UsageReportingEnabled"]:
        log.info("Usage reporting is disabled (UsageReportingEnabled=false)")
        return None
    settings = UsageSettings.from_config(config, version)
    log.info(
        "Usage reporting to %s, first in about %.0f s, then every %.0f s",
        settings.url,
        settings.initial_delay,
        settings.interval,
    )
    return UsageReporter(settings, cluster_size).start()
