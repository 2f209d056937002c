"""ConfusionMatrix: hand-computed values, class sets, and agreement with cityscapesscripts."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffdass.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAINID, map_labels
from diffdass.evaluation import ConfusionMatrix
from diffdass.evaluation.metrics import resolve_class_set

# target / prediction of the hand-worked example (3 classes, 255 = ignore)
TARGET = np.array([[0, 0, 0, 1], [1, 2, 255, 255]])
PRED = np.array([[0, 0, 1, 1], [2, 2, 0, 1]])
# rows = ground truth, columns = prediction; the two ignore pixels are dropped
MATRIX = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
# IoU = TP / (TP + FP + FN): class 0: 2/(2+0+1), class 1: 1/(1+1+1), class 2: 1/(1+1+0)
IOU = np.array([2 / 3, 1 / 3, 1 / 2])


def test_hand_computed_example():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    np.testing.assert_array_equal(cm.matrix, MATRIX)
    assert cm.matrix.dtype == np.int64
    np.testing.assert_allclose(cm.iou(), IOU)
    assert cm.miou() == pytest.approx(0.5)
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)
    np.testing.assert_allclose(cm.class_accuracy(), [2 / 3, 1 / 2, 1])
    assert cm.total == 6
    # the prediction on ignore pixels does not matter
    pred2 = PRED.copy()
    pred2[TARGET == 255] = 2
    np.testing.assert_array_equal(ConfusionMatrix(3).update(pred2, TARGET).matrix, MATRIX)


def test_torch_input_and_merge():
    a = ConfusionMatrix(3).update(torch.from_numpy(PRED[:1]), torch.from_numpy(TARGET[:1]))
    b = ConfusionMatrix(3).update(PRED[1:].astype(np.uint8), TARGET[1:].astype(np.uint8))
    np.testing.assert_array_equal(a.merge(b).matrix, MATRIX)
    # torch prediction with numpy target, batched (N, H, W)
    c = ConfusionMatrix(3).update(torch.from_numpy(PRED)[None], TARGET[None])
    np.testing.assert_array_equal(c.matrix, MATRIX)
    with pytest.raises(ValueError, match="merge"):
        a.merge(ConfusionMatrix(4))
    cm = ConfusionMatrix.from_matrix(MATRIX)
    np.testing.assert_allclose(cm.iou(), IOU)


def test_invalid_inputs():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"predictions \[3\]"):
        cm.update(np.array([0, 3]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"predictions \[-1\]"):
        cm.update(torch.tensor([0, -1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"predictions \[255\]"):
        cm.update(np.array([0, 255]), np.array([0, 255]))  # even on an ignore pixel
    with pytest.raises(ValueError, match=r"targets \[7\]"):
        cm.update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError, match="integer"):
        cm.update(np.zeros(2), np.zeros(2, int))
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(2), torch.zeros(2, dtype=torch.long))
    assert cm.total == 0  # nothing was counted
    with pytest.raises(ValueError, match="collides"):
        ConfusionMatrix(3, ignore_index=2)


def test_nan_handling():
    cm = ConfusionMatrix(5)
    cm.update(PRED, TARGET)
    iou = cm.iou()
    # classes 3, 4: absent from gt and prediction -> NaN, left out of the mean
    assert math.isnan(iou[3]) and math.isnan(iou[4])
    assert cm.miou() == pytest.approx(0.5)
    assert cm.miou((3, 4)) != cm.miou((3, 4))  # all NaN -> NaN
    # a class that is only predicted has IoU 0 and counts
    cm.update(np.array([4]), np.array([0]))
    # class 0 now: TP 2, FN 2, FP 0 -> 1/2; class 4: 0
    np.testing.assert_allclose(cm.iou()[[0, 4]], [1 / 2, 0])
    assert cm.miou() == pytest.approx((1 / 2 + 1 / 3 + 1 / 2 + 0) / 4)
    empty = ConfusionMatrix(3)
    assert math.isnan(empty.miou()) and math.isnan(empty.pixel_accuracy())
    doc = empty.summary(("a", "b", "c"), class_sets=(None,))
    json.dumps(doc, allow_nan=False)
    assert doc["miou"]["3"] is None


def test_class_sets_daformer_convention():
    """A 19-way prediction scored on the SYNTHIA 16/13 subsets: IoU from the full 19x19
    matrix, so pixels of unscored classes still count as FP / FN of the scored ones."""
    pairs = {  # (gt, pred): pixels
        (0, 0): 6,  # road ok
        (0, 9): 2,  # road -> terrain (terrain is not in the 16 set): still FN of road
        (0, 3): 2,  # road -> wall
        (9, 0): 3,  # terrain -> road: still FP of road
        (9, 9): 1,
        (3, 3): 5,  # wall
        (10, 10): 3,  # sky
        (13, 14): 2,  # car -> truck
        (255, 0): 5,  # ignored
    }
    gt = np.concatenate([np.full(n, g) for (g, _), n in pairs.items()])
    pr = np.concatenate([np.full(n, p) for (_, p), n in pairs.items()])
    cm = ConfusionMatrix(19).update(pr, gt)
    assert cm.matrix.shape == (19, 19) and cm.total == 24
    road, wall, terrain, sky, car, truck = 6 / 13, 5 / 7, 1 / 6, 1.0, 0.0, 0.0
    iou = cm.iou()
    np.testing.assert_allclose(iou[[0, 3, 9, 10, 13, 14]], [road, wall, terrain, sky, car, truck])
    assert np.isnan(np.delete(iou, [0, 3, 9, 10, 13, 14])).all()
    assert cm.miou() == pytest.approx((road + wall + terrain + sky + car + truck) / 6)
    assert cm.miou("19") == cm.miou()
    assert cm.miou("16") == pytest.approx((road + wall + sky + car) / 4)
    assert cm.miou("13") == pytest.approx((road + sky + car) / 3)
    assert cm.miou((0, 10)) == pytest.approx((road + sky) / 2)
    with pytest.raises(ValueError, match="unknown class set"):
        cm.miou("17")
    with pytest.raises(ValueError, match="outside"):
        resolve_class_set((0, 19), 19)

    doc = cm.summary(class_sets=("19", "16", "13"))
    json.dumps(doc, allow_nan=False)
    assert doc["miou"]["16"] == pytest.approx(cm.miou("16"))
    assert doc["per_class"][9]["name"] == "terrain" and doc["per_class"][9]["in_sets"] == ["19"]
    assert doc["per_class"][0]["in_sets"] == ["19", "16", "13"]
    assert doc["per_class"][1]["iou"] is None
    assert doc["pixel_accuracy"] == pytest.approx(15 / 24)

    table = cm.format_table(class_sets=("16", "13"))
    lines = table.splitlines()
    assert lines[0] == "| class | IoU (%) |"
    assert "| road | 46.15 |" in lines and "| sidewalk | n/a |" in lines
    assert not any(line.startswith("| terrain") for line in lines)  # not in the 16 set
    assert f"| **mIoU (16)** | **{100 * cm.miou('16'):.2f}** |" in lines
    assert len(lines) == 2 + 16 + 2 + 1


def _official_eval(pred_files, gt_files, pred_dir):
    """Run cityscapesscripts' pixel-level evaluation offline, writing nothing."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    args = copy.copy(ev.args)  # the module keeps a global args object; leave it untouched
    args.evalInstLevelScore = False  # would need *_instanceIds.png (and np.in1d, gone in numpy 2.4)
    args.evalPixelAccuracy = False  # its per-image accuracy is buggy (and needs np.in1d)
    args.JSONOutput = False  # would write into the package directory
    args.quiet = True
    args.colorized = False
    args.predictionPath = str(pred_dir)
    args.predictionWalk = None
    # look the predictions up the official way, by <city>_<seq>_<frame>*.png
    found = [ev.getPrediction(args, str(g)) for g in gt_files]
    assert found == [str(p) for p in pred_files]
    return ev.evaluateImgLists(found, [str(g) for g in gt_files], args)


def test_agrees_with_official_cityscapes_evaluation(tmp_path):
    from cityscapesscripts.helpers.labels import labels as cs_labels
    from cityscapesscripts.helpers.labels import trainId2label

    rng = np.random.default_rng(0)
    train_to_id = {t: i for i, t in CITYSCAPES_ID_TO_TRAINID.items()}
    all_ids = np.array([lb.id for lb in cs_labels if lb.id >= 0])  # 0..33, many ignored
    gt_ids = all_ids[~np.isin(all_ids, [28, 31])]  # no bus, no train in the ground truth
    pred_train = np.array([t for t in range(19) if t != 16])  # never predict train
    ours = ConfusionMatrix(19)
    gt_files, pred_files = [], []
    for k, city in enumerate(["aachen", "bremen", "zurich"]):
        stem = f"{city}_{k:06d}_{k + 19:06d}"
        h, w = 24 + 8 * k, 48
        # blocky ground truth, a prediction right ~60% of the time
        gt = np.repeat(np.repeat(rng.choice(gt_ids, (h // 4, w // 4)), 4, 0), 4, 1).astype(np.uint8)
        gt_train = map_labels(gt, CITYSCAPES_ID_TO_TRAINID)
        pred = rng.choice(pred_train, (h, w))
        keep = (rng.random((h, w)) < 0.6) & (gt_train != 255)
        pred[keep] = gt_train[keep]
        pred = pred.astype(np.uint8)
        assert not (pred == 16).any()
        g = tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png"
        p = tmp_path / "results" / f"{stem}_pred.png"
        g.parent.mkdir(parents=True, exist_ok=True)
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(g)
        Image.fromarray(np.vectorize(train_to_id.get)(pred).astype(np.uint8)).save(p)
        gt_files.append(g)
        pred_files.append(p)
        ours.update(
            torch.from_numpy(pred), map_labels(np.asarray(Image.open(g)), CITYSCAPES_ID_TO_TRAINID)
        )

    res = _official_eval(pred_files, gt_files, tmp_path / "results")
    iou = ours.iou()
    for t in range(19):
        name = trainId2label[t].name
        assert name == CITYSCAPES_CLASSES[t]
        official = res["classScores"][name]
        if math.isnan(official):
            assert math.isnan(iou[t]), name
        else:
            assert iou[t] == pytest.approx(official, abs=1e-6), name
    assert math.isnan(iou[16])  # train: absent from both
    assert iou[15] == 0.0  # bus: predicted only
    assert ours.miou() == pytest.approx(res["averageScoreClasses"], abs=1e-6)

    # pixel accuracy from the official confusion matrix (over non-ignored gt pixels)
    conf = np.array(res["confMatrix"], dtype=np.int64)
    evaluated = [lb.id for lb in cs_labels if lb.id >= 0 and not lb.ignoreInEval]
    rows = conf[evaluated]
    acc = sum(conf[i, i] for i in evaluated) / rows.sum()
    assert ours.pixel_accuracy() == pytest.approx(acc, abs=1e-12)
    assert ours.total == rows.sum()
