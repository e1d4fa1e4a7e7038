"""Routing calibration: the classifier, its file, the weights fingerprint, and a real run on a tiny MoCE-IR."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import random_moce
from restore_fixtures import photo
from safetensors.torch import save_file

from irtool import calibrate as cal
from irtool.archs.moce_ir import VARIANTS
from irtool.degrade import degrade
from irtool.loading import load_model
from irtool.restoration import calibration as rc


def clusters(n_per: int = 6, dims: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (3, dims))
    features, labels, groups = [], [], []
    for g in range(n_per):
        for c, name in enumerate(("rain", "haze", "noise")):
            features.append(centres[c] + rng.normal(0, 0.03, dims))
            labels.append(name)
            groups.append(g)
    return np.array(features), labels, groups, centres


def test_fit_predicts_held_out_samples_and_says_unknown_far_away(tmp_path):
    features, labels, groups, centres = clusters()
    model = cal.fit(features, labels, groups, fingerprint="abc", layers=2, experts=4)
    assert model.accuracy == 1.0 and model.classes == ["rain", "haze", "noise"]
    assert model.temperature >= 1.0
    named = model.predict(centres + 0.01)
    assert [n for n, _ in named] == ["rain", "haze", "noise"]
    assert all(0.5 < c <= 1.0 for _, c in named)
    assert model.predict(np.full((1, 8), 5.0)) == [("unknown", None)]
    assert model.predict(np.zeros((1, 3))) == [("unknown", None)]  # a signature of another shape

    path = model.save(tmp_path / "w.pth.calibration.json")
    loaded = rc.Calibration.load(path)
    assert loaded.predict(centres) == model.predict(centres)
    assert json.loads(path.read_text())["weights_fingerprint"] == "abc"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(rc.CalibrationError, match="not an irtool calibration"):
        rc.Calibration.load(tmp_path / "bad.json")


def test_fingerprint_follows_the_weights_not_the_container(tmp_path):
    model = random_moce(VARIANTS["tiny"], 0)
    torch.save({"state_dict": {f"net.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "m.ckpt")
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    a = rc.fingerprint(load_model(tmp_path / "m.ckpt", device="cpu"))
    b = rc.fingerprint(load_model(tmp_path / "m.safetensors", device="cpu"))
    assert a == b == rc.fingerprint(model)
    with torch.no_grad():
        model.output.weight[0, 0, 0, 0] += 1e-3
    assert rc.fingerprint(model) != a


def test_a_stale_calibration_is_ignored_with_a_warning_and_an_explicit_one_refused(tmp_path):
    model = random_moce(VARIANTS["tiny"], 0)
    features, labels, groups, _ = clusters()
    weights = tmp_path / "w.pth"
    cal.fit(features, labels, groups, fingerprint="someone-else").save(rc.calibration_path(weights))
    found, warning = rc.find_calibration(weights, model)
    assert found is None and "made for other weights" in warning
    with pytest.raises(rc.CalibrationError, match="other weights"):
        rc.find_calibration(weights, model, rc.calibration_path(weights))
    cal.fit(features, labels, groups, fingerprint=rc.fingerprint(model)).save(rc.calibration_path(weights))
    found, warning = rc.find_calibration(weights, model)
    assert found is not None and warning is None
    # the same weights imported as another file in the same folder still find it
    found, warning = rc.find_calibration(tmp_path / "weights.safetensors", model)
    assert found is not None and warning is None


def test_calibrating_a_tiny_moce_ir_names_degradations_of_unseen_photos():
    model = random_moce(VARIANTS["tiny"], 0)
    photos = [photo(64, 64, seed=s) for s in range(6)]
    kinds = ["haze", "lowlight", "noise"]
    seen = []
    with torch.inference_mode():
        fitted = cal.calibrate(
            model.route,
            photos,
            fingerprint="t",
            classes=kinds,
            levels=["heavy"],
            size=48,
            batch_size=9,
            progress=lambda d, t: seen.append((d, t)),
        )
        assert fitted.accuracy >= 0.9 and fitted.layers == 5 and fitted.experts == 4
        assert seen[-1] == (18, 18)
        fresh = photo(48, 48, seed=100)
        for kind in kinds:
            x = torch.from_numpy(degrade(fresh, kind, "heavy", seed=1)).permute(2, 0, 1)[None].float() / 255
            assert fitted.classify(model.route(x))[0][0] == kind


def test_merged_kinds_are_one_class_fitted_on_the_same_crops():
    """--merge defocus=blur: defocus crops are made and routed as usual but counted as "blur" (one class, whose
    centroid is the mean over both kinds' signatures); a bad pair is one line."""
    model = random_moce(VARIANTS["tiny"], 0)
    photos = [photo(64, 64, seed=s) for s in range(3)]
    settings = dict(fingerprint="t", classes=["noise", "blur", "defocus"], levels=["heavy"], size=32, batch_size=9)
    with torch.inference_mode():
        apart = cal.calibrate(model.route, photos, **settings)
        merged = cal.calibrate(model.route, photos, merge={"defocus": "blur"}, **settings)
    assert apart.classes == ["noise", "blur", "defocus"] and merged.classes == ["noise", "blur"]
    assert merged.info["merged"] == {"defocus": "blur"} and merged.info["samples"] == apart.info["samples"] == 9
    # the merged centroid is the mean of the two separate ones (as many crops of each)
    both = (apart.centroids[1] + apart.centroids[2]) / 2
    assert np.allclose(merged.centroids[1], both, atol=1e-9) and np.allclose(merged.centroids[0], apart.centroids[0])
    with pytest.raises(rc.CalibrationError, match="merge defocus=haze"):
        cal.calibrate(model.route, photos, merge={"defocus": "haze"}, **settings)


def test_clean_photos_come_from_a_folder_or_scikit_image(tmp_path):
    with pytest.raises(rc.CalibrationError, match="no such folder"):
        cal.clean_photos(tmp_path / "nope")
    with pytest.raises(rc.CalibrationError, match="no images"):
        cal.clean_photos(tmp_path)
    from irtool.evaluation.datasets import skimage_photo_dir

    if skimage_photo_dir() is not None:
        photos = cal.clean_photos()
        assert photos and all(p.is_file() for p in photos)


def test_unknown_is_explained_by_the_kinds_the_calibration_confuses():
    classes = ["clean", "noise", "blur", "defocus", "jpeg", "haze"]
    confusion = [  # rows: true kind held out, columns: the name it was given
        [9, 0, 0, 0, 8, 3],  # clean: named jpeg 40% -> with jpeg
        [0, 20, 0, 0, 0, 0],
        [0, 0, 9, 8, 1, 2],  # blur: defocus 40%
        [0, 0, 3, 12, 0, 5],  # defocus: reliable here (60% >= 50%), still joined through blur
        [2, 0, 0, 0, 9, 9],  # jpeg: haze 45%, clean 10% (under the share) -> jpeg's group gains haze
        [0, 0, 0, 0, 0, 20],
    ]
    per_class = {c: row[i] / sum(row) for i, (c, row) in enumerate(zip(classes, confusion))}
    calibration = cal.Calibration(
        classes=classes,
        centroids=np.zeros((6, 2)),
        scale=np.ones(2),
        temperature=1.0,
        reject_distance=1.0,
        fingerprint="x",
        per_class_accuracy=per_class,
        confusion=confusion,
        min_accuracy=0.5,
    )
    assert calibration.unreliable == ["clean", "blur", "jpeg"]
    assert rc.confusable_groups(calibration) == [["clean", "jpeg", "haze"], ["blur", "defocus"]]
    line = rc.unknown_explanation(calibration)
    assert "clean / jpeg / haze, blur / defocus" in line and "under 50%" in line and "\n" not in line
    # a kind never confused above the share is joined with its most frequent wrong name
    calibration.confusion[2] = [0, 0, 9, 2, 1, 0]
    calibration.confusion[4] = [1, 0, 0, 0, 9, 0]
    assert rc.confusable_groups(calibration) == [["clean", "jpeg"], ["blur", "defocus"]]
    assert "no routing calibration" in rc.unknown_explanation(None)


def test_the_shipped_calibration_explains_its_unknowns():
    from irtool.loading import default_source

    weights, _, _ = default_source()  # the built-in model: its calibration ships beside it
    shipped = rc.Calibration.load(rc.calibration_path(weights))
    groups = rc.confusable_groups(shipped)
    assert set(shipped.unreliable) <= {kind for group in groups for kind in group}
    assert all(len(group) >= 2 for group in groups)
