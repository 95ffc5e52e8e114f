"""`recordio_tools convert`: image tree -> dataset folder, alignment, bad images, Ctrl-C."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cli_helpers import folder_snapshot, leftover_temporaries, make_tree, read_dataset, read_shard, run_cli
from recordio_tools.align import ARCFACE_TEMPLATE, read_landmarks, similarity_transform
from recordio_tools.manifest import read_dataset_info


def _solid_tree(root, colours: dict[str, tuple[int, int, int]], per_identity=3, size=(64, 80)):
    """A tree whose identity folders hold solid-colour images, so each label's colour is known."""
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_identity):
            Image.new("RGB", size, colour).save(root / name / f"{i}.png")


def test_convert_labels_folders_in_name_order(tmp_path, capsys):
    colours = {"zed": (250, 10, 10), "amy": (10, 250, 10), "mo": (10, 10, 250)}
    _solid_tree(tmp_path / "tree", colours)
    code, out, err = run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / "ds", "--shards", 2,
                             "--workers", 1, "--class-offset", 10)
    assert code == 0, err
    info = read_dataset_info(str(tmp_path / "ds"))
    assert (info.name, info.num_classes, info.num_images, info.class_offset) == ("ds", 3, 9, 10)
    assert [s.num_images for s in info.shards] == [5, 4]
    classes = json.loads((tmp_path / "ds" / "classes.json").read_text())
    assert classes["names"] == ["amy", "mo", "zed"] and classes["images"] == [3, 3, 3]
    for label, jpeg in read_dataset(tmp_path / "ds"):
        image = Image.open(io.BytesIO(jpeg))
        assert (image.format, image.size, image.mode) == ("JPEG", (112, 112), "RGB")
        mean = np.asarray(image).reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - colours[classes["names"][label - 10]]).max() < 8


def test_output_does_not_depend_on_workers(tmp_path, capsys):
    make_tree(tmp_path / "tree", {f"id{i}": 5 for i in range(8)}, size=(60, 60))
    for workers in (1, 2):
        code, _, err = run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / f"w{workers}", "--shards", 3,
                               "--workers", workers, "--name", "same")
        assert code == 0, err
    assert folder_snapshot(tmp_path / "w1", with_mark=False) == folder_snapshot(tmp_path / "w2", with_mark=False)


def test_112_rgb_jpeg_kept_byte_for_byte(tmp_path, capsys):
    paths = make_tree(tmp_path / "tree", {"a": 2}, size=(112, 112))
    assert run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / "ds", "--workers", 1)[0] == 0
    stored = [jpeg for _, _, jpeg in read_shard(tmp_path / "ds" / "shard-00000.rec")]
    assert stored == [(tmp_path / "tree" / p).read_bytes() for p in paths["a"]]


# ---------------------------------------------------------------------------------------------
# Alignment


def test_similarity_transform_recovers_a_known_similarity():
    angle, scale, shift = np.deg2rad(30), 1.7, np.array([12.0, -4.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = ARCFACE_TEMPLATE @ (scale * rotation).T + shift
    matrix = similarity_transform(ARCFACE_TEMPLATE, points)
    np.testing.assert_allclose(matrix, np.hstack([scale * rotation, shift[:, None]]), atol=1e-9)


def _face_with_dots(points: np.ndarray, shape=(300, 260)) -> Image.Image:
    """Black image with a bright Gaussian dot at each landmark."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    canvas = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.5 ** 2)) for x, y in points)
    return Image.fromarray((255 * np.clip(canvas, 0, 1)).astype(np.uint8)).convert("RGB")


def _dot_centres(gray: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(gray > 60)
    centres = ndimage.center_of_mass(gray, labels, range(1, count + 1))
    return np.array(sorted((x, y) for y, x in centres))


@pytest.mark.parametrize("file_format", ["text", "json"])
def test_landmarks_align_to_the_arcface_template(tmp_path, capsys, file_format):
    angle = np.deg2rad(-20)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = ARCFACE_TEMPLATE @ (1.8 * rotation).T + np.array([40.0, 60.0])
    (tmp_path / "tree" / "p1").mkdir(parents=True)
    _face_with_dots(points).save(tmp_path / "tree" / "p1" / "face.png")
    Image.new("RGB", (150, 100), (90, 90, 90)).save(tmp_path / "tree" / "p1" / "other.png")  # no landmarks
    if file_format == "text":
        landmarks = tmp_path / "lmk.txt"
        landmarks.write_text("# path x1 y1 ... x5 y5\n" + "p1/face.png " + " ".join(f"{v:.4f}" for v in points.ravel())
                             + "\nnot/in/tree.png" + " 1" * 10 + "\n")
    else:
        landmarks = tmp_path / "lmk.json"
        landmarks.write_text(json.dumps({"p1/face.png": points.tolist()}))
    code, out, err = run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / "ds", "--workers", 1,
                             "--landmarks", landmarks, "--quality", 100, "--allow-missing-landmarks")
    assert code == 0, err
    assert "1 of 2 images have landmarks" in out
    (_, face), (_, other) = read_dataset(tmp_path / "ds")
    gray = np.asarray(Image.open(io.BytesIO(face)).convert("L"), dtype=np.float64)
    np.testing.assert_allclose(_dot_centres(gray), np.array(sorted(map(tuple, ARCFACE_TEMPLATE))), atol=0.5)
    assert Image.open(io.BytesIO(other)).size == (112, 112)


def test_malformed_landmarks_line_names_file_and_line(tmp_path, capsys):
    make_tree(tmp_path / "tree", {"a": 1})
    (tmp_path / "lmk.txt").write_text("a/000.jpg 1 2 3 4 5 6 7 8 9 10\na/001.jpg 1 2 3\n")
    code, _, err = run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / "ds",
                           "--landmarks", tmp_path / "lmk.txt")
    assert code == 2
    assert f"{tmp_path / 'lmk.txt'}: line 2: expected" in err and err.count("\n") == 1
    assert not (tmp_path / "ds").exists()


def test_read_landmarks_accepts_commas_and_spaces_in_paths(tmp_path):
    (tmp_path / "lmk.txt").write_text("id 1/a b.jpg,1,2,3,4,5,6,7,8,9,10\n")
    assert read_landmarks(str(tmp_path / "lmk.txt"))["id 1/a b.jpg"].tolist() == [[1, 2], [3, 4], [5, 6], [7, 8],
                                                                                   [9, 10]]


# ---------------------------------------------------------------------------------------------
# Bad input


def test_unreadable_image_is_one_line_naming_the_file_and_leaves_no_output(tmp_path, capsys):
    make_tree(tmp_path / "tree", {"a": 2, "b": 2})
    (tmp_path / "tree" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    code, _, err = run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / "ds", "--workers", 2)
    assert code == 2
    assert err.startswith("recordio_tools convert: error: ") and err.count("\n") == 1
    assert f"{tmp_path / 'tree' / 'b' / 'broken.jpg'}: unreadable image" in err and "--skip-bad" in err
    assert not (tmp_path / "ds").exists() and not leftover_temporaries(tmp_path)


def test_failed_convert_keeps_the_previous_output(tmp_path, capsys):
    make_tree(tmp_path / "tree", {"a": 2})
    assert run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / "ds", "--workers", 1)[0] == 0
    before = folder_snapshot(tmp_path / "ds")
    (tmp_path / "tree" / "a" / "zz.jpg").write_bytes(b"")
    assert run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / "ds", "--workers", 1)[0] == 2
    assert folder_snapshot(tmp_path / "ds") == before and not leftover_temporaries(tmp_path)


def test_skip_bad_leaves_out_and_lists_unreadable_images(tmp_path, capsys):
    make_tree(tmp_path / "tree", {"a": 2, "b": 2})
    (tmp_path / "tree" / "a" / "bad.jpg").write_bytes(b"nope")
    code, out, err = run_cli(capsys, "convert", tmp_path / "tree", "--out", tmp_path / "ds", "--workers", 1,
                             "--skip-bad")
    assert code == 0, err
    assert f"skipped {tmp_path / 'tree' / 'a' / 'bad.jpg'}" in err
    assert (tmp_path / "ds" / "skipped.txt").read_text().startswith("a/bad.jpg\t")
    info = read_dataset_info(str(tmp_path / "ds"))
    assert (info.num_classes, info.num_images) == (2, 4)


def test_no_identity_folders_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "convert", tmp_path / "empty", "--out", tmp_path / "ds")
    assert code == 2 and "no identity folders with images" in err


def test_ctrl_c_leaves_the_previous_output_intact(tmp_path, capsys):
    tree = tmp_path / "tree"
    source = tmp_path / "face.png"  # PNG: no reduced-scale decoding, ~ms per image however fast the machine
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (500, 500, 3), dtype=np.uint8)).save(source)
    for identity in range(40):  # 2000 hard links to one image: a slow convert, no disk
        (tree / f"id{identity:02d}").mkdir(parents=True)
        for i in range(50):
            os.link(source, tree / f"id{identity:02d}" / f"{i}.png")
    previous = tmp_path / "ds"
    make_tree(tmp_path / "small", {"a": 1})
    assert run_cli(capsys, "convert", tmp_path / "small", "--out", previous, "--workers", 1)[0] == 0
    before = folder_snapshot(previous)
    command = [sys.executable, "-m", "recordio_tools", "convert", str(tree), "--out", str(previous), "--workers", "2"]
    # A test run started in the background of a script inherits SIGINT ignored (POSIX shells do that to `&` jobs),
    # and Python keeps an ignored SIGINT ignored: give the command the default a user's terminal gives it.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while not leftover_temporaries(tmp_path) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    assert process.poll() is None, "convert finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert folder_snapshot(previous) == before
    assert not leftover_temporaries(tmp_path)
