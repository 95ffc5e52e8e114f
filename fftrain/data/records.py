"""The training set's records as both readers see them: the combined index over all shards.

`RecordSet(manifest)` parses the combined index (keys 0..N-1, byte offsets counted over the
shards concatenated in manifest order, exactly what DALI's `fn.readers.mxnet` takes) and reads
any record by key: `read_batch(keys)` returns the JPEG bytes and the exact source class ids.

Start-up checks (`validate`), before the first step, each error naming the file:
- the combined index: offsets strictly increasing and inside the shards; the number of its
  records in each shard equals the manifest's count;
- each shard's own .idx: every combined-index record of the shard is a record start in it;
- the first, the last and a few random records of every shard: a valid record header and a
  label inside its dataset's class range.
Per batch, `read_batch` checks every record before a decoder sees it: its header, its label
against its shard's dataset range, and its JPEG's marker structure (`jpeg_structure_problem`:
DALI's parser can crash the process on a JPEG whose header is intact and whose body is zeroed).
A bad record is named by `describe(key)` (shard, shard key, byte offset) and, by
`on_bad_record`, stops the run ('stop', a DataError) or is replaced by another record of the same
batch ('skip', with a warning naming it), so every rank still gets a full batch. A JPEG that
passes the structure check and still does not decode is found by the decoder and named too.
A shard that is shorter than its index says (a cut-short copy) is named with what helps: verify
it, then re-import that dataset and rebuild the training set.
"""

from __future__ import annotations

import io
import logging
import os
import struct

import numpy as np

from fftrain.errors import UserError
from recordio_tools.manifest import Manifest
from recordio_tools.recordio import (MAGIC, PART_HEADER_SIZE, RecordIOError, decode_part_header, parse_image_header,
                                     read_index, read_record_at)

VERIFY_HINT = "run `recordio_tools verify {manifest}` to list every bad record"
TRUNCATED_HINT = ("the shard is shorter than its index says (cut short after it was written?); run "
                  "`recordio_tools verify {folder}`, then re-import that dataset from its source "
                  "(recordio_tools import / convert) and rebuild the training set (recordio_tools build)")
ON_BAD_RECORD = ("stop", "skip")


class DataError(UserError, ValueError):
    """Training data that does not match its manifest or cannot be decoded; names file and key."""


class ShardTruncated(DataError):
    """A shard shorter than its index says; never skipped (every record after the cut is gone)."""


def parse_index_offsets(path: str) -> np.ndarray:
    """The offsets of a .idx file (key<TAB>offset per line) in file order, parsed in C."""
    try:
        with open(path, "r", encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: index file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: index file is not text") from None
    try:
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    except ValueError:
        values = None
    lines = text.count("\n") + (not text.endswith("\n") and bool(text))
    if values is None or values.size != 2 * lines:  # blank lines or bad ones: the exact, slower parser
        return np.array([offset for _, offset in read_index(path)], dtype=np.int64)  # RecordIOError names the line
    return values[1::2].copy()


class RecordSet:
    """Random access to the N records of a training set by combined-index key."""

    def __init__(self, manifest: Manifest, on_bad_record: str = "stop"):
        if on_bad_record not in ON_BAD_RECORD:
            raise ValueError(f"on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}")
        self.manifest = manifest
        self.on_bad_record = on_bad_record
        self.skipped: set[int] = set()
        self.rec_paths = [os.path.normpath(p) for p in manifest.rec_paths()]
        self.idx_paths = [os.path.normpath(p) for p in manifest.shard_idx_paths()]
        self.index_path = os.path.normpath(manifest.index_path())
        sizes = [os.path.getsize(p) for p in self.rec_paths]
        self.file_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.offsets = parse_index_offsets(self.index_path)
        self._check_combined_index()
        self.file_first_key = np.searchsorted(self.offsets, self.file_starts).astype(np.int64)
        self.num_classes = manifest.num_classes
        datasets = manifest.dataset_of_shard()
        self.file_dataset = np.array(datasets, dtype=np.int64)
        self.file_class_lo = np.array([manifest.datasets[d].class_offset for d in datasets], dtype=np.int64)
        self.file_class_hi = self.file_class_lo + [manifest.datasets[d].num_classes for d in datasets]
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        self._shard_keys: dict[int, dict[int, int]] = {}

    def __len__(self) -> int:
        return len(self.offsets)

    # -- layout -------------------------------------------------------------------------------

    def _check_combined_index(self) -> None:
        try:
            self._check_combined_offsets()
        except DataError:
            self._check_shard_lengths()  # a cut-short shard shifts every later one: name it instead
            raise

    def _check_shard_lengths(self) -> None:
        for shard, (rec, idx) in enumerate(zip(self.rec_paths, self.idx_paths)):
            try:
                own = parse_index_offsets(idx)
            except (DataError, RecordIOError):
                continue
            size = int(self.file_starts[shard + 1] - self.file_starts[shard])
            if own.size and int(own.max()) >= size:
                raise ShardTruncated(f"{rec}: {size} bytes, but its index {idx} has a record at byte {int(own.max())}; "
                                + self.truncated_hint(shard))

    def truncated_hint(self, shard: int) -> str:
        return TRUNCATED_HINT.format(folder=os.path.dirname(self.rec_paths[shard]))

    def _check_combined_offsets(self) -> None:
        offsets, total = self.offsets, int(self.file_starts[-1])
        if offsets.size == 0:
            raise DataError(f"{self.index_path}: the combined index is empty; rerun recordio_tools build")
        bad = np.flatnonzero(np.diff(offsets) <= 0)
        if bad.size:
            raise DataError(f"{self.index_path}: key {bad[0] + 1}: offset {offsets[bad[0] + 1]} does not follow "
                            f"{offsets[bad[0]]}; the combined index must be in shard order; rerun recordio_tools build")
        if offsets[0] < 0 or offsets[-1] >= total:
            raise DataError(f"{self.index_path}: offsets run past the end of the shards ({total} bytes); "
                            "the index does not match the shards; rerun recordio_tools build")

    def file_of(self, keys: np.ndarray) -> np.ndarray:
        """Shard (position in `rec_paths`) of each key."""
        return np.searchsorted(self.file_first_key, keys, side="right") - 1

    def locate(self, key: int) -> tuple[int, int, int]:
        """(shard, byte offset inside the shard, bytes up to the next record or the shard's end)."""
        shard = int(self.file_of(np.int64(key)))
        start = int(self.offsets[key])
        last_in_shard = key + 1 >= int(self.file_first_key[shard + 1])
        end = int(self.file_starts[shard + 1]) if last_in_shard else int(self.offsets[key + 1])
        return shard, start - int(self.file_starts[shard]), end - start

    def key_at(self, rec_path: str, local_offset: int) -> int | None:
        """The combined key of the record at `local_offset` of `rec_path`, or None."""
        try:
            shard = self.rec_paths.index(rec_path)
        except ValueError:
            return None
        target = int(self.file_starts[shard]) + local_offset
        key = int(np.searchsorted(self.offsets, target))
        return key if key < len(self.offsets) and self.offsets[key] == target else None

    def describe(self, key: int) -> str:
        """'<shard .rec> key K (byte B)', K being the key in the shard's own .idx."""
        shard, local, _ = self.locate(key)
        shard_key = self._shard_key(shard, local)
        named = f"key {shard_key}" if shard_key is not None else "record"
        return f"{self.rec_paths[shard]} {named} (byte {local})"

    def shard_key_of(self, key: int) -> tuple[int, int | None]:
        """(shard position in `rec_paths`, the record's key in that shard's own .idx or None)."""
        shard, local, _ = self.locate(key)
        return shard, self._shard_key(shard, local)

    def _shard_key(self, shard: int, local: int) -> int | None:
        if shard not in self._shard_keys:
            try:
                self._shard_keys[shard] = {offset: key for key, offset in read_index(self.idx_paths[shard])}
            except RecordIOError:
                self._shard_keys[shard] = {}
        return self._shard_keys[shard].get(local)

    # -- reading ------------------------------------------------------------------------------

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: never share the parent's descriptors
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.rec_paths[shard], os.O_RDONLY)
        return self._fds[shard]

    def read(self, key: int) -> tuple[np.ndarray, int]:
        """(JPEG bytes as uint8, exact source class id) of record `key`."""
        shard, local, length = self.locate(key)
        chunk = os.pread(self._fd(shard), length, local)
        if len(chunk) < length:
            size = os.fstat(self._fd(shard)).st_size
            raise ShardTruncated(f"{self.describe(key)}: {self.rec_paths[shard]} now ends at byte {size}, inside this "
                            f"record (bytes {local}-{local + length}); " + self.truncated_hint(shard))
        try:
            payload = self._payload(chunk, shard, local)
            data_start, class_id = parse_image_header(payload)
        except (RecordIOError, ValueError, struct.error) as e:
            raise DataError(f"{self.describe(key)}: {e}; {self.verify_hint()}") from None
        if not self.file_class_lo[shard] <= class_id < self.file_class_hi[shard]:
            raise DataError(self._range_message(key, shard, class_id))
        return np.frombuffer(payload, dtype=np.uint8, offset=data_start), class_id

    def read_checked(self, key: int) -> tuple[np.ndarray, int]:
        """`read`, plus the JPEG structure check; DataError naming the record when either fails."""
        from recordio_tools.images import jpeg_structure_problem  # deferred: it imports PIL; fusion needs none

        jpeg, class_id = self.read(key)
        problem = jpeg_structure_problem(jpeg)
        if problem is not None:
            raise DataError(f"{self.describe(key)}: {problem}; {self.verify_hint()}")
        return jpeg, class_id

    def read_batch(self, keys: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """JPEG bytes and int64 source class ids of `keys`, in order, each record checked first
        (`read_checked`); a bad one stops or is replaced, by `on_bad_record`."""
        jpegs, labels, bad = [], np.empty(len(keys), dtype=np.int64), []
        for i, key in enumerate(keys):
            try:
                jpeg, labels[i] = self.read_checked(int(key))
            except DataError as error:
                if self.on_bad_record == "stop" or isinstance(error, ShardTruncated):
                    raise
                self.warn_skipped(int(key), error)
                jpeg, labels[i] = None, -1
                bad.append(i)
            jpegs.append(jpeg)
        if bad:
            self._replace(jpegs, labels, bad, keys)
        return jpegs, labels

    def warn_skipped(self, key: int, error: DataError) -> None:
        if key not in self.skipped:
            self.skipped.add(key)
            logging.getLogger("fftrain.data").warning(f"skipping a bad record (data.bad_records=skip): {error}")

    def replacement(self, bad: list[int], size: int) -> list[int]:
        """For each bad position of a batch, the good position whose record stands in (the next good one)."""
        bad_set = set(bad)
        good = [i for i in range(size) if i not in bad_set]
        if not good:
            raise DataError(f"every record of a batch of {size} is bad; {self.verify_hint()}")
        return [next((g for g in good if g > i), good[0]) for i in bad]

    def _replace(self, jpegs: list, labels: np.ndarray, bad: list[int], keys) -> None:
        for i, j in zip(bad, self.replacement(bad, len(keys))):
            jpegs[i], labels[i] = jpegs[j], labels[j]

    def _payload(self, chunk: bytes, shard: int, local: int) -> bytes:
        if len(chunk) < PART_HEADER_SIZE:
            raise RecordIOError(self.rec_paths[shard], f"byte {local}", "truncated record header")
        magic, cflag, length = decode_part_header(chunk)
        if magic != MAGIC:
            raise RecordIOError(self.rec_paths[shard], f"byte {local}",
                                f"bad magic 0x{magic:08x} (the index does not point at a record)")
        if cflag == 0 and PART_HEADER_SIZE + length <= len(chunk):
            return chunk[PART_HEADER_SIZE:PART_HEADER_SIZE + length]
        with open(self.rec_paths[shard], "rb") as f:  # a record split at magic words: rare, slow path
            return read_record_at(f, local, self.rec_paths[shard], f"byte {local}")[0]

    def _range_message(self, key: int, shard: int, class_id: int) -> str:
        name = self.manifest.datasets[int(self.file_dataset[shard])].name
        return (f"{self.describe(key)}: label {class_id} outside dataset {name!r}'s source classes "
                f"[{self.file_class_lo[shard]}, {self.file_class_hi[shard]}) in the manifest; {self.verify_hint()}")

    def verify_hint(self) -> str:
        return VERIFY_HINT.format(manifest=os.path.join(self.manifest.root, "manifest.json"))

    def check_labels(self, source: np.ndarray, name_of) -> None:
        """Raise DataError if a label lies outside [0, num_classes); `name_of(i)` names sample i."""
        bad = np.flatnonzero((source < 0) | (source >= self.num_classes))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{name_of(i)}: label {int(source[i])} outside the manifest's source classes "
                            f"[0, {self.num_classes}); {self.verify_hint()}")

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    # -- start-up checks ----------------------------------------------------------------------

    def validate(self, samples_per_shard: int = 4, seed: int = 0) -> None:
        """The start-up checks listed in the module doc; raises DataError naming the file."""
        rng = np.random.default_rng(seed)
        for shard in range(len(self.rec_paths)):
            keys = np.arange(self.file_first_key[shard], self.file_first_key[shard + 1])
            self._check_shard_count(shard, len(keys))
            if not len(keys):
                continue
            self._check_shard_index(shard, keys)
            sample = rng.choice(keys, min(samples_per_shard, len(keys)), replace=False)
            picks = {int(keys[0]), int(keys[-1]), *(int(k) for k in sample)}
            for key in sorted(picks):
                self.read(key)

    def _check_shard_count(self, shard: int, count: int) -> None:
        expected = [s.num_images for d in self.manifest.datasets for s in d.shards][shard]
        if count != expected:
            raise DataError(f"{self.index_path}: {count} records in {self.rec_paths[shard]}, the manifest says "
                            f"{expected}; the combined index does not match the shards; rerun recordio_tools build")

    def _check_shard_index(self, shard: int, keys: np.ndarray) -> None:
        own = np.sort(parse_index_offsets(self.idx_paths[shard]))
        size = int(self.file_starts[shard + 1] - self.file_starts[shard])
        if own.size and own[-1] >= size:
            raise ShardTruncated(f"{self.rec_paths[shard]}: {size} bytes, but its index {self.idx_paths[shard]} has "
                                 f"a record at byte {own[-1]}; " + self.truncated_hint(shard))
        local = self.offsets[keys] - self.file_starts[shard]
        pos = np.minimum(np.searchsorted(own, local), max(own.size - 1, 0))
        missing = np.flatnonzero(own[pos] != local) if own.size else np.arange(local.size)
        if missing.size:
            raise DataError(f"{self.idx_paths[shard]}: no record at byte {local[missing[0]]} of "
                            f"{self.rec_paths[shard]}, where the combined index {self.index_path} has one; "
                            "the .idx does not match its .rec or the build is stale; rerun recordio_tools build")


def decode_error_key(records: RecordSet, keys) -> int | None:
    """The first of `keys` whose JPEG does not decode with PIL, or None (used after a DALI error)."""
    from PIL import Image

    for key in keys:
        try:
            jpeg, _ = records.read(int(key))
            with Image.open(io.BytesIO(jpeg.tobytes())) as image:
                image.convert("RGB").load()
        except DataError:
            return int(key)
        except Exception:  # PIL raises several types for broken data; any of them marks the record
            return int(key)
    return None
