"""Training checkpoints as single safetensors files.

A checkpoint holds module weights under ``<name>.`` prefixes (``model.``, ``ema.``), the
optimizer's tensor state under ``optim.``, and everything else (iteration, optimizer
hyper-parameters, user metadata) as JSON in the safetensors metadata. Writes are atomic:
an interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from diffdass.utils.io import load_tensors, load_tensors_metadata, save_tensors


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.state.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim.state."):
            idx, k = key[len("optim.state.") :].split(".", 1)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | Path,
    modules: Mapping[str, torch.nn.Module | Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer | None = None,
    meta: dict | None = None,
) -> Path:
    """Save ``modules`` (name -> module or state dict), optimizer state and JSON ``meta``."""
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        sd = mod.state_dict() if isinstance(mod, torch.nn.Module) else mod
        for k, v in sd.items():
            tensors[f"{name}.{k}"] = v
    metadata = {"diffdass": json.dumps(meta or {})}
    if optimizer is not None:
        opt_t, opt_meta = _flatten_optimizer(optimizer)
        tensors.update(opt_t)
        metadata["optimizer"] = json.dumps(opt_meta)
    return save_tensors(path, tensors, metadata)


def read_meta(path: str | Path) -> dict:
    md = load_tensors_metadata(path)
    return json.loads(md.get("diffdass", "{}"))


def module_state(tensors: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    prefix = f"{name}."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_checkpoint(
    path: str | Path,
    modules: Mapping[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> dict:
    """Load weights into ``modules`` (and the optimizer); returns the JSON ``meta``."""
    tensors = load_tensors(path, device=device)
    for name, mod in modules.items():
        state = module_state(tensors, name)
        if not state:
            raise ValueError(f"{path}: checkpoint has no weights for '{name}'")
        try:
            mod.load_state_dict(state, strict=strict)
        except RuntimeError as exc:
            raise ValueError(f"{path}: weights for '{name}' do not fit the model ({exc})") from exc
    md = load_tensors_metadata(path)
    if optimizer is not None:
        if "optimizer" not in md:
            raise ValueError(f"{path}: checkpoint has no optimizer state to resume from")
        optimizer.load_state_dict(_unflatten_optimizer(tensors, json.loads(md["optimizer"])))
    return json.loads(md.get("diffdass", "{}"))
