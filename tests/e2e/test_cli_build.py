"""`recordio_tools build`: dataset folders -> manifest.json + train.idx that DALI reads correctly."""

import json
import os
from collections import Counter

import numpy as np

from cli_helpers import folder_snapshot, leftover_temporaries, make_dataset, read_dataset, run_cli, sha1
from recordio_tools.manifest import load_manifest, read_dataset_info
from recordio_tools.recordio import RecordWriter, class_ids_from_labels, image_header, pack


def _six_datasets(root):
    """Six small datasets; two already hold the offsets build will give them, the others not."""
    specs = [("asian", [2, 1, 3], 0), ("casia", [1, 2], 3), ("celeba", [2, 2, 1, 1], 0),
             ("glint", [3], 0), ("ms1m", [1, 1, 2], 0), ("vgg2", [2, 2], 0)]
    folders = []
    for seed, (name, per_class, offset) in enumerate(specs):
        make_dataset(root / name, name, per_class, class_offset=offset, num_shards=2, seed=seed)
        folders.append(root / name)
    return folders


def test_six_datasets_in_one_command(tmp_path, capsys):
    folders = _six_datasets(tmp_path / "data")
    originals = {f.name: read_dataset(f) for f in folders}
    code, out, err = run_cli(capsys, "build", "--out", tmp_path / "train", *folders)
    assert code == 0, err
    manifest = load_manifest(str(tmp_path / "train"))
    assert manifest.dataset_names == ["asian", "casia", "celeba", "glint", "ms1m", "vgg2"]
    assert manifest.class_offsets().tolist() == [0, 3, 5, 9, 10, 13]
    assert (manifest.num_classes, manifest.num_images) == (15, 26)
    body = json.loads((tmp_path / "train" / "manifest.json").read_text())
    assert body["datasets"][1]["shards"][0]["rec"] == "../data/casia/shard-00000.rec"  # offset already right
    assert body["datasets"][2]["shards"][0]["rec"] == "celeba/shard-00000.rec"  # relabelled copy
    assert sorted(n for n in os.listdir(tmp_path / "train") if not n.startswith(".")) == [
        "celeba", "glint", "manifest.json", "ms1m", "train.idx", "vgg2"]
    for info in manifest.datasets:
        in_place = info.name in ("asian", "casia")
        folder = (tmp_path / "data" if in_place else tmp_path / "train") / info.name
        stored_offset = read_dataset_info(str(tmp_path / "data" / info.name)).class_offset
        relabelled = [(label - info.class_offset + stored_offset, image) for label, image in read_dataset(folder)]
        assert relabelled == originals[info.name]
        assert read_dataset_info(str(folder)).class_offset == info.class_offset
    assert run_cli(capsys, "verify", tmp_path / "train")[0] == 0


def test_glob_patterns_are_expanded(tmp_path, capsys):
    for i, name in enumerate(["b", "a"]):
        make_dataset(tmp_path / "data" / name, name, [1, 1], seed=i)
    code, _, err = run_cli(capsys, "build", "--out", tmp_path / "train", str(tmp_path / "data" / "*"))
    assert code == 0, err
    assert load_manifest(str(tmp_path / "train")).dataset_names == ["a", "b"]


def test_build_beside_the_datasets_updates_in_place(tmp_path, capsys):
    for i, name in enumerate(["a", "b"]):
        make_dataset(tmp_path / "data" / name, name, [1, 2], seed=i)
    data = tmp_path / "data"
    code, _, err = run_cli(capsys, "build", "--out", data, data / "a", data / "b")
    assert code == 0, err
    manifest = load_manifest(str(tmp_path / "data"))
    assert manifest.class_offsets().tolist() == [0, 2]
    assert read_dataset_info(str(tmp_path / "data" / "b")).class_offset == 2
    assert sorted(label for label, _ in read_dataset(tmp_path / "data" / "b")) == [2, 3, 3]
    assert run_cli(capsys, "verify", tmp_path / "data")[0] == 0


def _dali_samples(rec_paths, index_path, count, batch_size=4):
    """(image SHA-1, exact class id) of the first `count` samples DALI's mxnet reader yields, on CPU."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None)
    def pipeline():
        images, labels = fn.readers.mxnet(path=rec_paths, index_path=[index_path], random_shuffle=False,
                                          name="reader")
        return images, labels

    pipe = pipeline()
    pipe.build()
    assert pipe.epoch_size("reader") == count
    samples = []
    while len(samples) < count:
        images, labels = pipe.run()
        ids = class_ids_from_labels(np.stack([np.asarray(labels[i]) for i in range(len(labels))]))
        samples.extend((sha1(np.asarray(images[i]).tobytes()), int(ids[i])) for i in range(len(images)))
    return samples[:count]


def test_dali_reads_every_image_once_with_exact_labels(tmp_path, capsys):
    huge = (1 << 24) + 3  # classes past 2^24: float32 labels alone would lose them
    make_dataset(tmp_path / "a", "a", [2, 1], num_shards=2, seed=1)
    make_dataset(tmp_path / "wide", "wide", [1, 0, 2], num_classes=huge, class_offset=2, seed=2)  # in place
    make_dataset(tmp_path / "c", "c", [1, 3], num_shards=3, seed=3)  # copied, to classes 2^24 + 5 and up
    folders = [tmp_path / "a", tmp_path / "wide", tmp_path / "c"]
    assert run_cli(capsys, "build", "--out", tmp_path / "train", *folders)[0] == 0
    manifest = load_manifest(str(tmp_path / "train"))
    assert manifest.class_offsets().tolist() == [0, 2, 2 + huge]
    expected = Counter()
    for info in manifest.datasets:
        source = read_dataset_info(str(tmp_path / info.name))
        folder = tmp_path / info.name
        expected.update((sha1(image), label - source.class_offset + info.class_offset)
                        for label, image in read_dataset(folder))
    got = _dali_samples(manifest.rec_paths(), manifest.index_path(), manifest.num_images)
    assert Counter(got) == expected and len(got) == 10
    assert max(label for _, label in got) == 2 + huge + 1


# ---------------------------------------------------------------------------------------------
# Bad input


def test_duplicate_dataset_names(tmp_path, capsys):
    make_dataset(tmp_path / "x", "same", [1])
    make_dataset(tmp_path / "y", "same", [1])
    code, _, err = run_cli(capsys, "build", "--out", tmp_path / "train", tmp_path / "x", tmp_path / "y")
    assert code == 2 and "dataset name 'same' used by both" in err and err.count("\n") == 1
    assert not (tmp_path / "train").exists()


def test_missing_shard_names_the_file(tmp_path, capsys):
    make_dataset(tmp_path / "a", "a", [1, 1], num_shards=2)
    (tmp_path / "a" / "shard-00001.rec").unlink()
    code, _, err = run_cli(capsys, "build", "--out", tmp_path / "train", tmp_path / "a")
    assert code == 2 and f"shard file {tmp_path / 'a' / 'shard-00001.rec'} is missing" in err
    assert err.count("\n") == 1 and not (tmp_path / "train").exists()


def test_not_a_dataset_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "build", "--out", tmp_path / "train", tmp_path / "empty")
    assert code == 2 and f"{tmp_path / 'empty' / 'dataset.json'}: dataset description" in err


def test_bad_label_fails_the_copy_and_keeps_the_previous_training_set(tmp_path, capsys):
    make_dataset(tmp_path / "a", "a", [1])
    make_dataset(tmp_path / "b", "b", [1, 1])
    assert run_cli(capsys, "build", "--out", tmp_path / "train", tmp_path / "a", tmp_path / "b")[0] == 0
    before = folder_snapshot(tmp_path / "train")
    with RecordWriter(tmp_path / "b" / "shard-00000.rec") as writer:  # label 7 in a 2-class dataset
        writer.write(0, pack(image_header(0), b"\xff\xd8\xff"))
        writer.write(1, pack(image_header(7), b"\xff\xd8\xff"))
    code, _, err = run_cli(capsys, "build", "--out", tmp_path / "train", tmp_path / "a", tmp_path / "b")
    assert code == 2
    assert f"{tmp_path / 'b' / 'shard-00000.rec'}: key 1: label 7 outside dataset 'b''s classes [0, 2)" in err
    assert folder_snapshot(tmp_path / "train") == before and not leftover_temporaries(tmp_path)
