"""Apply a fusion label map (source class -> fused class) to a training set: in place, or as a copy.

    recordio_tools relabel data/train --label-map runs/x/fuse-t1_0.700/label_map.json --in-place
    recordio_tools relabel data/train --label-map label_map.json --out data/train_fused
    recordio_tools relabel data/synth --from-overlaps data/synth/overlaps.json --in-place   # ideal map (demo)

The label map is what `fftrain fuse` writes (label_map.json)::

    {"format": "fftrain-label-map", "datasets": [{"name": ..., "num_classes": ...}, ...],
     "num_classes_fused": K, "label_map": [fused class of source class 0, 1, ..., C_src - 1], ...}

It is checked against the training set's manifest.json before anything is read or written: the
format, the dataset names and class counts in manifest order, one entry per source class
(len == the manifest's num_classes) and fused ids contiguous 0..K-1 (K == num_classes_fused when
given). `--from-overlaps overlaps.json` (written by `synth`/`split-overlap`) computes the ideal map
from the ground truth instead. A map's identity is the SHA-256 of its entries as little-endian
int64s, so the same map read from either source has the same hash.

Before anything changes, the label of every record still to be rewritten is read from its header
(header bytes only) and checked: an exact class id (flag 2, or flag 0 with one float) inside its
dataset's range [class_offset, class_offset + num_classes), and, for a flag-0 record, a fused id
below 2^24 (a float32 holds integers exactly only up to there; a flag-0 label cannot become a
two-float label in place since the record would grow: use --out). So a bad record stops the run
before the first shard is touched, not halfway.

--out DIR: a new training set. DIR/<name>/ is one dataset (name "fused" by default) of
num_classes_fused classes whose shards hold the fused ids as exact two-float labels (flag 2),
the image bytes copied unchanged, dealt round robin to --shards shards (default: as many as the
input has); DIR/manifest.json + DIR/train.idx make it a training set any fftrain tool reads, and
DIR/label_map.json is the map applied (its manifest's "relabel" entry names the source set and
the map's hash). DIR is built under a temporary name and replaces DIR as a whole at the end.
The per-record dataset identity is not kept: the copy is one dataset.

--in-place: only the label bytes of each indexed image record change (the IRHeader label for
flag 0, the two floats after it for flag 2), so every record keeps its size and offset and every
shard .idx and the combined train.idx stay valid, byte for byte. Bytes outside indexed records
(none in shards our tools write) are copied unchanged. Each shard is rewritten to a temporary
file beside it (`.shard-NNNNN.rec.relabel-tmp`) and renamed over the original. When every shard
is done, relabel_label_map.json (the map applied) is written beside manifest.json, each dataset
folder's dataset.json gains "labels": "fused", "num_classes_fused" and "label_map_sha256", and
manifest.json gains "labels": "fused", "num_classes_fused", "label_map_sha256" and "label_map_file"
(datasets and shard list kept as they were: their class counts and offsets still describe the
source classes the labels came from). Only shards inside the training-set folder are rewritten:
a dataset `build` referenced from elsewhere (other training sets may use it) is refused, naming
the other manifests found beside it, unless `--copy-referenced` copies it into the training-set
folder first. `recordio_tools verify` and `inspect` check a set fused in place against its fused
classes [0, num_classes_fused), and fftrain trains on it as one dataset "fused" of those classes
(`manifest.training_view`): the source datasets of a merged class are no longer known.

The journal, TRAINSET/relabel.journal.json, always replaced atomically::

    {"format": "fftrain-relabel-journal", "version": 1, "label_map_sha256": ..., "num_classes_fused": K,
     "state": "running" | "complete",
     "shards": {"<rec path as in manifest.json>": {"state": "pending" | "done",
                                                   "old_sha256": ..., "new_sha256": ...}}}

Crash safety (an interruption at any instant, SIGKILL or power loss included):
1. A shard file changes only through os.replace of a complete, fsynced temporary file (and the
   folder is fsynced after it), and rename is atomic: at every instant a shard is wholly old or
   wholly new; a partly written temporary file is never a shard.
2. Per shard the order is: write and fsync the temporary file while hashing the old and the new
   bytes -> journal entry "pending" with both SHA-256s -> rename -> fsync the folder -> journal
   entry "done". So on a rerun a shard the journal does not name was never renamed (old); a
   "done" shard is new; a "pending" shard may be either (killed around the rename), and hashing
   the file decides it: equal to new_sha256 -> done, equal to old_sha256 -> rewrite it, neither
   -> someone else changed the file: stop and say so. (When the map leaves every label of a shard
   as it was, old == new and either answer is right.)
3. Stale temporary files of a killed run have fixed names; the rerun removes them first.
4. manifest.json (and the dataset.json files, the map copy) are written only after every shard is
   done, the journal's "complete" last. A rerun in between finds a running journal with every
   shard done and writes them again (same bytes). A rerun after completion with the same map
   changes nothing; one with a different map is refused (the labels are no longer source
   classes); one with a different map while a journal is unfinished is refused too: finish with
   the map it names (done shards cannot be reverted; a many-to-one map has no inverse). Only a
   journal naming no shard yet (stopped before the first rename could happen) gives way to a new map.
5. One relabel at a time per training set: an exclusive flock on TRAINSET/.relabel.lock (freed by
   the kernel when a process dies, so a killed run never blocks the next).

Testing hook (tests only, never set it otherwise): FFTRAIN_RELABEL_TEST_KILL="POINT:N" makes the
process SIGKILL itself at the Nth occurrence of POINT: "record" (after a record was written to a
temporary shard file: mid-shard), "pending" (journal says pending, rename not yet done), "renamed"
(rename done, journal not yet "done"), "done" (after a shard's journal "done"), "manifest"
(manifest.json written, journal not yet "complete").

The package, one module per part: `label_maps` (reading and checking maps, `RelabelError`), `helpers`
(fixed-name temporaries, atomic writes, hashes, the lock, the kill hook), `shards` (the in-place
rewrite of one shard), `in_place` (the journaled in-place relabel) and `fused_copy` (`--out`).
"""

from .helpers import (JOURNAL_FILE, JOURNAL_FORMAT, KILL_ENV, KILL_POINTS, LABEL_MAP_COPY, LOCK_FILE, OUT_LABEL_MAP,
                      TMP_SUFFIX, sha256_file)
from .fused_copy import relabel_copy
from .in_place import InPlaceResult, copy_referenced, journal_state, other_users, relabel_in_place
from .label_maps import LABEL_MAP_FORMAT, LabelMap, RelabelError, label_map_from_overlaps, label_map_sha256, \
    read_label_map
from .shards import FLOAT_EXACT_LIMIT

__all__ = ["FLOAT_EXACT_LIMIT", "InPlaceResult", "JOURNAL_FILE", "JOURNAL_FORMAT", "KILL_ENV", "KILL_POINTS",
           "LABEL_MAP_COPY", "LABEL_MAP_FORMAT", "LOCK_FILE", "LabelMap", "OUT_LABEL_MAP", "RelabelError",
           "TMP_SUFFIX", "copy_referenced", "journal_state", "label_map_from_overlaps", "label_map_sha256",
           "other_users", "read_label_map", "relabel_copy", "relabel_in_place", "sha256_file"]
