"""insightface verification pair files (`lfw.bin`, `cfp_fp.bin`, ...): write them, read them safely.

A `.bin` is a pickle of `(images, issame)`: `images` a list of 2*N encoded images (JPEG bytes),
`issame` a list of N bools; images 2i and 2i+1 form pair i. insightface writes them with
`pickle.dump` and reads them with `pickle.load(f, encoding="bytes")`, which runs whatever the file
asks for. The reader here never does: its unpickler resolves no global at all, since lists,
tuples, bytes and bools are built by pickle opcodes alone. The one exception is the function a
Python 3 pickle of protocol 0-2 uses to rebuild `bytes`, `_codecs.encode(str, "latin1")`, which
is replaced by a checked stand-in that only turns a str into bytes.

    >>> images, issame = read_verification_bin("lfw.bin")
    >>> write_verification_bin("pairs.bin", images, issame)
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Sequence

from .errors import UserError
from .files import write_bytes_atomic


# Protocol 4: what Python >= 3.4 reads, compact framing for large byte strings.
WRITE_PROTOCOL = 4


class VerificationBinError(UserError, ValueError):
    """A .bin that is not a verification pair file, or that asks the unpickler for code."""


def _latin1_bytes(text, encoding="latin1"):
    """Stand-in for `_codecs.encode`, as protocol-2 pickles of bytes written by Python 3 use it."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode called with ({type(text).__name__}, {encoding!r}); "
                                     "only (str, 'latin1') rebuilds bytes")
    return text.encode("latin1")


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds lists, tuples, bytes, str, numbers and bools; refuses every global and persistent id."""

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} "
                                     "(a verification .bin holds only lists of bytes and bools)")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id "
                                     "(a verification .bin holds only lists of bytes and bools)")


def pickle_framing_problem(data: bytes) -> str | None:
    """What is wrong with the opcode framing of pickle `data`, or None. pickletools reads each counted
    string from the data, never allocating what a length field claims, so a file that passes cannot make
    an unpickler allocate more than it holds."""
    import pickletools

    try:
        for _ in pickletools.genops(data):
            pass
    except Exception as e:  # noqa: BLE001 - any malformation: ValueError, struct.error, UnicodeDecodeError, ...
        return f"{type(e).__name__}: {str(e)[:200]}"
    return None


def _check_framing(data: bytes, source: str) -> None:
    problem = pickle_framing_problem(data)
    if problem:
        raise VerificationBinError(f"{source}: not loaded: pickle data was truncated or malformed ({problem})")


def loads_verification_bin(data: bytes, source: str = "<bytes>") -> tuple[list[bytes], list[bool]]:
    """Parse the bytes of a verification .bin; `source` names it in errors."""
    _check_framing(data, source)
    try:
        # encoding="bytes": Python 2 str objects (insightface's original bins) come back as bytes.
        obj = _DataOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise VerificationBinError(f"{source}: not loaded: {e}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
            MemoryError) as e:
        raise VerificationBinError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None
    return _check(obj, source)


def read_verification_bin(path: str | os.PathLike) -> tuple[list[bytes], list[bool]]:
    """The (images, issame) of an insightface .bin, without running any code from the file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise VerificationBinError(f"{path}: verification file not found") from None
    return loads_verification_bin(data, path)


def _check(obj, source: str) -> tuple[list[bytes], list[bool]]:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise VerificationBinError(f"{source}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    images, issame = obj
    if not isinstance(images, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise VerificationBinError(f"{source}: images and issame must be lists, got "
                                   f"{type(images).__name__} and {type(issame).__name__}")
    bad = next((i for i, b in enumerate(images) if not isinstance(b, (bytes, bytearray))), None)
    if bad is not None:
        raise VerificationBinError(f"{source}: image {bad} is a {type(images[bad]).__name__}, not encoded bytes")
    bad = next((i for i, s in enumerate(issame) if not isinstance(s, (bool, int)) or s not in (0, 1)), None)
    if bad is not None:
        raise VerificationBinError(f"{source}: issame[{bad}] = {issame[bad]!r} is not a bool")
    if len(images) != 2 * len(issame):
        raise VerificationBinError(f"{source}: {len(images)} images for {len(issame)} pairs "
                                   f"(expected {2 * len(issame)})")
    return [bytes(b) for b in images], [bool(s) for s in issame]


def dumps_verification_bin(images: Sequence[bytes], issame: Sequence[bool]) -> bytes:
    images = [bytes(b) for b in images]
    issame = [bool(s) for s in issame]
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    return pickle.dumps((images, issame), protocol=WRITE_PROTOCOL)


def write_verification_bin(path: str | os.PathLike, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write pairs in insightface's format (images 2i, 2i+1 form pair i), atomically."""
    write_bytes_atomic(path, dumps_verification_bin(images, issame))
