"""The folder format and its bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffdass.data.folder import (
    ClassInfo,
    DataError,
    FolderDataset,
    StreamBatchSampler,
    StreamDataset,
    list_samples,
)
from diffdass.data.transforms import RandomCrop, RandomHFlip, RandomScale, train_transform
from diffdass.utils.io import save_image

from conftest import write_folder_dataset


def test_classes_yaml_roundtrip(tmp_path):
    info = ClassInfo.create(["a", "b", "c"], palette=[[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    info.save(tmp_path)
    back = ClassInfo.load(tmp_path)
    assert back.names == ("a", "b", "c")
    assert back.palette.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert back.ignore_index == 255
    # a bare list is accepted too, palette defaulted
    (tmp_path / "classes.yaml").write_text("- x\n- y\n")
    assert ClassInfo.load(tmp_path).num_classes == 2


@pytest.mark.parametrize(
    "text, msg",
    [
        ("names: [a, a]", "duplicate"),
        ("names: [a, b]\npalette: [[1, 2, 3]]", "palette"),
        ("names: [a, b]\nignore_index: 1", "collides"),
        ("foo: 1", "names"),
        ("names: [a\n", "YAML"),
    ],
)
def test_bad_classes_yaml(tmp_path, text, msg):
    (tmp_path / "classes.yaml").write_text(text)
    with pytest.raises(DataError, match=msg) as err:
        ClassInfo.load(tmp_path)
    assert "classes.yaml" in str(err.value)


def test_missing_classes_yaml(tmp_path):
    with pytest.raises(DataError, match="classes.yaml"):
        ClassInfo.load(tmp_path)


def test_dataset_items(tiny_dataset):
    ds = FolderDataset(tiny_dataset, "train")
    assert len(ds) == 6
    item = ds[0]
    assert item["image"].shape == (3, 32, 48) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["label"].shape == (32, 48) and item["label"].dtype == torch.int64
    assert item["label"][0, 0] == 255
    assert set(item["label"].unique().tolist()) <= {0, 1, 2, 3, 255}


def test_image_without_label_is_an_error(tiny_dataset):
    (tiny_dataset / "train" / "labels" / "img002.png").unlink()
    with pytest.raises(DataError, match="img002.png: has no label"):
        FolderDataset(tiny_dataset, "train")
    # unlabeled splits are allowed explicitly
    ds = FolderDataset(tiny_dataset, "train", labels="optional")
    assert ds.samples[2].label is None and not ds.has_labels
    assert (ds[2]["label"] == 255).all()


def test_size_mismatch_names_both_files(tiny_dataset):
    save_image(tiny_dataset / "train" / "labels" / "img001.png", np.zeros((8, 8), np.uint8))
    ds = FolderDataset(tiny_dataset, "train")
    with pytest.raises(
        DataError, match=r"img001.png: label size 8x8 does not match image .*img001.png size 48x32"
    ):
        ds[1]


def test_unknown_label_id(tiny_dataset):
    lbl = np.full((32, 48), 7, np.uint8)
    save_image(tiny_dataset / "train" / "labels" / "img003.png", lbl)
    ds = FolderDataset(tiny_dataset, "train")
    with pytest.raises(DataError, match=r"img003.png: label ids \[7\] are outside the class set"):
        ds[3]


def test_unreadable_file(tiny_dataset):
    (tiny_dataset / "train" / "images" / "img004.png").write_bytes(b"not a png")
    ds = FolderDataset(tiny_dataset, "train")
    with pytest.raises(DataError, match="img004.png: unreadable image"):
        ds[4]


def test_rgb_label_rejected(tiny_dataset):
    save_image(tiny_dataset / "train" / "labels" / "img000.png", np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(DataError, match="single-channel"):
        FolderDataset(tiny_dataset, "train")[0]


def test_skip_bad_samples(tiny_dataset, caplog):
    (tiny_dataset / "train" / "images" / "img001.png").write_bytes(b"garbage")
    ds = FolderDataset(tiny_dataset, "train", on_error="skip")
    item = ds[1]
    assert item["stem"] == "img002"  # the next good sample
    assert any("img001.png" in p for p in ds.skipped)
    assert "skipping bad sample" in caplog.text


def test_missing_split_and_orphans(tmp_path):
    write_folder_dataset(tmp_path, n=2)
    with pytest.raises(DataError, match="no such directory"):
        list_samples(tmp_path, "val")
    save_image(tmp_path / "train" / "labels" / "zzz.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="labels with no image: zzz.png"):
        list_samples(tmp_path, "train")


def test_jpg_images_and_palette_labels(tmp_path):
    ClassInfo.create(["a", "b"]).save(tmp_path)
    save_image(tmp_path / "val" / "images" / "x.jpg", np.full((4, 6, 3), 128, np.uint8))
    p = Image.fromarray(np.ones((4, 6), np.uint8), mode="P")
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    (tmp_path / "val" / "labels").mkdir(parents=True)
    p.save(tmp_path / "val" / "labels" / "x.png")
    item = FolderDataset(tmp_path, "val")[0]
    assert (item["label"] == 1).all()


def test_transforms_keep_label_ids_and_sizes():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    lbl = rng.integers(0, 3, (20, 30)).astype(np.uint8)
    for _ in range(10):
        i2, l2 = RandomScale(0.5, 2.0)(img, lbl, rng)
        assert i2.shape[:2] == l2.shape
        assert set(np.unique(l2)) <= {0, 1, 2}
    i3, l3 = RandomCrop(40, 40)(img, lbl, rng)  # larger than input: padded with ignore
    assert i3.shape == (40, 40, 3) and (l3[20:, :] == 255).all()
    i4, l4 = RandomHFlip(p=1.0)(img, lbl, rng)
    assert (i4 == img[:, ::-1]).all() and (l4 == lbl[:, ::-1]).all()


def test_augmentation_is_deterministic_per_epoch(tiny_dataset):
    tf = train_transform(crop=(8, 8), scale=(0.5, 1.5))
    ds = FolderDataset(tiny_dataset, "train", transform=tf, seed=3)
    a, b = ds.get(2, epoch=0), ds.get(2, epoch=0)
    c = ds.get(2, epoch=1)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])


def test_stream_sampler_is_resumable(tiny_dataset):
    full = list(StreamBatchSampler(6, 4, seed=1, start=0, stop=5))
    tail = list(StreamBatchSampler(6, 4, seed=1, start=3, stop=5))
    assert full[3:] == tail
    flat = [k for b in full for k in b]
    # each epoch visits every sample exactly once
    assert sorted(k % 6 for k in flat[:6]) == list(range(6))
    assert sorted(k % 6 for k in flat[6:12]) == list(range(6))
    ds = StreamDataset(FolderDataset(tiny_dataset, "train"))
    assert ds[7]["stem"] == "img001"
