"""File helpers: atomic writes (engines, checkpoints, caches and reports never appear half-written), the
one temp name and the clean-up of what a killed write leaves, the check that an output path can be written,
and digests."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)
# The one temp name: FOLDER/NAME is written through FOLDER/.NAME.<mkstemp's random letters>.tmp
_TEMP_NAME = re.compile(r"\.(.+)\.[a-z0-9_]+\.tmp")


def temp_path(path: str | Path) -> Path:
    """Create an empty temp file next to ``path``, named as remove_temp_leftovers knows, and return it.

    For writers that rename it to ``path`` themselves (e.g. several files replaced together).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    return Path(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj, indent: int | None = 1) -> None:
    """A JSON artifact (report, summary, sidecar), written atomically, ending in a newline."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def _temp_targets(name: str) -> Iterator[str]:
    """The names ``name`` is a temp file of: N for .N.abc.tmp, and .N.abc.tmp and N for ..N.abc.tmp.xyz.tmp
    (what an atomic write to a temp_path leaves)."""
    while match := _TEMP_NAME.fullmatch(name):
        name = match[1]
        yield name


def remove_temp_leftovers(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temp files that killed writes of ``folder/name`` left (temp_path, atomic_write_bytes);
    return them.

    Only plain files named exactly as temp_path names them for those names (or temps of such temps) are
    touched. Call it where no other process can be writing those files (e.g. when a run folder is opened).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = set(names)
    removed = []
    for p in sorted(folder.iterdir()):
        if not names.isdisjoint(_temp_targets(p.name)) and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
            except FileNotFoundError:  # another process (another rank) removed it first
                continue
            removed.append(p)
    return removed


def check_output_path(path: str | Path, folder: bool = False) -> None:
    """Raise ValueError naming ``path`` and the problem when an output cannot be written there.

    ``folder``: the output is a folder (a run folder), else a file. Refused: a file where a folder is
    wanted or the other way round, a file in the way of the folders to create, and a folder that cannot be
    written (probed with a nameless temp file, so permissions, read-only mounts and root are all judged
    as the write itself will be). Creates nothing.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{path}: is a {'file' if folder else 'folder'}, not a {'folder' if folder else 'file'}")
    where = path if folder else path.parent
    while not where.exists() and where != where.parent:  # the folder the output's own folders would go in
        where = where.parent
    if not where.is_dir():
        raise ValueError(f"{path}: cannot be written, {where} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=where).close()
    except OSError as e:
        raise ValueError(f"{path}: cannot be written, no write access to {where} ({e.strerror})") from None


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sha1_file(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()
