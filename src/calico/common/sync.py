"""What a datastore syncer tells its listener: its status, and updates. No dependencies, so
that pure code (the calculation graph) can take them without importing any I/O."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

Update = tuple[str, str | None]  # (key, value); value None = deleted


class SyncStatus(StrEnum):
    WAIT_FOR_READY = "wait-for-ready"
    RESYNC = "resync"
    IN_SYNC = "in-sync"


class SyncListener(Protocol):
    def on_status(self, status: SyncStatus) -> None: ...
    def on_updates(self, updates: list[Update]) -> None: ...
