"""`diffdass predict`: label maps and overlays for unlabeled images, from a segmenter or a CICLD
checkpoint, with the input's names, resumable, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffdass.cli.main import app
from diffdass.data.labels import CITYSCAPES_PALETTE
from diffdass.evaluation.predict import find_images, overlay
from diffdass.models.factory import build_segmenter
from diffdass.utils.checkpoint import save_checkpoint
from diffdass.utils.io import save_image

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
runner = CliRunner()
K = 4


def _checkpoint(path, arch="unet_small"):
    """A random-init segmenter saved the way train-seg saves one."""
    torch.manual_seed(0)
    model = build_segmenter(arch, K, pretrained=False)
    meta = {"arch": arch, "num_classes": K, "class_names": [f"c{i}" for i in range(K)]}
    save_checkpoint(path, {"model": model}, None, meta | {"iteration": 0})
    return path


def _images(root):
    """Two sizes, a sub-folder, PNG and JPEG, and a file that is no image."""
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (32, 48), "sub/b.jpg": (32, 48), "sub/deeper/c.png": (24, 40),
                         "d.jpeg": (32, 48)}.items():  # fmt: skip
        save_image(root / name, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (root / "notes.txt").write_text("not an image")
    return root


def _predict(*args):
    return runner.invoke(app, ["predict", *map(str, args), "--quiet", "--device", "cpu"])


def _read(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def test_predict_writes_labels_and_overlays_with_the_input_names(tmp_path):
    ckpt = _checkpoint(tmp_path / "seg.safetensors")
    src = _images(tmp_path / "in")
    out = tmp_path / "out"
    res = _predict(src, "--checkpoint", ckpt, "-o", out, "--batch-size", "2")
    assert res.exit_code == 0, res.output
    assert "4 images: 4 predicted, 0 already done" in res.output
    names = {"a.png", "sub/b.png", "sub/deeper/c.png", "d.png"}
    for kind in ("labels", "overlays"):
        got = {p.relative_to(out / kind).as_posix() for p in (out / kind).rglob("*.png")}
        assert got == names, kind
    for name in names:
        image = np.asarray(Image.open(next(src.glob(name.replace(".png", ".*")))).convert("RGB"))
        mode, label = _read(out / "labels" / name)
        assert mode == "L" and label.dtype == np.uint8 and label.shape == image.shape[:2]
        assert label.max() < K  # valid class ids (no ignore value, nothing beyond the classes)
        mode, over = _read(out / "overlays" / name)
        assert mode == "RGB" and np.array_equal(over, overlay(image, label, CITYSCAPES_PALETTE[:K]))
    # one image at a time gives the same labels as batches of two
    res = _predict(src, "--checkpoint", ckpt, "-o", tmp_path / "one")
    assert res.exit_code == 0, res.output
    for name in names:
        a, b = _read(out / "labels" / name)[1], _read(tmp_path / "one" / "labels" / name)[1]
        assert (a == b).mean() > 0.999, name


def test_overlay_blends_the_class_colour_on_the_image():
    image = np.full((1, 2, 3), 100, np.uint8)
    label = np.array([[0, 2]], np.uint8)
    got = overlay(image, label, CITYSCAPES_PALETTE, alpha=0.5)
    assert got.tolist() == [[[114, 82, 114], [85, 85, 85]]]  # (128,64,128) and (70,70,70)
    assert np.array_equal(overlay(image, label, CITYSCAPES_PALETTE, alpha=0.0), image)


def test_existing_outputs_are_kept_unless_overwrite(tmp_path):
    ckpt = _checkpoint(tmp_path / "seg.safetensors")
    src = _images(tmp_path / "in")
    out = tmp_path / "out"
    assert _predict(src, "--checkpoint", ckpt, "-o", out).exit_code == 0
    marker = np.full((32, 48), 7, np.uint8)  # not a valid class: shows a file was not rewritten
    save_image(out / "labels" / "a.png", marker)
    (out / "overlays" / "d.png").unlink()  # half done: predicted again
    res = _predict(src, "--checkpoint", ckpt, "-o", out)
    assert res.exit_code == 0 and "4 images: 1 predicted, 3 already done" in res.output
    assert np.array_equal(_read(out / "labels" / "a.png")[1], marker)
    assert (out / "overlays" / "d.png").is_file()
    res = _predict(src, "--checkpoint", ckpt, "-o", out, "--overwrite")
    assert res.exit_code == 0 and "4 predicted, 0 already done" in res.output
    assert _read(out / "labels" / "a.png")[1].max() < K


def test_a_glob_pattern_and_a_resized_input(tmp_path):
    ckpt = _checkpoint(tmp_path / "seg.safetensors")
    src = _images(tmp_path / "in")
    out = tmp_path / "out"
    res = _predict(f"{src}/**/*.png", "--checkpoint", ckpt, "-o", out, "--size", "16x32")
    assert res.exit_code == 0, res.output
    got = sorted(p.relative_to(out / "labels").as_posix() for p in out.rglob("labels/**/*.png"))
    assert got == ["a.png", "sub/deeper/c.png"]
    assert _read(out / "labels" / "sub/deeper/c.png")[1].shape == (24, 40)  # the image's size
    assert [n.as_posix() for _, n in find_images(f"{src}/sub/*.jpg")] == ["b.png"]


def test_output_inside_the_input_folder_is_not_read_back(tmp_path):
    ckpt = _checkpoint(tmp_path / "seg.safetensors")
    src = _images(tmp_path / "in")
    assert _predict(src, "--checkpoint", ckpt, "-o", src / "pred").exit_code == 0
    res = _predict(src, "--checkpoint", ckpt, "-o", src / "pred")
    assert res.exit_code == 0 and "4 images: 0 predicted, 4 already done" in res.output


def test_bad_input_is_a_one_line_error(tmp_path):
    ckpt = _checkpoint(tmp_path / "seg.safetensors")
    src = _images(tmp_path / "in")
    cases = [
        ((f"{src}/*.tif", "--checkpoint", ckpt), f"{src}/*.tif: matches no .png/.jpg/.jpeg image"),
        ((tmp_path / "nowhere", "--checkpoint", ckpt), "nowhere: no such folder or image"),
        ((src, "--checkpoint", tmp_path / "missing.safetensors"), "missing.safetensors"),
        ((src, "--checkpoint", ckpt, "--size", "16by32"), "--size expects HxW"),
    ]
    for args, message in cases:
        res = _predict(*args, "-o", tmp_path / "out")
        assert res.exit_code == 2 and message in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    (src / "e.png").write_bytes(b"not a png")
    res = _predict(src, "--checkpoint", ckpt, "-o", tmp_path / "out")
    assert res.exit_code == 2 and f"{src / 'e.png'}: unreadable image" in res.output
    save_image(src / "a.jpg", np.zeros((8, 8, 3), np.uint8))  # a.png and a.jpg: one output name
    res = _predict(src, "--checkpoint", ckpt, "-o", tmp_path / "out")
    assert res.exit_code == 2 and "same output name" in res.output


def test_predict_from_a_cicld_checkpoint(tmp_path):
    """A CICLD checkpoint (a tiny model trained a few iterations) predicts like a segmenter;
    its training also logged its numeric stats for TensorBoard (its step's phase is a string)."""
    from diffdass.adaptation.cicld import CICLDConfig, CICLDModelConfig, train_cicld
    from diffdass.data.folder import DomainSpec

    from conftest import read_scalars, write_folder_dataset

    data = write_folder_dataset(tmp_path / "src", size=(32, 32), num_classes=K)
    model = CICLDModelConfig(ae_channels=[8, 16], latent_channels=4, unet_channels=[16, 16],
        unet_layers_per_block=1, unet_attention=False, norm_groups=4, mask_width=8, cls_hidden=8,
        dis_channels=[8, 16], dis_hidden=32, patch_dis_width=8)  # fmt: skip
    cfg = CICLDConfig(source=DomainSpec(str(data), "train"), target=DomainSpec(str(data), "train"),
        model=model, ae_iterations=1, ldm_iterations=1, iterations=1, batch_size=2,
        noise_timestep=100, train_denoise_steps=2, device="cpu")  # fmt: skip
    train_cicld(cfg, tmp_path / "cicld", progress=False)
    curves = read_scalars(tmp_path / "cicld" / "tensorboard")
    assert "lr" in curves and "phase" not in curves and len(curves["lr"]) == 3
    ckpt = tmp_path / "cicld" / "checkpoints" / "final.safetensors"
    res = _predict(data / "train" / "images", "--checkpoint", ckpt, "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    labels = sorted((tmp_path / "out" / "labels").glob("*.png"))
    assert [p.name for p in labels] == [f"img{i:03d}.png" for i in range(6)]
    for p in labels:
        mode, label = _read(p)
        assert mode == "L" and label.shape == (32, 32) and label.max() < K
