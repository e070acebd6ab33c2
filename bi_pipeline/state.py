"""Files the pipeline keeps about itself under ``$BI_PIPELINE_HOME/state`` (no Dagster).

- ``ingested.json``: which file content each period was ingested from (the sensor's starting point);
- ``landing_scan.json``: what the last scan of the landing zone saw (size, mtime, inode and hash per file), so a
  file is taken only once two scans agree and an unchanged file is not hashed again;
- ``removals.jsonl``: periods removed on purpose, with who, when and why.

Every write goes to a unique temporary name in the same folder, is fsync'd, then renamed over the target: a crash
leaves the old file or the new one, never half of either. A state file that cannot be read is an error naming it
and the command that rebuilds it, never a silent reset.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

# Temporary files this project writes: `.<name>.<32 hex>.tmp`.
TEMP_SUFFIX = ".tmp"
REBUILD_COMMAND = "bi-pipeline state rebuild"


class StateError(RuntimeError):
    """A state file under the home cannot be read. Names the file and how to rebuild it."""

    def __init__(self, path: Path, problem: str, rebuild: str = REBUILD_COMMAND) -> None:
        self.path = path
        super().__init__(f"{path}: {problem}; rebuild it with `{rebuild}` (the landed files are not touched)")


def temp_path(path: Path) -> Path:
    """A unique temporary name beside ``path``: concurrent writers never share one."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory; the rename is still atomic
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` then fsync and rename over ``path``; the temporary file is removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path`` (runs, the sensor and the CLI may update one state file together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f"{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_json(path: Path, default: dict) -> dict:
    """A JSON object from a state file: ``default`` when absent, a StateError when it cannot be read as one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return dict(default)
    except OSError as exc:
        raise StateError(path, f"cannot be read ({exc})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(path, f"is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise StateError(path, f"holds a {type(value).__name__}, not a JSON object")
    return value


def write_json(path: Path, value: dict) -> None:
    atomic_write_text(path, json.dumps(value, sort_keys=True, indent=0))


# --- ingestion manifest -----------------------------------------------------------------------------------------
# Which file content each period was last ingested from. The sensor starts from it when it has no cursor, so files
# ingested by `bi-pipeline demo`/`run` are not requested again when the UI starts.


def load_manifest(path: Path) -> dict[str, str]:
    return {str(k): str(v) for k, v in read_json(path, {}).items()}


def update_manifest(path: Path, entries: dict[str, str]) -> None:
    """Merge {relpath: sha256} under a file lock (runs may finish at the same time)."""
    entries = {k: v for k, v in entries.items() if k and v}
    if not entries:
        return
    with locked(path):
        current = load_manifest(path)
        current.update(entries)
        write_json(path, current)


# --- removals ---------------------------------------------------------------------------------------------------


def record_removal(path: Path, period: str, files: dict[str, str], reason: str) -> dict:
    """Append who removed which period, when, why and which file content it held (one JSON line each)."""
    entry = {
        "period": period,
        "files": files,
        "reason": reason,
        "by": f"{getpass.getuser()}@{socket.gethostname()}",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with locked(path):
        previous = path.read_text(encoding="utf-8") if path.exists() else ""
        atomic_write_text(path, previous + json.dumps(entry, sort_keys=True) + "\n")
    return entry


def load_removals(path: Path) -> list[dict]:
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise StateError(path, f"line {number} is not valid JSON ({exc.msg})", "fix or delete that line") from None
    return entries


def removed_files(path: Path) -> dict[str, dict]:
    """{relpath@sha256: removal entry}: landed content removed on purpose is not ingested again."""
    out = {}
    for entry in load_removals(path):
        for rel, sha in entry.get("files", {}).items():
            out[f"{rel}@{sha}"] = entry
    return out


# --- housekeeping -----------------------------------------------------------------------------------------------


def sweep_temp_files(root: Path, min_age_seconds: float = 600.0, now: float | None = None) -> list[Path]:
    """Remove temporary files a crashed writer left under ``root`` (older than ``min_age_seconds``, so a write in
    progress is never touched). Returns what was removed."""
    if not root.exists():
        return []
    now = time.time() if now is None else now
    removed = []
    for path in root.rglob(f".*{TEMP_SUFFIX}"):
        try:
            if path.is_file() and not path.is_symlink() and now - path.stat().st_mtime >= min_age_seconds:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by its user only; an existing folder is left as its owner set it."""
    path = Path(path)
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    return path
