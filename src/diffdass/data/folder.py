"""The generic folder format, the one every dataset is converted to.

::

    ROOT/classes.yaml                      # names (list), palette (optional), ignore_index: 255
    ROOT/<split>/images/<stem>.png|.jpg    # RGB images
    ROOT/<split>/labels/<stem>.png         # single channel, class index, 255 = ignore (optional)

Images are returned as float tensors in [-1, 1] (the DDPM's range; segmenters normalise
internally) and labels as int64 tensors of class indices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError

from diffdass.data.labels import IGNORE_INDEX, default_palette

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """A problem with a dataset file; the message always names the file."""


@dataclass(frozen=True)
class ClassInfo:
    """Class names, palette and ignore index of a folder dataset (``classes.yaml``)."""

    names: tuple[str, ...]
    palette: np.ndarray = field(compare=False)
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def create(cls, names, palette=None, ignore_index: int = IGNORE_INDEX) -> ClassInfo:
        names = tuple(str(n) for n in names)
        if not names:
            raise ValueError("a class list needs at least one class")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate class names in {names}")
        if not 0 <= ignore_index <= 255:
            raise ValueError(f"ignore_index must lie in 0..255, got {ignore_index}")
        if ignore_index < len(names):
            raise ValueError(f"ignore_index {ignore_index} collides with a class index")
        if len(names) > 255:
            raise ValueError("at most 255 classes fit in an 8-bit label PNG")
        pal = (
            default_palette(len(names)) if palette is None else np.asarray(palette, dtype=np.int64)
        )
        if pal.shape != (len(names), 3) or pal.min() < 0 or pal.max() > 255:
            raise ValueError(
                f"palette must be {len(names)} RGB triples in 0..255, got shape {pal.shape}"
            )
        return cls(names=names, palette=pal.astype(np.uint8), ignore_index=int(ignore_index))

    @classmethod
    def load(cls, root: str | Path) -> ClassInfo:
        path = Path(root) / "classes.yaml"
        if not path.is_file():
            raise DataError(
                f"{path}: missing; a folder dataset needs ROOT/classes.yaml listing its classes"
            )
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            what = getattr(exc, "problem", None) or type(exc).__name__
            raise DataError(f"{path}: not valid YAML ({where}{what})") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        if isinstance(doc, list):
            doc = {"names": doc}
        if not isinstance(doc, dict) or "names" not in doc:
            raise DataError(f"{path}: expected a list of class names or a mapping with 'names'")
        names, ignore = doc["names"], doc.get("ignore_index", IGNORE_INDEX)
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
            raise DataError(
                f"{path}: names must be a list of class names (one per line, '- road'), got "
                f"{type(names).__name__} {names!r}"[:300]
            )
        if isinstance(ignore, bool) or not isinstance(ignore, int):
            raise DataError(f"{path}: ignore_index must be an integer in 0..255, got {ignore!r}")
        try:
            return cls.create(names, doc.get("palette"), ignore)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}: {exc}") from None

    def save(self, root: str | Path) -> None:
        from diffdass.utils.io import atomic_write_text

        doc = {
            "names": list(self.names),
            "palette": [[int(v) for v in rgb] for rgb in self.palette],
            "ignore_index": self.ignore_index,
        }
        atomic_write_text(Path(root) / "classes.yaml", yaml.safe_dump(doc, sort_keys=False))


@dataclass
class DomainSpec:
    """Where one split of a folder-format dataset lives (a config section)."""

    root: str = ""
    split: str = "train"


@dataclass(frozen=True)
class Sample:
    stem: str
    image: Path
    label: Path | None


def list_samples(root: str | Path, split: str, labels: str = "required") -> list[Sample]:
    """Pair ``<split>/images/<stem>.*`` with ``<split>/labels/<stem>.png``.

    ``labels``: ``"required"`` (an image with no label is an error), ``"optional"``
    (unlabeled images get ``label=None``) or ``"none"`` (labels are ignored).
    """
    if labels not in ("required", "optional", "none"):
        raise ValueError(f"labels must be required/optional/none, got {labels!r}")
    root = Path(root)
    img_dir = root / split / "images"
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: no such directory (expected ROOT/<split>/images)")
    lbl_dir = root / split / "labels"
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{img_dir}: contains no .png/.jpg images")
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise DataError(f"{p}: two images share the stem {p.stem!r} ({stems[p.stem].name})")
        stems[p.stem] = p
    samples = []
    for stem, img in stems.items():
        lbl = lbl_dir / f"{stem}.png"
        if labels == "none":
            samples.append(Sample(stem, img, None))
        elif lbl.is_file():
            samples.append(Sample(stem, img, lbl))
        elif labels == "required":
            raise DataError(f"{img}: has no label (expected {lbl})")
        else:
            samples.append(Sample(stem, img, None))
    if labels == "required" and lbl_dir.is_dir():
        orphans = sorted(p.name for p in lbl_dir.glob("*.png") if p.stem not in stems)
        if orphans:
            raise DataError(f"{lbl_dir}: labels with no image: {', '.join(orphans[:5])}")
    return samples


def read_image(path: str | Path) -> np.ndarray:
    """An RGB ``uint8`` array (H, W, 3); a clear :class:`DataError` if unreadable."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def read_label(path: str | Path, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """A single-channel ``uint8`` label map, checked against the class set."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"{path}: label must be a single-channel PNG, got mode {im.mode}")
            arr = np.array(im)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: unreadable label ({exc})") from exc
    if arr.ndim != 2:
        raise DataError(f"{path}: label must be single-channel, got shape {arr.shape}")
    bad = np.unique(arr[(arr >= num_classes) & (arr != ignore_index)])
    if bad.size:
        raise DataError(
            f"{path}: label ids {bad[:10].tolist()} are outside the class set "
            f"(0..{num_classes - 1}, ignore {ignore_index}); did you forget `diffdass prepare`?"
        )
    return arr.astype(np.uint8)


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def tensor_to_image(x: torch.Tensor) -> np.ndarray:
    """float (3, H, W) in [-1, 1] -> uint8 (H, W, 3)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(1, 2, 0).numpy()


Transform = Callable[[np.ndarray, np.ndarray | None, np.random.Generator], tuple]


class FolderDataset(torch.utils.data.Dataset):
    """One split of a folder-format dataset.

    Each item is ``{"image": float (3,H,W) in [-1,1], "label": int64 (H,W), "stem": str,
    "index": int}``; unlabeled items carry a label filled with ``ignore_index``.

    ``on_error="skip"`` logs a bad sample (unreadable, size mismatch, unknown ids) and
    returns the next good one instead of raising; the skipped paths are kept in
    ``self.skipped``. DataLoader workers fill their own copies of the dataset, so with
    ``on_error="skip"`` every item also lists the paths skipped to produce it under
    ``"skipped"``: load with ``collate_fn=collate_items`` and hand each batch's list to
    :meth:`note_skipped` in the main process.

    Augmentation is deterministic given ``(seed, epoch, index)``: call :meth:`set_epoch`.

    The stages build their datasets from :func:`diffdass.data.scan.scan_split`, which checks
    every file before training (and, with ``on_error="skip"``, leaves the bad ones out).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        labels: str = "required",
        transform: Transform | None = None,
        on_error: str = "raise",
        seed: int = 0,
        classes: ClassInfo | None = None,
        samples: list[Sample] | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = Path(root)
        self.split = split
        self.classes = classes or ClassInfo.load(self.root)
        # ``samples``: an already checked list (diffdass.data.scan), bad samples left out
        self.samples = list(samples) if samples is not None else list_samples(root, split, labels)
        if not self.samples:
            raise DataError(f"{self.root / split}: no usable sample")
        self.transform = transform
        self.on_error = on_error
        self.seed = seed
        self.epoch = 0
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def has_labels(self) -> bool:
        return all(s.label is not None for s in self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw (image, label) arrays of one sample, validated."""
        s = self.samples[index]
        img = read_image(s.image)
        if s.label is None:
            return img, None
        lbl = read_label(s.label, self.classes.num_classes, self.classes.ignore_index)
        if lbl.shape != img.shape[:2]:
            raise DataError(
                f"{s.label}: label size {lbl.shape[1]}x{lbl.shape[0]} does not match image "
                f"{s.image} size {img.shape[1]}x{img.shape[0]}"
            )
        return img, lbl

    def __getitem__(self, index: int) -> dict:
        return self.get(index, self.epoch)

    def get(self, index: int, epoch: int) -> dict:
        """Item ``index`` with the augmentation draw of ``epoch``."""
        skipped: list[str] = []
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            try:
                img, lbl = self.load(i)
            except DataError as exc:
                if self.on_error == "raise":
                    raise
                skipped.append(str(self.samples[i].image))
                if skipped[-1] not in self.skipped:
                    log.warning("skipping bad sample: %s", exc)
                self.note_skipped(skipped[-1:])
                continue
            item = self._make_item(i, img, lbl, epoch)
            if self.on_error == "skip":
                item["skipped"] = skipped
            return item
        raise DataError(f"{self.root / self.split}: every sample is unreadable")

    def note_skipped(self, paths) -> None:
        """Record skipped sample paths (e.g. a batch's ``"skipped"`` list from a worker)."""
        for p in paths:
            if p not in self.skipped:
                self.skipped.append(p)

    def _make_item(self, i: int, img: np.ndarray, lbl: np.ndarray | None, epoch: int) -> dict:
        if lbl is None:
            lbl = np.full(img.shape[:2], self.classes.ignore_index, dtype=np.uint8)
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, epoch, i])
            img, lbl = self.transform(img, lbl, rng)
        return {
            "image": image_to_tensor(img),
            "label": torch.from_numpy(np.ascontiguousarray(lbl)).long(),
            "stem": self.samples[i].stem,
            "index": i,
        }


def collate_items(items: list[dict]) -> dict:
    """``default_collate`` of dataset items, with their ``"skipped"`` lists (items of an
    ``on_error="skip"`` dataset) joined into one list instead of collated."""
    skipped = [p for item in items for p in item.get("skipped", ())]
    batch = torch.utils.data.default_collate(
        [{k: v for k, v in item.items() if k != "skipped"} for item in items]
    )
    if any("skipped" in item for item in items):
        batch["skipped"] = skipped
    return batch


class StreamDataset(torch.utils.data.Dataset):
    """Index ``k`` = ``epoch * len(ds) + i``: lets a sampler choose the augmentation epoch.

    Used with :class:`StreamBatchSampler` so that the data order and augmentation of
    iteration ``it`` depend only on ``(seed, it)``; a resumed run sees exactly the batches an
    uninterrupted one would, whatever the number of loader workers.
    """

    def __init__(self, dataset: FolderDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int) -> dict:
        epoch, i = divmod(int(k), len(self.dataset))
        return self.dataset.get(i, epoch)


class StreamBatchSampler(torch.utils.data.Sampler):
    """Batches ``start .. stop-1`` of an endless stream of per-epoch seeded permutations."""

    def __init__(
        self, n: int, batch_size: int, seed: int, start: int, stop: int, shuffle: bool = True
    ):
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.shuffle = start, stop, shuffle

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _perm(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        cached = getattr(self, "_cached", None)
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, 7919, epoch]).permutation(self.n))
            self._cached = cached
        return cached[1]

    def batch(self, it: int) -> list[int]:
        out = []
        for pos in range(it * self.batch_size, (it + 1) * self.batch_size):
            epoch, j = divmod(pos, self.n)
            out.append(epoch * self.n + int(self._perm(epoch)[j]))
        return out

    def __iter__(self):
        for it in range(self.start, self.stop):
            yield self.batch(it)
