"""``diffdass prepare``: readers of GTA5 / SYNTHIA / Cityscapes and the folder conversion."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import diffdass.data.prepare as prep
from diffdass.data import cityscapes, gta5, synthia
from diffdass.data.folder import ClassInfo, DataError, FolderDataset, image_to_tensor
from diffdass.data.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_PALETTE,
    CLASS_SETS,
    GTA5_ID_TO_TRAINID,
    SYNTHIA_ID_TO_TRAINID,
)
from diffdass.data.prepare import prepare_dataset

from fixtures_real import (
    CITYSCAPES_UNMAPPED,
    PUBLISHED_CITYSCAPES,
    PUBLISHED_SET13,
    PUBLISHED_SET16,
    PUBLISHED_SYNTHIA,
    SYNTHIA_UNMAPPED,
    make_cityscapes,
    make_gta5,
    make_synthia,
    rgb_image,
    save_gray_png,
    save_palette_png,
    save_rgb,
    save_synthia_label,
)


def run(name, root, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("workers", 2)
    return prepare_dataset(name, root, **kw)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def check_output(out: Path, split: str, expected: dict[str, np.ndarray | None], originals: dict):
    """Every label equals the expected train ids; every image is a relative symlink to the
    original; FolderDataset loads the result."""
    for stem, exp in expected.items():
        img = out / split / "images" / f"{stem}.png"
        assert img.is_symlink() and not os.path.isabs(os.readlink(img))
        assert os.path.samefile(img, originals[stem])
        lbl = out / split / "labels" / f"{stem}.png"
        if exp is None:
            assert not lbl.exists()
        else:
            np.testing.assert_array_equal(read_png(lbl), exp)
    labeled = all(e is not None for e in expected.values())
    ds = FolderDataset(out, split, labels="required" if labeled else "optional")
    assert [s.stem for s in ds.samples] == sorted(expected)
    for i, stem in enumerate(sorted(expected)):
        item = ds[i]
        with Image.open(originals[stem]) as im:
            assert item["image"].equal(image_to_tensor(np.array(im.convert("RGB"))))
        if expected[stem] is not None:
            np.testing.assert_array_equal(item["label"].numpy(), expected[stem])


# ------------------------------------------------------------------------ mapping tables


def test_tables_match_protocol():
    assert CITYSCAPES_ID_TO_TRAINID == PUBLISHED_CITYSCAPES
    assert GTA5_ID_TO_TRAINID == PUBLISHED_CITYSCAPES
    assert SYNTHIA_ID_TO_TRAINID == PUBLISHED_SYNTHIA
    assert set(CLASS_SETS["19"]) == set(range(19))
    assert set(CLASS_SETS["16"]) == PUBLISHED_SET16 == set(SYNTHIA_ID_TO_TRAINID.values())
    assert set(CLASS_SETS["13"]) == PUBLISHED_SET13
    dropped = {CITYSCAPES_CLASSES[c] for c in PUBLISHED_SET16 - PUBLISHED_SET13}
    assert dropped == {"wall", "fence", "pole"}
    missing = {CITYSCAPES_CLASSES[c] for c in set(range(19)) - PUBLISHED_SET16}
    assert missing == {"terrain", "truck", "train"}


def test_to_train_ids_every_entry():
    for raw_id, train in PUBLISHED_CITYSCAPES.items():
        assert gta5.to_train_ids(np.array([[raw_id]], np.uint8))[0, 0] == train
        assert cityscapes.to_train_ids(np.array([[raw_id]], np.uint8))[0, 0] == train
    for raw_id in CITYSCAPES_UNMAPPED:
        assert gta5.to_train_ids(np.array([[raw_id]], np.uint8))[0, 0] == 255
    for raw_id, train in PUBLISHED_SYNTHIA.items():
        assert synthia.to_train_ids(np.array([[raw_id]], np.uint16))[0, 0] == train
    for raw_id in SYNTHIA_UNMAPPED:
        assert synthia.to_train_ids(np.array([[raw_id]], np.uint16))[0, 0] == 255
    out = gta5.to_train_ids(np.array([[7, 0]], np.uint8))
    assert out.dtype == np.uint8


# ------------------------------------------------------------------------ GTA5


def test_gta5_prepare(tmp_path):
    root = tmp_path / "gta5"
    expected = make_gta5(root, n=3)
    # the raw label reader returns palette indices, not colours
    raw = gta5.read_raw_label(root / "labels" / "00001.png")
    assert raw.dtype == np.uint8 and raw.shape == (8, 16)
    assert set(np.unique(raw)) == set(PUBLISHED_CITYSCAPES) | {0, 1, 34}

    summary = run("gta5", root)
    out = root / "diffdass"
    originals = {s: root / "images" / f"{s}.png" for s in expected}
    check_output(out, "train", expected, originals)

    info = ClassInfo.load(out)
    assert info.names == CITYSCAPES_CLASSES and info.ignore_index == 255
    np.testing.assert_array_equal(info.palette, np.array(CITYSCAPES_PALETTE))

    on_disk = json.loads((out / "prepare.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    s = summary["splits"]["train"]
    assert (s["samples"], s["labels_written"], s["skipped_existing"], s["skipped_bad"]) == (
        3,
        3,
        0,
        0,
    )
    assert summary["image_links"]["mode"] == "symlink" and summary["image_links"]["symlink"] == 3
    allpix = np.concatenate([e.ravel() for e in expected.values()])
    for c, name in enumerate(CITYSCAPES_CLASSES):
        assert s["class_pixels"][name] == int((allpix == c).sum())
        assert s["class_images"][name] == sum(int((e == c).any()) for e in expected.values())
    assert s["ignore_pixels"] == int((allpix == 255).sum())


def test_rerun_is_a_noop_and_resumes(tmp_path, monkeypatch):
    root = tmp_path / "gta5"
    expected = make_gta5(root, n=4)
    out = tmp_path / "out"

    # a run that dies after writing two labels
    real_save = prep.save_image
    calls = []

    def flaky_save(path, arr):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_save(path, arr)

    monkeypatch.setattr(prep, "save_image", flaky_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run("gta5", root, out=out, workers=1)
    monkeypatch.setattr(prep, "save_image", real_save)
    done = sorted(p.name for p in (out / "train" / "labels").iterdir())
    assert done == ["00001.png", "00002.png"]  # no partial or temporary file left behind
    assert not (out / "prepare.json").exists()

    summary = run("gta5", root, out=out)
    s = summary["splits"]["train"]
    assert (s["labels_written"], s["skipped_existing"]) == (2, 2)
    # the histogram covers the skipped labels too
    allpix = np.concatenate([e.ravel() for e in expected.values()])
    assert s["class_pixels"]["road"] == int((allpix == 0).sum())

    files = [out / "classes.yaml"] + sorted((out / "train").rglob("*.png"))
    before = {p: p.lstat().st_mtime_ns for p in files}
    summary = run("gta5", root, out=out)
    assert {p: p.lstat().st_mtime_ns for p in files} == before
    s = summary["splits"]["train"]
    assert (s["labels_written"], s["skipped_existing"]) == (0, 4)
    assert summary["image_links"]["existing"] == 4
    check_output(out, "train", expected, {k: root / "images" / f"{k}.png" for k in expected})

    # an invalid existing output label is rewritten; overwrite=True rewrites everything
    save_gray_png(out / "train" / "labels" / "00003.png", np.full((8, 16), 77, np.uint8))
    s = run("gta5", root, out=out)["splits"]["train"]
    assert (s["labels_written"], s["skipped_existing"]) == (1, 3)
    np.testing.assert_array_equal(
        read_png(out / "train" / "labels" / "00003.png"), expected["00003"]
    )
    s = run("gta5", root, out=out, overwrite=True)["splits"]["train"]
    assert s["labels_written"] == 4


def test_gta5_size_mismatch(tmp_path):
    root = tmp_path / "gta5"
    make_gta5(root, n=3, label_shapes={"00002": (4, 8)})
    with pytest.raises(DataError) as err:
        run("gta5", root)
    msg = str(err.value)
    assert str(root / "labels" / "00002.png") in msg and str(root / "images" / "00002.png") in msg
    assert "8x4" in msg and "16x8" in msg

    summary = run("gta5", root, on_mismatch="resize")
    s = summary["splits"]["train"]
    assert s["labels_written"] + s["skipped_existing"] == 3 and len(s["resized_labels"]) == 1
    assert "00002.png" in s["resized_labels"][0]
    lbl = read_png(root / "diffdass" / "train" / "labels" / "00002.png")
    assert lbl.shape == (8, 16)
    raw = gta5.to_train_ids(gta5.read_raw_label(root / "labels" / "00002.png"))
    np.testing.assert_array_equal(lbl, np.repeat(np.repeat(raw, 2, axis=0), 2, axis=1))
    FolderDataset(root / "diffdass", "train")[1]


def test_bad_files_are_named_and_can_be_skipped(tmp_path, caplog):
    root = tmp_path / "gta5"
    expected = make_gta5(root, n=4)
    (root / "labels" / "00002.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=str(root / "labels" / "00002.png")):
        run("gta5", root)
    # a missing label and an unreadable image
    (root / "labels" / "00003.png").unlink()
    (root / "images" / "00004.png").write_bytes(b"\x89PNG truncated")

    out = tmp_path / "out"
    with pytest.raises(DataError, match="00002.png"):
        run("gta5", root, out=out, workers=1, splits=["train"], on_error="raise")
    with caplog.at_level(logging.WARNING, logger="diffdass.data.prepare"):
        summary = run("gta5", root, out=out, on_error="skip")
    s = summary["splits"]["train"]
    assert s["skipped_bad"] == 3 and s["prepared"] == 1
    bad = {b["stem"]: b["error"] for b in s["bad_samples"]}
    assert str(root / "labels" / "00002.png") in bad["00002"]
    assert str(root / "labels" / "00003.png") in bad["00003"] and "not found" in bad["00003"]
    assert str(root / "images" / "00004.png") in bad["00004"]
    for stem in ("00002", "00003", "00004"):
        assert stem in caplog.text
        assert not (out / "train" / "images" / f"{stem}.png").exists()
        assert not (out / "train" / "labels" / f"{stem}.png").exists()
    check_output(
        out, "train", {"00001": expected["00001"]}, {"00001": root / "images" / "00001.png"}
    )


def test_wrong_label_kind_is_an_error(tmp_path):
    root = tmp_path / "gta5"
    make_gta5(root, n=1)
    save_rgb(root / "labels" / "00001.png", rgb_image(0))  # an RGB colour label
    with pytest.raises(DataError, match=r"00001\.png.*mode 'RGB'"):
        run("gta5", root)
    Image.fromarray(np.zeros((8, 16), np.uint16) + 300).save(root / "labels" / "00001.png")
    with pytest.raises(DataError, match=r"labels/00001\.png"):
        run("gta5", root)


def test_link_fallbacks(tmp_path, monkeypatch):
    root = tmp_path / "gta5"
    expected = make_gta5(root, n=2)

    def no_symlink(*a, **k):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlink)
    summary = run("gta5", root, out=tmp_path / "hard")
    assert summary["image_links"]["mode"] == "hardlink" and summary["image_links"]["hardlink"] == 2
    assert "symlink failed" in summary["image_links"]["fallbacks"][0]
    img = tmp_path / "hard" / "train" / "images" / "00001.png"
    assert not img.is_symlink() and os.path.samefile(img, root / "images" / "00001.png")

    monkeypatch.setattr(os, "link", no_symlink)
    summary = run("gta5", root, out=tmp_path / "copy", workers=1)
    assert summary["image_links"]["mode"] == "copy" and summary["image_links"]["copy"] == 2
    img = tmp_path / "copy" / "train" / "images" / "00002.png"
    assert img.read_bytes() == (root / "images" / "00002.png").read_bytes()
    ds = FolderDataset(tmp_path / "copy", "train")
    np.testing.assert_array_equal(ds[1]["label"].numpy(), expected["00002"])
    # a re-run keeps the copies
    summary = run("gta5", root, out=tmp_path / "copy")
    assert summary["image_links"]["existing"] == 2

    with pytest.raises(DataError, match="cannot symlink"):
        run("gta5", root, out=tmp_path / "strict", link="symlink")


# ------------------------------------------------------------------------ SYNTHIA


@pytest.mark.parametrize("channels", [3, 4])
def test_synthia_prepare(tmp_path, channels):
    root = tmp_path / "synthia"
    expected = make_synthia(root, n=3, channels=channels)
    raw = synthia.read_raw_label(root / "GT" / "LABELS" / "0000000.png")
    assert raw.dtype == np.uint16
    assert set(np.unique(raw)) == set(PUBLISHED_SYNTHIA) | set(SYNTHIA_UNMAPPED)
    summary = run("synthia", root)
    originals = {s: root / "RGB" / f"{s}.png" for s in expected}
    check_output(root / "diffdass", "train", expected, originals)
    s = summary["splits"]["train"]
    for name in ("terrain", "truck", "train"):
        assert s["class_pixels"][name] == 0
    assert all(s["class_pixels"][CITYSCAPES_CLASSES[c]] > 0 for c in PUBLISHED_SET16)


def test_synthia_wrong_label_kind(tmp_path):
    root = tmp_path / "synthia"
    make_synthia(root, n=1)
    lbl = root / "GT" / "LABELS" / "0000000.png"
    save_gray_png(lbl, np.full((8, 16), 3, np.uint8))  # 8-bit
    with pytest.raises(DataError, match=f"{lbl}.*16-bit"):
        run("synthia", root)
    import cv2

    cv2.imwrite(str(lbl), np.full((8, 16), 3, np.uint16))  # 16-bit but single channel
    with pytest.raises(DataError, match=f"{lbl}.*channels"):
        run("synthia", root)
    lbl.write_bytes(b"junk")
    with pytest.raises(DataError, match=f"{lbl}.*unreadable"):
        run("synthia", root)
    save_synthia_label(lbl, np.full((8, 16), 3), seed=0)
    assert run("synthia", root)["splits"]["train"]["labels_written"] == 1


# ------------------------------------------------------------------------ Cityscapes


@pytest.mark.parametrize("variant", ["labelIds", "labelTrainIds"])
def test_cityscapes_prepare(tmp_path, variant):
    root = tmp_path / "cs"
    expected = make_cityscapes(root, variant=variant)
    summary = run("cityscapes", root)
    out = root / "diffdass"
    assert set(summary["splits"]) == {"train", "val"}
    for split, exp in expected.items():
        originals = {
            stem: root / "leftImg8bit" / split / stem.split("_")[0] / f"{stem}_leftImg8bit.png"
            for stem in exp
        }
        check_output(out, split, exp, originals)
    assert sorted(expected["val"]) == ["frankfurt_000000_000019", "frankfurt_000001_000020"]


def test_cityscapes_train_image_only_and_label_preference(tmp_path):
    root = tmp_path / "cs"
    expected = make_cityscapes(
        root,
        variant="both",
        splits={"train": {"aachen": 2}, "val": {"lindau": 1}, "test": {"berlin": 1}},
        train_labels=False,
    )
    # labelTrainIds wins over labelIds: make the labelIds unreadable to prove it
    for p in (root / "gtFine" / "val").rglob("*_labelIds.png"):
        p.write_bytes(b"junk")
    summary = run("cityscapes", root, splits=["train", "val", "test"])
    out = root / "diffdass"
    assert summary["splits"]["train"]["image_only"] == 2
    assert summary["splits"]["test"]["image_only"] == 1
    assert summary["splits"]["val"]["labels_written"] == 1
    for split, exp in expected.items():
        originals = {
            stem: root / "leftImg8bit" / split / stem.split("_")[0] / f"{stem}_leftImg8bit.png"
            for stem in exp
        }
        check_output(out, split, exp, originals)


def test_cityscapes_errors(tmp_path):
    root = tmp_path / "cs"
    make_cityscapes(root, variant="labelTrainIds", splits={"val": {"ulm": 2}})
    bad = root / "gtFine" / "val" / "ulm" / "ulm_000001_000020_gtFine_labelTrainIds.png"
    save_gray_png(bad, np.full((8, 16), 19, np.uint8))  # 19 is not a train id
    with pytest.raises(DataError, match=f"{bad}.*not train ids"):
        run("cityscapes", root, splits=["val"])
    bad.unlink()  # a val image without a label
    with pytest.raises(DataError, match="ulm_000001_000020_gtFine_labelIds.png"):
        run("cityscapes", root, splits=["val"])
    save_palette_png(bad.with_name("ulm_000001_000020_gtFine_labelIds.png"), np.full((8, 16), 7))
    s = run("cityscapes", root, splits=["val"])["splits"]["val"]
    assert (s["labels_written"], s["skipped_existing"]) == (1, 1)
    with pytest.raises(ValueError, match="splits"):
        run("cityscapes", root, splits=["extra"])
    with pytest.raises(DataError, match="leftImg8bit"):
        run("cityscapes", tmp_path / "cs" / "gtFine")
    with pytest.raises(ValueError, match="unknown dataset"):
        run("kitti", root)
