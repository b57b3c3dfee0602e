"""BIRD's configuration file: checked with `bird -p -c` before it is used, then written
atomically (a temporary file in the same directory, fsync, rename, fsync of the directory), so
BIRD never reads a partial or invalid file, whatever happens to calico-bgp meanwhile.

A file that replaces an existing one keeps its owner, group and mode (Debian's is 0640
bird:bird, and BIRD drops root); a new one is 0644 (it holds no secret).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 30.0
NEW_FILE_MODE = 0o644


class ConfigFile:
    def __init__(self, path: str, bird: str = "bird"):
        self.path = Path(path)
        found = shutil.which(bird)
        if found is None:
            raise FileNotFoundError(f"BIRD binary {bird!r} not found")
        self.bird = found

    def current(self) -> str | None:
        """The file's text now (None: it does not exist or cannot be read)."""
        try:
            return self.path.read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def check(self, path: Path) -> str | None:
        """`bird -p -c path` in a helper that dies with this process; None if BIRD accepts the
        file, else BIRD's message."""
        argv = [sys.executable, "-m", "calico.bgp.check", str(os.getpid()), self.bird, str(path)]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            return f"bird -p did not finish within {CHECK_TIMEOUT:.0f} s"
        if proc.returncode == 0:
            return None
        message = (proc.stderr or proc.stdout).strip()
        return message or f"bird -p exited with status {proc.returncode}"

    def write(self, text: str) -> str | None:
        """Check `text` and, if BIRD accepts it, make it the file. None on success, else BIRD's
        reason for refusing it (the old file is left as it was). OSError when the file cannot
        be written (a full disk, permissions): worth trying again later, unlike a refusal."""
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            self._copy_ownership(temp)
            problem = self.check(temp)
            if problem is not None:
                return problem
            os.replace(temp, self.path)
        finally:
            temp.unlink(missing_ok=True)
        self._sync_directory(directory)
        return None

    def _copy_ownership(self, temp: Path) -> None:
        try:
            old = self.path.stat()
        except FileNotFoundError:
            os.chmod(temp, NEW_FILE_MODE)
            return
        os.chmod(temp, old.st_mode & 0o7777)
        if hasattr(os, "chown"):
            try:
                os.chown(temp, old.st_uid, old.st_gid)
            except PermissionError:
                log.warning("Cannot give %s the owner of %s", temp, self.path)

    @staticmethod
    def _sync_directory(directory: Path) -> None:
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
