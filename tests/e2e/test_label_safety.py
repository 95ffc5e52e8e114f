"""Labels: foreign multi-label records read as insightface does, our exact ids unambiguous, ranges checked by build."""

import json

import numpy as np
import pytest

from cli_helpers import jpeg_bytes, make_dataset, read_dataset, run_cli
from recordio_tools.manifest import DATASET_FILE
from recordio_tools.recordio import (EXACT_ID_MARK, IRHeader, RecordWriter, class_id_of, image_header, pack,
                                     unpack)


def test_foreign_two_float_label_is_label0_even_when_the_second_looks_like_a_residual():
    # [identity, variant]: under the old reading identity 5 variant 1 became class 6, identity 6's class
    for identity, variant in [(5.0, 1.0), (5.0, 2.0), (0.0, 3.0), (7.0, -1.0)]:
        header, _ = unpack(pack(IRHeader(2, np.array([identity, variant], "<f4"), 1, 0), b"x"))
        assert class_id_of(header) == int(identity)
    header, _ = unpack(pack(IRHeader(3, np.array([4.0, 1.0, 0.5], "<f4"), 1, 0), b"x"))
    assert class_id_of(header) == 4


def test_our_exact_ids_carry_the_mark_and_survive_any_size():
    for class_id in (0, 6, 2**24 + 1, 2**24 + 3, 2**40 + 12345):
        header, _ = unpack(pack(image_header(class_id, 9), b"x"))
        assert header.id2 == EXACT_ID_MARK and class_id_of(header) == class_id


def test_unmarked_two_float_label_above_float32_exactness_is_refused():
    header, _ = unpack(pack(IRHeader(2, np.array([2.0**24 + 2, 1.0], "<f4"), 1, 0), b"x"))
    with pytest.raises(ValueError, match="above 2\\^24.*exact-id mark"):
        class_id_of(header)


def test_import_of_a_multi_label_file_keeps_the_identities(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rec = tmp_path / "train.rec"
    truth = []
    with RecordWriter(str(rec)) as writer:
        for key in range(12):
            identity, variant = key // 4, key % 4  # 3 identities, 4 variants each
            writer.write(key, pack(IRHeader(2, np.array([identity, variant], "<f4"), key, 0), jpeg_bytes(rng)))
            truth.append(identity)
    code, _, err = run_cli(capsys, "import", rec, "--out", tmp_path / "ds")
    assert code == 0, err
    labels = sorted(label for label, _ in read_dataset(tmp_path / "ds"))
    assert labels == sorted(truth)  # 3 classes of 4, not classes invented from identity + variant


def test_build_refuses_an_under_counted_dataset(tmp_path, capsys):
    make_dataset(tmp_path / "a", "a", [2, 2, 2])
    make_dataset(tmp_path / "b", "b", [1, 1])
    info_file = tmp_path / "a" / DATASET_FILE
    body = json.loads(info_file.read_text())
    body["num_classes"] = 2  # the records use 3
    info_file.write_text(json.dumps(body))
    code, _, err = run_cli(capsys, "build", "--out", tmp_path / "train", tmp_path / "a", tmp_path / "b")
    assert code == 2
    assert "shard-00000.rec: key" in err and "label 2 outside dataset 'a''s classes [0, 2)" in err, err
    assert not (tmp_path / "train").exists()
