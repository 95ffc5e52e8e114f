"""convert: landmarks errors named by file and line, identities left empty by --skip-bad dropped, damaged JPEGs
refused (convert) and reported per record (verify)."""

import io
import json

import numpy as np
from PIL import Image

from cli_helpers import make_tree, read_dataset, run_cli
from recordio_tools.files import atomic_directory
from recordio_tools.shards import DatasetWriter

POINTS = "10 12 28 12 19 22 12 32 26 32"  # inside a 40 x 48 image


def _corrupt_jpeg(seed=0):
    """A JPEG PIL decodes without complaint but libjpeg warns about ("Corrupt JPEG data: ...")."""
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, "JPEG", quality=90)
    data = bytearray(out.getvalue())
    start = data.index(b"\xff\xda") + 40
    for i in range(start, start + 360, 7):
        data[i] ^= 0x55
    data = bytes(data).replace(b"\xff\xd9", b"") + b"\xff\xd9"
    Image.open(io.BytesIO(data)).load()  # PIL alone sees nothing wrong
    return data


def test_landmarks_line_with_eleven_numbers_names_file_and_line(tmp_path, capsys):
    make_tree(tmp_path / "tree", {"a": 1})
    (tmp_path / "lmk.txt").write_text(f"a/000.jpg 5 {POINTS}\n")  # the old parser took 'a/000.jpg 5' as the path
    code, _, err = run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / "ds", "--landmarks",
                           tmp_path / "lmk.txt")
    assert code == 2 and f"{tmp_path / 'lmk.txt'}: line 1: expected" in err and "got 11 numbers" in err, err
    assert not (tmp_path / "ds").exists()


def test_landmarks_outside_the_image_name_image_file_and_line(tmp_path, capsys):
    make_tree(tmp_path / "tree", {"a": 2})
    (tmp_path / "lmk.txt").write_text(f"a/000.jpg {POINTS}\n# comment\na/001.jpg 10 12 28 12 19 22 12 320 26 32\n")
    args = ("convert", tmp_path / "tree", "--out", tmp_path / "ds", "--landmarks", tmp_path / "lmk.txt",
            "--workers", 1)
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{tmp_path / 'tree' / 'a' / '001.jpg'}: landmark(s) [[12.0, 320.0]] outside the 40x48 image " \
           f"({tmp_path / 'lmk.txt'}: line 3)" in err
    assert not (tmp_path / "ds").exists()
    code, _, err = run_cli(capsys, *args, "--skip-bad")
    assert code == 0, err
    assert len(read_dataset(tmp_path / "ds")) == 1


def test_images_without_landmarks_are_listed_and_need_a_flag(tmp_path, capsys):
    make_tree(tmp_path / "tree", {"a": 3})
    (tmp_path / "lmk.txt").write_text(f"a/001.jpg {POINTS}\n")
    args = ("convert", tmp_path / "tree", "--out", tmp_path / "ds", "--landmarks", tmp_path / "lmk.txt")
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "no landmarks line for 2 of 3 images: a/000.jpg, a/002.jpg" in err, err
    assert not (tmp_path / "ds").exists()
    code, _, err = run_cli(capsys, *args, "--allow-missing-landmarks")
    assert code == 0, err
    assert (tmp_path / "ds" / "unaligned.txt").read_text() == "a/000.jpg\na/002.jpg\n"


def test_skip_bad_drops_identities_left_without_images_and_keeps_ids_contiguous(tmp_path, capsys):
    make_tree(tmp_path / "tree", {"a": 1, "b": 2, "c": 1})
    for name in ("000.jpg", "001.jpg"):
        (tmp_path / "tree" / "b" / name).write_bytes(b"not a jpeg")
    code, _, err = run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / "ds", "--skip-bad")
    assert code == 0, err
    assert "dropped 1 identity whose images were all left out: 'b'" in err
    assert sorted(label for label, _ in read_dataset(tmp_path / "ds")) == [0, 1]
    info = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    classes = json.loads((tmp_path / "ds" / "classes.json").read_text())
    assert info["num_classes"] == 2 and classes["names"] == ["a", "c"] and classes["images"] == [1, 1]


def test_corrupt_jpeg_is_refused_by_convert_unless_skip_bad(tmp_path, capsys):
    make_tree(tmp_path / "tree", {"a": 2})
    (tmp_path / "tree" / "a" / "001.jpg").write_bytes(_corrupt_jpeg())
    code, _, err = run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / "ds")
    assert code == 2 and "001.jpg: unreadable image: JPEG decoder warning: Corrupt JPEG data" in err, err
    code, _, err = run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / "ds", "--skip-bad")
    assert code == 0 and len(read_dataset(tmp_path / "ds")) == 1


def test_verify_reports_jpeg_decoder_warnings_per_record(tmp_path, capsys):
    rng = np.random.default_rng(1)
    with atomic_directory(str(tmp_path / "ds")) as tmp:
        writer = DatasetWriter(tmp, "ds", 1)
        for key in range(3):
            good = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, "JPEG")
            writer.add(key, _corrupt_jpeg() if key == 1 else good.getvalue())
        writer.finish()
    code, out, err = run_cli(capsys, "verify", tmp_path / "ds")
    assert code == 1, err
    assert f"{tmp_path / 'ds' / 'shard-00000.rec'}: key 1: payload of" in out
    assert "JPEG decoder warning: Corrupt JPEG data" in out
    assert "key 0" not in out and "key 2" not in out
