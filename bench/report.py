"""What every benchmark script shares: where it ran, and how it hands its results over."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def environment() -> dict[str, str]:
    """Python version, machine and date, recorded in every results file."""
    return {
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
    }


def emit(result: dict[str, Any], path: Path | str | None) -> None:
    """Print the results as JSON and, if `path` is given, also write them there."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
