"""Safe writes: a crash mid-write never leaves a half-written checkpoint, cache or JSON.

Every file is first written to a hidden temporary beside it, ``.NAME.PID.RANDOM.tmp``, and
renamed over ``NAME`` only when complete. The temporary is removed on every exit path Python
sees (an error, Ctrl-C, SIGTERM); one left by a process killed outright (kill -9, power loss)
carries that process's id, so the next run finds it stale and removes it
(:func:`remove_stale_temporaries`). Files are created with the user's permissions (umask), as
``open`` would create them, so a shared cache or run folder stays readable by colleagues.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

# .NAME.PID.RANDOM.tmp, and the .NAME.RANDOM.tmp of mkstemp that earlier versions wrote
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?(?P<random>[A-Za-z0-9_]{6,16})\.tmp$")


class UnusableFolder(ValueError):
    """An output folder that cannot be used: a file is in the way, or it cannot be created or written."""


def _new_temporary(path: Path) -> Path:
    """Create an empty temporary beside ``path``: mode 0666 minus the umask, like any new file."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # a name drawn twice: draw again
            continue


def _with_file_name(error: OSError, path: Path) -> OSError:
    """The same error, naming the file the user knows (not the temporary), and saying the old one is intact."""
    strerror = error.strerror or str(error)
    return OSError(error.errno or errno.EIO, f"{strerror} (nothing was changed)", str(path))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    An OSError inside the block (a full disk, a read-only file system) is raised again naming
    ``path``; ``path`` keeps its previous content and the temporary is gone.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temporary(path)
    except OSError as error:
        raise _with_file_name(error, path) from None
    try:
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as error:
            raise _with_file_name(error, path) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_together(writers: Mapping[str | os.PathLike, Callable[[Path], None]]) -> None:
    """Write several files as one unit: all of them, or none changed.

    Each writer fills its temporary; only when every one succeeded are they renamed into place,
    the last one named last. That last file is removed before the others are replaced, so a
    crash between the renames leaves it absent rather than beside files of another unit: its
    presence means the files before it belong to it (evaluate names metrics.json last).

    Before the first rename a journal beside the last file lists the renames: once it exists the
    unit is committed, so an exception in the window (Ctrl-C) finishes the renames rather than
    undoing them, and a kill there (kill -9, power loss) is finished by the next start
    (:func:`remove_stale_temporaries`): never new files of one unit beside old ones of another.
    """
    paths = [Path(p) for p in writers]
    temporaries: list[Path] = []
    journal = None
    try:
        for path, write in zip(paths, writers.values()):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                temporaries.append(_new_temporary(path))
                write(temporaries[-1])
            except OSError as error:
                raise _with_file_name(error, path) from None
        pending = paths[-1].with_name(f".{paths[-1].name}.{os.getpid()}{_JOURNAL_SUFFIX}")
        with atomic_path(pending) as tmp:
            tmp.write_text(json.dumps([[str(t), str(p)] for t, p in zip(temporaries, paths)]), encoding="utf-8")
        journal = pending
        _finish_renames(journal)
    finally:
        if journal is not None:
            _finish_renames(journal)  # committed: an interrupt in the window finishes the unit
        else:
            for tmp in temporaries:
                tmp.unlink(missing_ok=True)


_JOURNAL_SUFFIX = ".together"
_JOURNAL = re.compile(r"^\..+\.(?P<pid>\d+)\.together$")


def _finish_renames(journal: Path) -> None:
    """Do the renames a write_together journal lists that are not done yet, the last file removed
    first and renamed last; then remove the journal. Safe to repeat."""
    try:
        renames = [(Path(t), Path(p)) for t, p in json.loads(journal.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        journal.unlink(missing_ok=True)  # unreadable: written by no finished commit
        return
    if renames and renames[-1][0].exists():
        renames[-1][1].unlink(missing_ok=True)
    for tmp, path in renames:
        if tmp.exists():
            os.replace(tmp, path)
    journal.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    return True


def finish_interrupted_writes(folder: str | os.PathLike) -> None:
    """Finish the write_together units in ``folder`` that a process killed between its renames had
    committed (its journal is there); those of a live process are left to it."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        match = _JOURNAL.match(entry.name)
        if match and not (int(match.group("pid")) != os.getpid() and _process_alive(int(match.group("pid")))):
            _finish_renames(entry)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that processes no longer running left in ``folder``; return them.

    A temporary of a live process (another writer at work) is left alone; one without a process
    id was written by an earlier version of mlasm and is stale too.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    finish_interrupted_writes(folder)  # first the units a killed process had committed
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if not match or not entry.is_file():
            continue
        pid = match.group("pid")
        if pid is not None and (int(pid) == os.getpid() or _process_alive(int(pid))):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except FileNotFoundError:  # another process cleaned it first
            pass
    return removed


def check_output_folder(path: str | os.PathLike, option: str = "--out", clean: bool = False) -> Path:
    """Create ``path`` if needed and prove that files can be written in it, before any work starts;
    ``clean``: then remove the temporaries that writers no longer running left there.

    Raises UnusableFolder naming ``option`` and the folder: a file in the way, a folder that
    cannot be created, or one where nothing can be written (read-only, full, no permission).
    """
    if not str(path).strip():  # Path("") is the current folder: a run would land among the user's files
        raise UnusableFolder(f"{option} '': an empty name, expected a folder")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UnusableFolder(f"{option} {path}: is a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        in_the_way = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = f"{in_the_way} is a file" if in_the_way else (error.strerror or str(error))
        raise UnusableFolder(f"{option} {path}: cannot create the folder ({reason})") from None
    try:
        probe = _new_temporary(path / "mlasm-write-test")
        probe.unlink()
    except OSError as error:
        raise UnusableFolder(f"{option} {path}: cannot write files in it ({error.strerror})") from None
    if clean:
        remove_stale_temporaries(path)
    return path


def npz_declared_sizes(path: str | os.PathLike) -> dict[str, int]:
    """Member name (without .npy) -> uncompressed size in bytes, as an .npz's zip directory declares
    it: read before anything is decompressed, so that a small file declaring gigabytes is refused
    unread. Raises zipfile.BadZipFile or OSError for a file that is no zip archive."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return {info.filename.removesuffix(".npy"): info.file_size for info in archive.infolist()}


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
