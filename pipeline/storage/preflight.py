"""Before any data moves: the places a run writes to can be created and written.

A probe file is written where the run will write and removed again, so a read-only directory, a path
under a file, a bucket that does not exist, wrong credentials or a missing write permission stop the run
with a message naming the option, instead of a traceback after the inputs were read. Directories the
probe had to create are removed too (the run creates them again), so a refused run leaves nothing behind.
On object stores no directory and no bucket is created: s3fs's makedirs would create a missing bucket.
"""

from __future__ import annotations

import uuid

import fsspec

from pipeline.config import ConfigError
from pipeline.storage import fsio


def _missing_directories(fs, path: str) -> list[str]:
    """`path` and its ancestors that do not exist yet, deepest first; raises when the nearest existing one
    is a file (nothing can be created under it)."""
    missing = []
    current = path.rstrip("/")
    while current and not fs.exists(current):
        missing.append(current)
        parent = current.rsplit("/", 1)[0] if "/" in current else ""
        if parent == current:
            break
        current = parent
    if current and not fs.isdir(current):
        raise NotADirectoryError(f"{current} is a file, not a directory")
    return missing


def check_writable(url: str, option: str) -> None:
    """Raises ConfigError naming `option` when `url` (a directory, local or fsspec URL) cannot be written."""
    object_store = False
    try:
        fs, path = fsspec.core.url_to_fs(url)
        object_store = not fsio.renames_for_atomicity(fs)
        created = [] if object_store else _missing_directories(fs, path)
        probe = f"{path.rstrip('/')}/.herolabel-write-check-{uuid.uuid4().hex}"
        try:
            if created:
                fs.makedirs(path, exist_ok=True)
            fs.pipe_file(probe, b"")
            fs.rm(probe)  # only reached once written: an existence check could fail for the same reason
        finally:
            for directory in created:  # deepest first; only what the probe created (maybe partly)
                if fs.exists(directory):
                    fs.rmdir(directory)
    # PermissionError (read-only, no permission, wrong credentials), FileNotFoundError (no such bucket),
    # NotADirectoryError; ValueError: an unknown protocol; ImportError: its filesystem is not installed.
    except (OSError, ValueError, ImportError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if getattr(exc, "filename", None) and exc.filename != url:
            reason += f" ({exc.filename})"
        if isinstance(exc, FileNotFoundError) and object_store:  # a write to a key fails so only without its bucket
            reason = f"no such bucket ({reason})"
        raise ConfigError(f"{option} {url} cannot be created or written: {reason}") from exc
