"""Checkpoints carry a checksum of their tensors; a full disk and damaged files are one-line
errors that name the file; classes.yaml of the wrong shape is named and explained."""

from __future__ import annotations

import errno

import pytest
import torch

from diffdass.data.folder import ClassInfo, DataError
from diffdass.utils.checkpoint import load_checkpoint, save_checkpoint
from diffdass.utils.io import CHECKSUM_KEY, load_tensors, load_tensors_metadata


def _ckpt(path):
    model = torch.nn.Linear(64, 64)
    save_checkpoint(path, {"model": model}, None, {"arch": "x"})
    return model


def test_checksum_is_written_and_verified(tmp_path):
    path = tmp_path / "c.safetensors"
    model = _ckpt(path)
    assert len(load_tensors_metadata(path)[CHECKSUM_KEY]) == 64
    back = torch.nn.Linear(64, 64)
    load_checkpoint(path, {"model": back})
    assert torch.equal(back.weight, model.weight)
    # flip one byte inside the tensor data (the end of the file): loading names the file
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{path}: damaged"):
        load_tensors(path)
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(path, {"model": back})


def test_full_disk_is_an_os_error_naming_the_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):
        raise RuntimeError(
            "Error while serializing: IoError(No space left on device (os error 28))"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    path = tmp_path / "c.safetensors"
    with pytest.raises(OSError) as info:
        _ckpt(path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("names: road\n", "names must be a list"),
        ("names: [road, car]\nignore_index: x\n", "ignore_index must be an integer"),
        ("names: [road, car\nignore_index: 255\n", r"not valid YAML \(line"),
    ],
)
def test_classes_yaml_of_the_wrong_shape(tmp_path, text, msg):
    (tmp_path / "classes.yaml").write_text(text)
    with pytest.raises(DataError, match=msg) as info:
        ClassInfo.load(tmp_path)
    assert str(tmp_path / "classes.yaml") in str(info.value)
    assert "\n" not in str(info.value)
