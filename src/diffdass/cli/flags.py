"""The one table of the CLI's shortcut flags: for each command, which config key each flag sets.

Every key can also be set with ``--set KEY=VALUE``; a flag is a shortcut for the most common
ones. Both override the ``--config`` YAML, which overrides the defaults; a key given both as a
flag and with ``--set`` is refused. A flag left out (None) sets nothing. ``tests/test_cli.py`` checks that every parameter of a command
that sets a config value is in this table and that every key exists in the command's config.
"""

from __future__ import annotations

_SEED_DEVICE = {"seed": "seed", "device": "device"}

#: command -> {parameter name of the command: dotted config key}
FLAGS: dict[str, dict[str, str]] = {
    "estimate": {
        "image_size": "estimate.image_size",
        "val_images": "estimate.val_images",
        "target_images": "estimate.target_images",
        "device": "device",
    },
    "train-seg": {
        "source_root": "source.root",
        "source_split": "source.split",
        "arch": "model.arch",
        "pretrained": "model.pretrained",
        "iterations": "iterations",
        "batch_size": "batch_size",
        "lr": "optim.lr",
        "noisy_masked": "noisy_masked.prob",
        **_SEED_DEVICE,
    },
    "train-ddpm": {
        "target_root": "target.root",
        "target_split": "target.split",
        "unet": "unet",
        "iterations": "iterations",
        "batch_size": "batch_size",
        "lr": "lr",
        **_SEED_DEVICE,
    },
    "translate": {
        "source_root": "source.root",
        "source_split": "source.split",
        "ddpm": "ddpm",
        "segmenter": "segmenter",
        "n": "n",
        "guidance": "guidance.kind",
        "scale": "guidance.scale",
        "arrangement": "guidance.arrangement",
        "lcg_mode": "guidance.lcg_mode",
        "respace_steps": "respace_steps",
        "limit": "limit",
        **_SEED_DEVICE,
    },
    "ptl": {
        "source_root": "source.root",
        "init": "init",
        "ddpm": "ddpm",
        "n_max": "n_max",
        "domains": "domains",
        "num_domains": "num_domains",
        **_SEED_DEVICE,
    },
    "run": {"out": "out", **_SEED_DEVICE},
    "calibrate-guidance": {"out": "out", **_SEED_DEVICE},
}


def flag_values(command: str, params: dict) -> dict[str, object]:
    """``{config key: value}`` of ``command``'s flags, read from its ``params`` (``locals()``)."""
    return {key: params[name] for name, key in FLAGS[command].items()}
