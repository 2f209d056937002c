"""Convert an original dataset, once, into the project's folder format (``diffdass prepare``).

Supported originals (their layouts are documented in :mod:`diffdass.data.gta5`,
:mod:`diffdass.data.synthia` and :mod:`diffdass.data.cityscapes`): ``gta5``, ``synthia``
(SYNTHIA-RAND-CITYSCAPES) and ``cityscapes``. The output (default ``ROOT/diffdass``) is::

    OUT/classes.yaml                  # the 19 Cityscapes classes, their palette, ignore 255
    OUT/<split>/images/<stem>.png     # a link to the original image (no pixel is copied)
    OUT/<split>/labels/<stem>.png     # train ids, uint8, 255 = ignore (written atomically)
    OUT/prepare.json                  # summary: counts, skipped/bad samples, class histogram

Images are **not copied**: each is a relative symlink to the original file. Where symlinks
are impossible (some file systems, Windows without privileges) a hard link is made, and
where that fails too, a copy; ``prepare.json`` (``image_links``) reports which was used.
Because of the symlinks, moving ``ROOT`` and ``OUT`` together keeps the links valid (the
default ``OUT`` lives inside ``ROOT``); moving only one of them breaks them: re-run prepare.

Labels are mapped from the dataset's raw ids to the 19 train ids with the tables of
:mod:`diffdass.data.labels`; every raw id outside a table becomes 255 (ignore), which *is*
the evaluation protocol. A label file of the wrong kind (wrong bit depth or channel count,
unreadable, missing) is an error that names the file.

Re-running is safe and resumes an interrupted run: a label PNG that exists is done (it is
written atomically, so it is either complete or absent) and is only re-read to build the
histogram and to check it is a valid train-id map (an invalid one is rewritten); a valid
image link is kept. ``overwrite=True`` redoes everything.

Options for bad samples: ``on_mismatch="error"`` (default) stops on a label whose size
differs from its image (a few GTA5 frames have this), ``"resize"`` resizes the label to the
image with nearest-neighbour interpolation and lists it in ``prepare.json``.
``on_error="raise"`` (default) stops at the first bad sample; ``"skip"`` logs it, leaves it
out of the output (neither image nor label is written) and lists it in ``prepare.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffdass.data.folder import ClassInfo, DataError, read_label
from diffdass.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX
from diffdass.utils.io import save_image, write_json

log = logging.getLogger(__name__)

DATASETS = ("gta5", "synthia", "cityscapes")
LINK_MODES = ("auto", "symlink", "hardlink", "copy")
NUM_CLASSES = len(CITYSCAPES_CLASSES)
SUMMARY_VERSION = 1


# --------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class RawSample:
    """One sample of an original dataset.

    ``label`` is the raw label file the sample should have (``None`` where the split has no
    labels at all, e.g. Cityscapes test). If ``label_optional`` and the file does not exist,
    the sample is prepared image-only; otherwise a missing label is an error.
    """

    stem: str
    image: Path
    label: Path | None
    label_optional: bool = False


class RawDataset(ABC):
    """Base class of the readers: enumerate samples, read and map raw labels."""

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ()
    default_splits: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such directory (the {self.name} dataset root)")

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"{self.name} has splits {list(self.splits)}, not {split!r}")

    @abstractmethod
    def samples(self, split: str) -> list[RawSample]:
        """All samples of ``split``, sorted by stem."""

    @abstractmethod
    def read_raw_label(self, path: str | Path) -> np.ndarray:
        """The raw label ids of one label file (2-D integer array)."""

    @abstractmethod
    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        """Raw ids -> train ids (uint8, 255 = ignore)."""

    def load_train_ids(self, path: str | Path) -> np.ndarray:
        """Read one raw label file and map it to train ids."""
        return self.to_train_ids(self.read_raw_label(path))


def get_reader(name: str, root: str | Path) -> RawDataset:
    """The reader of dataset ``name`` ("gta5", "synthia" or "cityscapes") at ``root``."""
    # Imported here: the reader modules import this module's base classes.
    from diffdass.data.cityscapes import CityscapesReader
    from diffdass.data.gta5 import GTA5Reader
    from diffdass.data.synthia import SynthiaReader

    readers = {"gta5": GTA5Reader, "synthia": SynthiaReader, "cityscapes": CityscapesReader}
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in readers:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    return readers[key](root)


def read_8bit_label(path: str | Path) -> np.ndarray:
    """The raw values of an 8-bit single-channel PNG (mode "L", or "P" read as palette
    *indices*, never converted to RGB). Any other kind of image is a :class:`DataError`."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise DataError(
                    f"{path}: label must be an 8-bit single-channel (L) or palette (P) PNG, "
                    f"got mode {im.mode!r}"
                )
            arr = np.asarray(im)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: label file not found") from exc
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable label ({exc})") from exc
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise DataError(f"{path}: label must be 8-bit single-channel, got {arr.dtype} {arr.shape}")
    return arr


def image_size(path: str | Path, verify: bool = False) -> tuple[int, int]:
    """``(width, height)`` of an image from its header; ``verify`` decodes it fully."""
    try:
        with Image.open(path) as im:
            if verify:
                im.load()
            return im.size
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file not found") from exc
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a label map to ``size = (width, height)`` with nearest-neighbour sampling."""
    return np.asarray(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))


# --------------------------------------------------------------------------- links


class _Linker:
    """Places ``dst`` as a link to ``src``: symlink, else hard link, else copy."""

    def __init__(self, mode: str) -> None:
        if mode not in LINK_MODES:
            raise ValueError(f"link must be one of {list(LINK_MODES)}, got {mode!r}")
        self.order = ["symlink", "hardlink", "copy"] if mode == "auto" else [mode]
        self.counts = {"symlink": 0, "hardlink": 0, "copy": 0, "existing": 0}
        self.fallback_reasons: list[str] = []
        self._lock = threading.Lock()

    @staticmethod
    def valid(src: Path, dst: Path) -> bool:
        if not os.path.lexists(dst):
            return False
        try:
            if os.path.samefile(src, dst):
                return True
            # a copy made by an earlier run
            return not dst.is_symlink() and dst.stat().st_size == src.stat().st_size
        except OSError:  # broken link, unreadable
            return False

    def place(self, src: Path, dst: Path, overwrite: bool) -> None:
        if not overwrite and self.valid(src, dst):
            with self._lock:
                self.counts["existing"] += 1
            return
        if not src.is_file():
            raise DataError(f"{src}: image file not found")
        dst.parent.mkdir(parents=True, exist_ok=True)
        while True:
            method = self.order[0]
            tmp = dst.parent / f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                if method == "symlink":
                    real_dir = os.path.realpath(dst.parent)
                    target = os.path.join(os.path.realpath(src.parent), src.name)
                    os.symlink(os.path.relpath(target, real_dir), tmp)
                elif method == "hardlink":
                    os.link(src, tmp)
                else:
                    shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
            except OSError as exc:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                with self._lock:
                    if self.order[0] != method:  # another thread has already fallen back
                        continue
                    if len(self.order) == 1:
                        raise DataError(f"{dst}: cannot {method} to image {src} ({exc})") from exc
                    reason = f"{method} failed ({exc}); falling back to {self.order[1]}"
                    log.warning("%s: %s", dst, reason)
                    self.fallback_reasons.append(reason)
                    self.order.pop(0)
                continue
            with self._lock:
                self.counts[method] += 1
            return


# --------------------------------------------------------------------------- prepare


@dataclass
class _Result:
    stem: str
    status: str  # "written", "existing", "image_only", "bad"
    hist: np.ndarray | None = None
    error: str | None = None
    resized: str | None = None


@dataclass(frozen=True)
class _Options:
    out_split: Path
    overwrite: bool
    on_mismatch: str
    on_error: str
    verify_images: bool


def _process(reader: RawDataset, s: RawSample, opt: _Options, linker: _Linker) -> _Result:
    img_dst = opt.out_split / "images" / f"{s.stem}{s.image.suffix}"
    lbl_dst = opt.out_split / "labels" / f"{s.stem}.png"
    try:
        label_path = s.label
        if label_path is not None and s.label_optional and not label_path.exists():
            label_path = None
        if label_path is None:
            if opt.overwrite or not linker.valid(s.image, img_dst):
                image_size(s.image, opt.verify_images)
            linker.place(s.image, img_dst, opt.overwrite)
            return _Result(s.stem, "image_only")

        lbl = None
        if not opt.overwrite and lbl_dst.exists():
            try:
                lbl = read_label(lbl_dst, NUM_CLASSES, IGNORE_INDEX)
            except DataError as exc:
                log.warning("rewriting an invalid output label: %s", exc)
        status, resized = "existing", None
        if lbl is None:
            status = "written"
            if not s.image.exists():
                raise DataError(f"{s.image}: image file not found (label {label_path})")
            if not label_path.exists():
                raise DataError(f"{label_path}: label file not found (image {s.image})")
            width, height = image_size(s.image, opt.verify_images)
            lbl = reader.load_train_ids(label_path)
            if lbl.shape != (height, width):
                msg = (
                    f"{label_path}: label size {lbl.shape[1]}x{lbl.shape[0]} does not match "
                    f"image {s.image} size {width}x{height}"
                )
                if opt.on_mismatch != "resize":
                    raise DataError(
                        f"{msg}; pass on_mismatch='resize' to resize the label (nearest "
                        "neighbour) or on_error='skip' to leave the sample out"
                    )
                log.warning("%s; resizing the label (nearest neighbour)", msg)
                lbl = resize_nearest(lbl, (width, height))
                resized = msg
            save_image(lbl_dst, lbl)
        linker.place(s.image, img_dst, opt.overwrite)
        hist = np.bincount(lbl.ravel(), minlength=256).astype(np.int64)
        return _Result(s.stem, status, hist=hist, resized=resized)
    except DataError as exc:
        if opt.on_error == "raise":
            raise
        log.warning("skipping bad sample %s: %s", s.stem, exc)
        return _Result(s.stem, "bad", error=str(exc))


def _task(
    stop: threading.Event, reader: RawDataset, s: RawSample, opt: _Options, linker: _Linker
) -> _Result | None:
    if stop.is_set():
        return None
    try:
        return _process(reader, s, opt, linker)
    except BaseException:
        stop.set()
        raise


def _write_classes(out: Path) -> None:
    info = ClassInfo.create(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX)
    path = out / "classes.yaml"
    if path.is_file():
        try:
            old = ClassInfo.load(out)
            if old.names == info.names and np.array_equal(old.palette, info.palette):
                if old.ignore_index == info.ignore_index:
                    return
        except DataError:
            pass
    info.save(out)


def _split_summary(
    results: list[_Result], hist: np.ndarray, images: np.ndarray, seconds: float
) -> dict:
    count = {k: sum(r.status == k for r in results) for k in ("written", "existing", "image_only")}
    bad = [{"stem": r.stem, "error": r.error} for r in results if r.status == "bad"]
    return {
        "samples": len(results),
        "prepared": len(results) - len(bad),
        "labels_written": count["written"],
        "skipped_existing": count["existing"],
        "image_only": count["image_only"],
        "skipped_bad": len(bad),
        "bad_samples": bad,
        "resized_labels": [r.resized for r in results if r.resized],
        "class_pixels": {n: int(hist[i]) for i, n in enumerate(CITYSCAPES_CLASSES)},
        "ignore_pixels": int(hist[IGNORE_INDEX]),
        "class_images": {n: int(images[i]) for i, n in enumerate(CITYSCAPES_CLASSES)},
        "seconds": round(seconds, 3),
    }


def prepare_dataset(
    name: str,
    root: str | Path,
    out: str | Path | None = None,
    splits: list[str] | tuple[str, ...] | None = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    on_mismatch: str = "error",
    on_error: str = "raise",
    link: str = "auto",
    verify_images: bool = False,
) -> dict:
    """Convert dataset ``name`` at ``root`` to the folder format in ``out``; see the module doc.

    ``splits``: default every split the dataset has labels for (GTA5/SYNTHIA ``train``;
    Cityscapes ``train`` and ``val``). ``workers``: threads (default ``min(8, cpus)``).
    ``link``: ``"auto"`` (symlink, else hard link, else copy) or one of them alone.
    ``verify_images``: decode every image fully (default: read the header only).
    Returns the summary also written to ``OUT/prepare.json``.
    """
    if on_mismatch not in ("error", "resize"):
        raise ValueError(f"on_mismatch must be 'error' or 'resize', got {on_mismatch!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    reader = get_reader(name, root)
    root = Path(root)
    out = Path(out) if out is not None else root / "diffdass"
    splits = tuple(splits) if splits else reader.default_splits
    for split in splits:
        reader.check_split(split)
    workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))
    linker = _Linker(link)

    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    _write_classes(out)
    summary_path = out / "prepare.json"
    summary: dict = {}
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            summary = {}
        if summary.get("dataset") not in (None, reader.name):
            raise DataError(
                f"{summary_path}: {out} holds the {summary['dataset']} dataset, not {reader.name}"
            )
    summary.update(
        {
            "version": SUMMARY_VERSION,
            "dataset": reader.name,
            "root": str(root.resolve()),
            "out": str(out.resolve()),
            "classes": list(CITYSCAPES_CLASSES),
            "ignore_index": IGNORE_INDEX,
            "options": {
                "on_mismatch": on_mismatch,
                "on_error": on_error,
                "link": link,
                "verify_images": verify_images,
                "overwrite": overwrite,
            },
        }
    )
    summary.setdefault("splits", {})

    for split in splits:
        start = time.perf_counter()
        samples = reader.samples(split)
        opt = _Options(out / split, overwrite, on_mismatch, on_error, verify_images)
        (opt.out_split / "images").mkdir(parents=True, exist_ok=True)
        hist = np.zeros(256, dtype=np.int64)  # pixels per train id
        images = np.zeros(256, dtype=np.int64)  # labels holding each train id
        bar = tqdm(
            total=len(samples), desc=f"{reader.name}/{split}", unit="img", disable=not progress
        )
        with ThreadPoolExecutor(max_workers=workers) as pool:
            stop = threading.Event()  # set on the first error: the queued samples are dropped
            futures = [pool.submit(_task, stop, reader, s, opt, linker) for s in samples]
            try:
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                    for f in done:
                        r = f.result()  # re-raises the first error
                        if r is not None and r.hist is not None:
                            hist += r.hist
                            images += r.hist > 0
                            r.hist = None  # keep memory flat on 25k-frame datasets
                    bar.update(len(done))
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            finally:
                bar.close()
        results = [f.result() for f in futures]
        seconds = time.perf_counter() - start
        summary["splits"][split] = _split_summary(results, hist, images, seconds)
        info = summary["splits"][split]
        log.info(
            "%s/%s: %d samples, %d labels written, %d existing, %d image-only, %d bad",
            reader.name,
            split,
            info["samples"],
            info["labels_written"],
            info["skipped_existing"],
            info["image_only"],
            info["skipped_bad"],
        )
        _finish(summary, linker, summary_path)

    return summary


def _finish(summary: dict, linker: _Linker, path: Path) -> None:
    """Record how the images were linked and write ``prepare.json`` (after every split)."""
    used = [m for m in ("symlink", "hardlink", "copy") if linker.counts[m]]
    summary["image_links"] = {
        "mode": "+".join(used) if used else "existing",
        **linker.counts,
        "fallbacks": linker.fallback_reasons,
    }
    write_json(path, summary)
