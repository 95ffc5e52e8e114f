"""Unlabeled inputs: `recordio_tools convert --unlabeled` and `synth --unlabeled` (with its truth)."""

import json

import numpy as np
import pytest
from PIL import Image

from cli_helpers import read_dataset, run_cli
from recordio_tools.manifest import read_dataset_info
from recordio_tools.synthetic import generate_unlabeled, make_plan, make_unlabeled_plan, tiny_config


def test_convert_unlabeled_takes_every_image_below_the_root_as_one_class(tmp_path, capsys):
    root = tmp_path / "faces"
    (root / "sub").mkdir(parents=True)
    for i, path in enumerate([root / "a.png", root / "b.jpg", root / "sub" / "c.png"]):
        Image.new("RGB", (80, 80), (40 * i, 100, 150)).save(path)
    code, _, err = run_cli(capsys, "convert", root, "--out", tmp_path / "ds", "--unlabeled", "--workers", 1)
    assert code == 0, err
    info = read_dataset_info(str(tmp_path / "ds"))
    assert (info.num_classes, info.num_images) == (1, 3)
    assert [label for label, _ in read_dataset(tmp_path / "ds")] == [0, 0, 0]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "convert", empty, "--out", tmp_path / "ds2", "--unlabeled")
    assert code == 2 and "no images" in err and not (tmp_path / "ds2").exists()


def test_unlabeled_plan_overlaps_the_labeled_persons_as_asked():
    config = tiny_config(seed=3)
    plan = make_plan(config)
    labeled = {p for d in plan.datasets for p in d.persons}
    uplan = make_unlabeled_plan(config, 40, 0.25, 6)
    shared = [p for p in uplan.persons if p in labeled]
    assert len(shared) == 10 and len(set(uplan.persons)) == 40
    assert not set(uplan.persons) & set(plan.verification_persons)
    for person, source in zip(uplan.persons, uplan.source_class):
        if source >= 0:  # the source class really holds that person
            d = max(i for i, ds in enumerate(plan.datasets) if ds.class_offset <= source)
            assert plan.datasets[d].persons[source - plan.datasets[d].class_offset] == person
        else:
            assert person not in labeled
    with pytest.raises(ValueError, match="needs 200 labeled persons"):
        make_unlabeled_plan(config, 200, 1.0, 6)


def test_unlabeled_set_is_written_with_its_truth_in_record_order(tmp_path):
    config = tiny_config(seed=0, workers=1)
    info = generate_unlabeled(config, str(tmp_path / "u"), num_ids=4, overlap=0.5, images_per_id=3, progress=False)
    truth = json.loads((tmp_path / "u" / "truth.json").read_text())
    records = list(read_dataset(tmp_path / "u"))
    assert len(records) == len(truth["identity"]) == info["images"]
    assert {label for label, _ in records} == {0}
    assert sum(truth["overlap"]) == info["overlapping_images"] and info["overlapping_identities"] == 2
    assert np.all((np.asarray(truth["source_class"]) >= 0) == np.asarray(truth["overlap"]))
    again = tmp_path / "again"
    generate_unlabeled(config, str(again), num_ids=4, overlap=0.5, images_per_id=3, progress=False)
    assert (again / "shard-00000.rec").read_bytes() == (tmp_path / "u" / "shard-00000.rec").read_bytes()
