"""Logging set-up shared by Calico's programs: screen (stdout), file and syslog targets,
each with its own severity; None disables a target."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Mapping
from typing import TextIO

FORMAT = "%(asctime)s [%(levelname)s][%(process)d/%(threadName)s] %(name)s %(lineno)d: %(message)s"
SYSLOG_FORMAT = "%(program)s[%(process)d]: %(module)s@%(lineno)d %(message)s"
SYSLOG_SOCKET = "/dev/log"

_OURS = "_calico_handler"


class _ProgramFilter(logging.Filter):
    def __init__(self, program: str):
        super().__init__()
        self.program = program

    def filter(self, record: logging.LogRecord) -> bool:
        record.program = self.program
        return True


def _level(name: str | None) -> int | None:
    return None if name is None else logging.getLevelNamesMapping()[name]


def configure_early(environ: Mapping[str, str], env_var: str, stream: TextIO | None = None) -> None:
    """Screen logging before the configuration is known: the env's screen level, else ERROR.

    stream: where "screen" goes (stdout, unless the program's stdout is its output).
    """
    wanted = environ.get(env_var, "ERROR").strip().upper()
    level: str | None = None
    if wanted != "NONE":
        level = logging.getLevelName(logging.getLevelNamesMapping().get(wanted, logging.ERROR))
    configure(
        program="",
        screen=level,
        file_path=None,
        file_level=None,
        syslog_level=None,
        stream=stream,
    )


def configure(
    *,
    program: str,
    screen: str | None,
    file_path: str | None,
    file_level: str | None,
    syslog_level: str | None,
    stream: TextIO | None = None,
) -> list[str]:
    """Replace our handlers; returns warnings (a target that could not be opened)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(handler)
        handler.close()
    warnings: list[str] = []
    levels: list[int] = []
    formatter = logging.Formatter(FORMAT)

    def add(handler: logging.Handler, level: int) -> None:
        setattr(handler, _OURS, True)
        handler.setLevel(level)
        root.addHandler(handler)
        levels.append(level)

    if (level := _level(screen)) is not None:
        screen_handler = logging.StreamHandler(stream or sys.stdout)
        screen_handler.setFormatter(formatter)
        add(screen_handler, level)
    if file_path and (level := _level(file_level)) is not None:
        try:
            os.makedirs(os.path.dirname(file_path) or ".", exist_ok=True)
            # WatchedFileHandler reopens the file when logrotate moves it.
            handler = logging.handlers.WatchedFileHandler(file_path)
            handler.setFormatter(formatter)
            add(handler, level)
        except OSError as e:
            warnings.append(f"cannot open log file {file_path}: {e}")
    if (level := _level(syslog_level)) is not None:
        if os.path.exists(SYSLOG_SOCKET):
            try:
                syslog = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET)
                syslog.setFormatter(logging.Formatter(SYSLOG_FORMAT))
                syslog.addFilter(_ProgramFilter(program or "calico"))
                add(syslog, level)
            except OSError as e:
                warnings.append(f"cannot log to syslog: {e}")
        else:
            warnings.append(f"no syslog socket at {SYSLOG_SOCKET}; syslog logging is off")
    root.setLevel(min(levels) if levels else logging.CRITICAL + 1)
    return warnings
