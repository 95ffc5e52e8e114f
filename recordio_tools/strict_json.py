"""JSON read the strict way, for every file a user can hand us (manifests, dataset.json, label maps,
checkpoint meta.json and state.json): a duplicate key, a NaN or an infinity, nesting deeper than
`MAX_DEPTH` or a file that is not UTF-8 text is refused with one line naming the file (and the key),
instead of the last duplicate winning quietly or a RecursionError traceback::

    body = read_json(path, JsonFileError)           # raises JsonFileError("PATH: ...")
    count = json_int(body, "num_classes", path, JsonFileError, upper=10**9)

This module imports only `errors`, so both packages can use it.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import UserError

MAX_DEPTH = 64  # no file of ours nests deeper than a handful of levels


class JsonFileError(UserError, ValueError):
    """A JSON file that is not what strict reading accepts; the message names the file."""


class _Refused(UserError, ValueError):
    """Raised inside the parser's hooks; turned into the caller's error naming the file."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    body: dict = {}
    for key, value in pairs:
        if key in body:
            raise _Refused(f"duplicate key {key!r}")
        body[key] = value
    return body


def _no_constant(name: str):
    raise _Refused(f"non-finite number {name} (JSON has none)")


def _depth_of(value: Any) -> int:
    """Deepest nesting of lists and dicts in a parsed `value` (iterative: no recursion on a deep file)."""
    deepest, stack = 0, [(value, 1)] if isinstance(value, (list, dict)) else []
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
    return deepest


def parse_json(text: str, source: str, error: type[Exception] = JsonFileError) -> Any:
    """`text` parsed strictly (see the module doc); `error(f"{source}: ...")` when refused."""
    try:
        body = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _Refused as e:
        raise error(f"{source}: {e}") from None
    except RecursionError:
        raise error(f"{source}: JSON nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise error(f"{source}: not valid JSON ({e})") from None
    if _depth_of(body) > MAX_DEPTH:
        raise error(f"{source}: JSON nested deeper than {MAX_DEPTH} levels")
    return body


def read_json(path: str, error: type[Exception] = JsonFileError, what: str = "file") -> Any:
    """The JSON file at `path` parsed strictly; `error` names `path` (and `what` when it is missing)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not valid JSON (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    return parse_json(text, path, error)


def json_int(body: dict, key: str, source: str, error: type[Exception] = JsonFileError, *, lower: int = 0,
             upper: int | None = None, default: Any = ...) -> int:
    """`body[key]` as an int in [lower, upper] (a bool, float or string is refused); `default` when absent
    if given."""
    if key not in body and default is not ...:
        return default
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise error(f"{source}: field {key!r} must be an integer, got {value!r}"[:300])
    if value < lower or (upper is not None and value > upper):
        bound = f"[{lower}, {upper}]" if upper is not None else f">= {lower}"
        raise error(f"{source}: field {key!r} is {value}, outside {bound}"[:300])
    return value
