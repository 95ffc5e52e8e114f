"""Atomic writes: a file or a folder is either wholly the old one or wholly the new one.

Files are written under a temporary name in the same folder (`.NAME.tmp-PID`), fsynced and
renamed over the target with os.replace; on any error or Ctrl-C the temporary is removed and the
target is untouched::

    write_text_atomic("out/report.txt", text)
    write_json_atomic("out/report.json", body, indent=1)
    with atomic_path("out/model.onnx") as tmp:      # for writers that take a path (torch.save,
        torch.onnx.export(net, example, tmp)        # onnx export, savefig: keep the suffix)

Folders are built under `.NAME.tmp-PID` beside the target and swapped in at the end
(`atomic_directory`, or `replace_directory` for a folder built elsewhere); temporaries of killed
runs (processes no longer alive) are removed by the next run. With a `command`, the folder is
marked as that command's output (`OUTPUT_MARKER`, read back by `output_owner`).

This module imports nothing else from the package, so both packages can use it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from contextlib import contextmanager
from typing import Any, Iterator

OUTPUT_MARKER = ".recordio_tools-output.json"


def temp_name(path: str | os.PathLike, suffix: str = "") -> str:
    """`.NAME.tmp-PID` beside `path` (+ `suffix`, e.g. ".onnx" for writers that look at the extension)."""
    head, tail = os.path.split(os.fspath(path))
    return os.path.join(head, f".{tail}.tmp-{os.getpid()}{suffix}")


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder, so a rename inside it survives a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: str | os.PathLike) -> None:
    """Remove a file; nothing when it is already gone."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _make_parent(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, already_temp: bool = False,
                       tmp: str | None = None, sync_dir: bool = False, make_parents: bool = False) -> None:
    """Write `data` to `path` through a temporary file and a rename (`already_temp`: `path` is itself the
    temporary name, which the caller renames; `tmp`: the temporary name to use instead of `temp_name`;
    `sync_dir`: fsync the folder after the rename; `make_parents`: create the missing folders first)."""
    path = os.fspath(path)
    if make_parents:
        _make_parent(path)
    tmp = path if already_temp else (tmp or temp_name(path))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not already_temp:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp) and not already_temp:
            os.remove(tmp)
        raise
    if sync_dir and not already_temp:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_text_atomic(path: str | os.PathLike, text: str, already_temp: bool = False, tmp: str | None = None,
                      sync_dir: bool = False, make_parents: bool = False) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file and a rename (see `write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"), already_temp, tmp, sync_dir, make_parents)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = None, newline: bool = True,
                      make_parents: bool = False, **dumps_kwargs) -> None:
    """`obj` as JSON (json.dumps with `indent` and `dumps_kwargs`, e.g. allow_nan=False or default=str; a
    final newline unless `newline=False`) written atomically to `path`."""
    text = json.dumps(obj, indent=indent, **dumps_kwargs) + ("\n" if newline else "")
    write_text_atomic(path, text, make_parents=make_parents)


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, make_parents: bool = False) -> Iterator[str]:
    """Yield a temporary path beside `path` for a writer that takes a file name (torch.save, onnx export,
    savefig); on success the file is fsynced and renamed to `path`, on any exception it is removed.
    `suffix` defaults to `path`'s extension, so writers that choose a format by extension still do."""
    path = os.fspath(path)
    if make_parents:
        _make_parent(path)
    tmp = temp_name(path, os.path.splitext(path)[1] if suffix is None else suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------
# Folders


def replace_directory(work: str | os.PathLike, target: str | os.PathLike, old: str | os.PathLike | None = None) -> None:
    """Put the finished folder `work` at `target`: an existing `target` is renamed to `old` (default
    `.NAME.old-PID` beside it; a leftover folder of that name is removed first), `work` renamed into
    place, then `old` removed. At every instant `target` is the old folder or the new one (or absent
    between the two renames, never half of either)."""
    work, target = os.fspath(work), os.path.abspath(target)
    if old is None:
        parent, name = os.path.split(target)
        old = os.path.join(parent, f".{name}.old-{os.getpid()}")
    if os.path.exists(target):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(work, target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(target: str, command: str | None = None) -> Iterator[str]:
    """Yield a temporary folder; on success it replaces `target`, on any exception it is removed.

    With `command`, the folder is marked as that command's output (see `output_owner`). Temporaries
    left by killed runs (of processes no longer alive) are removed first."""
    target = os.path.abspath(target)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, name)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        if command:
            write_output_mark(tmp, command)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, target)


def process_alive(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(parent: str, name: str) -> list[str]:
    """Remove `.NAME.tmp-PID` / `.NAME.old-PID` folders in `parent` whose process is gone; returns them."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-(\d+)$")
    removed = []
    for entry in os.listdir(parent):
        match = pattern.match(entry)
        if match and int(match.group(2)) != os.getpid() and not process_alive(int(match.group(2))):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            removed.append(entry)
    return removed


# ---------------------------------------------------------------------------------------------
# Output marks: bound to their folder (its identity, which a rename keeps and a copy does not) and
# listing what the command wrote, so a copied or unpacked mark, or a folder the user has put anything
# else into, is not taken for a replaceable output.

MAX_MARK_BYTES = 64 << 20  # a mark lists file names: far below this for any folder we write


def _folder_identity(folder: str) -> list[int]:
    stat = os.stat(folder)
    return [stat.st_dev, stat.st_ino]


def _listing(folder: str) -> list[str]:
    """Every file and folder under `folder` (relative, '/'-separated, folders with a trailing '/'), the mark
    itself left out."""
    entries = []
    for here, dirs, files in os.walk(folder):
        rel = os.path.relpath(here, folder)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        entries.extend(f"{prefix}{d}/" for d in dirs)
        entries.extend(f"{prefix}{f}" for f in files if prefix or f != OUTPUT_MARKER)
    return sorted(entries)


def write_output_mark(folder: str, command: str) -> None:
    """Mark `folder` (finished, about to be renamed into place) as `command`'s output."""
    body = {"command": command, "folder": _folder_identity(folder), "files": _listing(folder)}
    write_text_atomic(os.path.join(folder, OUTPUT_MARKER), json.dumps(body) + "\n")


def mark_status(folder: str) -> tuple[str | None, str]:
    """(the command whose output `folder` is, or None; why not, in words)."""
    path = os.path.join(folder, OUTPUT_MARKER)
    try:
        if os.path.getsize(path) > MAX_MARK_BYTES:
            return None, f"its {OUTPUT_MARKER} is too large to be ours"
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None, "not an output of recordio_tools"
    if not isinstance(body, dict) or not isinstance(body.get("command"), str):
        return None, "not an output of recordio_tools"
    if body.get("folder") != _folder_identity(folder) or not isinstance(body.get("files"), list):
        return None, f"its {OUTPUT_MARKER} was not written in this folder (copied or unpacked from elsewhere)"
    program = body["command"] if body["command"].startswith("fftrain ") else f"recordio_tools {body['command']}"
    extra = sorted(set(_listing(folder)) - set(map(str, body["files"])))
    if extra:
        return None, (f"an output of `{program}` that now also holds "
                      f"{', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}, which it did not write")
    return body["command"], f"an output of `{program}`"


def output_owner(folder: str) -> str | None:
    """The command that wrote `folder` (its mark, bound to this folder and covering all it holds), or None."""
    return mark_status(folder)[0]
