"""IJB-B/C template verification: the pooling against an implementation written from the protocol,
the features (alignment, flip sum), the command (JSON keys, saved arrays, ROC) and refusals of bad layouts."""

import argparse
import json
import os
from collections import defaultdict

import numpy as np
import pytest
import torch

from fftrain.evaluation.ijb import (IjbError, evaluate_features, image_weights, pair_scores, read_ijb_meta,
                                    template_features)
from fftrain.model.backbones import build_backbone
from checkpoint_helpers import stub_backbone_checkpoint
from ijb_helpers import write_ijb_set
from recordio_tools.align import align_face


def protocol_scores(img_feats, faceness, templates, medias, pairs, *, norm_score=True, detector_score=True):
    """From the protocol's words, one image, media and template at a time: an image's feature keeps
    its norm unless told (else it is divided by it), is multiplied by the detector score unless told;
    the images of one media inside a template are averaged; a template is the sum of its media
    averages, divided by its norm; a pair's score is the dot product of its two templates."""
    by_template = defaultdict(lambda: defaultdict(list))
    for i, (t, m) in enumerate(zip(templates, medias)):
        feat = np.array(img_feats[i], dtype=np.float64)
        if not norm_score:
            feat = feat / np.sqrt(np.sum(feat * feat))
        if detector_score:
            feat = feat * float(faceness[i])
        by_template[t][m].append(feat)
    template_feat = {}
    for t, media in by_template.items():
        total = sum(sum(feats) / len(feats) for feats in media.values())
        template_feat[t] = total / np.sqrt(np.sum(total * total))
    return np.array([float(np.dot(template_feat[a], template_feat[b])) for a, b in pairs])


@pytest.fixture(scope="module")
def ijb(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb") / "IJBC"
    truth = write_ijb_set(str(root))
    return str(root), truth


@pytest.mark.parametrize("norm_score,detector_score", [(True, True), (False, True), (True, False), (False, False)])
def test_pooling_matches_the_protocol_written_out(ijb, norm_score, detector_score):
    root, truth = ijb
    meta = read_ijb_meta(root, "IJBC")
    rng = np.random.default_rng(3)
    img_feats = rng.normal(size=(len(truth["images"]), 8)) * rng.uniform(0.5, 3, size=(len(truth["images"]), 1))
    feats = image_weights(img_feats, meta.faceness, norm_score=norm_score, detector_score=detector_score)
    unique, pooled = template_features(feats, meta.templates, meta.medias)
    got = pair_scores(unique, pooled, meta.pair_templates, block=7)  # blocks that do not divide the pairs
    expected = protocol_scores(img_feats, truth["faceness"], truth["templates"], truth["medias"], truth["pairs"],
                               norm_score=norm_score, detector_score=detector_score)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # media pooling matters: with every image as its own media the scores change
    alone = pair_scores(*template_features(feats, meta.templates, np.arange(len(feats))), meta.pair_templates)
    assert not np.allclose(alone, got)


def test_tar_keys_and_unmeasurable_fars(ijb):
    root, truth = ijb
    meta = read_ijb_meta(root, "IJBC")
    result, scores, _ = evaluate_features(meta, np.random.default_rng(0).normal(size=(len(truth["images"]), 8)))
    assert list(result["tar_at_far"]) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    negatives = truth["labels"].count(0)
    assert 10 <= negatives < 100  # so FAR 0.1 is measurable and 0.01 is not
    assert result["tar_at_far"]["0.01"] is None and 0 <= result["tar_at_far"]["0.1"] <= 1
    assert any("TAR@FAR=0.01 not measurable" in n for n in result["notes"])
    assert scores.shape == (len(truth["pairs"]),)


def _eval(argv):
    from fftrain.commands.eval import add_eval_parser

    parser = argparse.ArgumentParser(prog="fftrain")
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *argv])
    return args.run(args)


def test_eval_command_on_a_generated_set(ijb, tmp_path, monkeypatch, capsys):
    root, truth = ijb
    torch.manual_seed(0)
    model = build_backbone("iresnet_tiny", embedding_size=16).eval()
    stub_backbone_checkpoint(monkeypatch, model)
    save, out = tmp_path / "save", tmp_path / "eval.json"
    assert _eval(["--checkpoint", str(tmp_path), "--ijb", root, "--ijb-target", "IJBC", "--ijb-save", str(save),
                  "--json-out", str(out), "--batch-size", "5"]) == 0
    printed = capsys.readouterr().out
    assert "TAR@FAR=0.0001" in printed and f"wrote {out}" in printed
    body = json.loads(out.read_text())["ijb"]
    assert list(body["tar_at_far"]) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    assert body["num_templates"] == 12 and body["num_pairs"] == len(truth["pairs"])
    # the patterns are recovered by the alignment: same-identity templates score higher than others
    assert body["tar_at_far"]["0.1"] == 1.0
    img_feats = np.load(save / "img_feats.npy")
    np.testing.assert_array_equal(np.load(save / "faceness_scores.npy"), np.float32(truth["faceness"]))
    # img_feats: f(aligned) + f(mirrored aligned), in the 5-point file's order
    from recordio_tools.images import decode

    for i in (0, len(truth["images"]) - 1):
        with open(os.path.join(root, "loose_crop", truth["images"][i]), "rb") as f:
            image = decode(f.read()).convert("RGB")
        face = torch.tensor(np.asarray(align_face(image, truth["landmarks"][i]))).permute(2, 0, 1).float()
        x = (face / 127.5 - 1)[None]
        with torch.no_grad():
            expected = model(x) + model(x.flip(3))
        np.testing.assert_allclose(img_feats[i], expected[0].numpy(), rtol=1e-4, atol=1e-4)
    expected_scores = protocol_scores(img_feats, truth["faceness"], truth["templates"], truth["medias"],
                                      truth["pairs"])
    np.testing.assert_allclose(np.load(save / "scores.npy"), expected_scores, rtol=1e-6, atol=1e-6)
    assert (save / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # switches: no flip gives f(aligned) alone
    assert _eval(["--checkpoint", str(tmp_path), "--ijb", root, "--ijb-no-flip", "--ijb-save",
                  str(tmp_path / "noflip")]) == 0
    assert not np.allclose(np.load(tmp_path / "noflip" / "img_feats.npy"), img_feats)


def test_an_existing_save_folder_is_not_overwritten(ijb, tmp_path, monkeypatch, capsys):
    root, _ = ijb
    stub_backbone_checkpoint(monkeypatch, build_backbone("iresnet_tiny", embedding_size=16))
    (tmp_path / "scores.npy").write_bytes(b"theirs")
    assert _eval(["--checkpoint", str(tmp_path), "--ijb", root, "--ijb-save", str(tmp_path)]) == 2
    assert (tmp_path / "scores.npy").read_bytes() == b"theirs"
    assert f"{tmp_path / 'scores.npy'}: exists" in capsys.readouterr().err


def _broken_copy(root, tmp_path, name, edit):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    path = copy / "meta" / name
    edit(path)
    return str(copy), str(path)


@pytest.mark.parametrize("name,edit,message", [
    ("ijbc_face_tid_mid.txt", os.remove, "IJB meta file not found"),
    ("ijbc_name_5pts_score.txt", lambda p: p.write_text("1.jpg 1 2 3\n"), "line 1: expected 12 fields, got 4"),
    ("ijbc_template_pair_label.txt", lambda p: p.write_text("7 99999 1\n"), "template 99999 has no image"),
    ("ijbc_face_tid_mid.txt", lambda p: p.write_text(p.read_text().replace("1.jpg 7", "1.jpg seven")),
     "line 1: expected int numbers"),
])
def test_bad_layout_is_one_line_naming_the_file(ijb, tmp_path, monkeypatch, capsys, name, edit, message):
    root, _ = ijb
    copy, path = _broken_copy(root, tmp_path, name, edit)
    stub_backbone_checkpoint(monkeypatch, build_backbone("iresnet_tiny", embedding_size=16))
    assert _eval(["--checkpoint", str(tmp_path), "--ijb", copy]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and path in err[0] and message in err[0], err


def test_missing_loose_crop_is_refused(tmp_path):
    (tmp_path / "meta").mkdir()
    with pytest.raises(IjbError, match="loose_crop: folder of IJB images not found"):
        read_ijb_meta(str(tmp_path), "IJBB")
