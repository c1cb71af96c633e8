"""File helpers: atomic writes (engines, checkpoints, caches and reports never appear half-written), the
clean-up of what a killed write leaves, the check that an output path can be written, and digests."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

_UMASK = os.umask(0)
os.umask(_UMASK)
# atomic_write_bytes writes FOLDER/NAME through FOLDER/.NAME.<mkstemp's random letters>.tmp
_TEMP_PREFIX, _TEMP_SUFFIX = ".{name}.", ".tmp"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX.format(name=path.name), suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temp_leftovers(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temp files that killed ``atomic_write_bytes`` calls of ``folder/name`` left; return them.

    Only plain files named exactly as atomic_write_bytes names its temp files for those names are touched.
    Call it where no other process can be writing those files (e.g. when a run folder is opened).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = [re.compile(re.escape(_TEMP_PREFIX.format(name=n)) + r"[a-z0-9_]+" + re.escape(_TEMP_SUFFIX))
                for n in names]
    removed = []
    for p in sorted(folder.iterdir()):
        if any(pat.fullmatch(p.name) for pat in patterns) and p.is_file() and not p.is_symlink():
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
