"""Up-front check of a folder-dataset split, before any hour of training is spent.

:func:`scan_split` looks at every file a stage will read -- in parallel threads -- and
finds what would otherwise fail at some iteration deep into a run:

- a split that cannot be listed (no ``images/`` folder, no images, two images with one stem),
  an unreadable ``classes.yaml``;
- an image with no label (where labels are required);
- an unreadable or truncated image (PNG: the header and every chunk's checksum; JPEG and
  others: decoded at reduced size);
- an unreadable label, a label that is not single-channel, a label whose size differs from
  its image's, a label id outside the class set (other than the ignore index).

Every problem names the file and the cause. ``on_error="raise"`` raises one
:class:`~diffdass.data.folder.DataError` listing them; ``on_error="skip"`` leaves the bad
samples out (logged, and listed in :attr:`SplitScan.skipped`, which a stage's metrics
report as ``skipped_samples``).

Results are cached per file (path, size, modification time) in ``ROOT/.diffdass_scan.json``
when the dataset root is writable (and in memory for the process), so a re-run only looks
at files that changed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from diffdass.data.folder import ClassInfo, DataError, FolderDataset, Sample, list_samples

log = logging.getLogger(__name__)

CACHE_NAME = ".diffdass_scan.json"
CACHE_VERSION = 1
LABEL_MODES = ("L", "P", "I", "I;16")

_memory: dict[str, dict] = {}  # dataset root -> {relative path: entry}
_lock = threading.Lock()


@dataclass
class SplitScan:
    """The checked samples of one split; :meth:`dataset` builds the stage's dataset."""

    root: Path
    split: str
    labels: str
    on_error: str
    classes: ClassInfo
    samples: list[Sample]
    bad: list[tuple[str, str]] = field(default_factory=list)  # (image path, cause)
    files: int = 0
    probed: int = 0  # files read now (the others came from the cache)
    seconds: float = 0.0
    _logged: bool = field(default=False, repr=False)

    @property
    def skipped(self) -> list[str]:
        return [p for p, _ in self.bad]

    def dataset(self, transform=None, seed: int = 0, labels: str | None = None) -> FolderDataset:
        """A :class:`FolderDataset` of the good samples (the skipped ones already noted)."""
        ds = FolderDataset(
            self.root,
            self.split,
            labels or self.labels,
            transform,
            self.on_error,
            seed=seed,
            classes=self.classes,
            samples=self.samples,
        )
        ds.note_skipped(self.skipped)
        if not self._logged:  # once the stage's run.log is open
            for _, cause in self.bad:
                log.warning("skipping bad sample: %s", cause)
            self._logged = True
        return ds


def _probe_image(path: Path) -> dict:
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.format == "PNG":
                im.verify()  # header, chunk checksums, truncation: no decoding
            else:
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))  # JPEG: decode at 1/8 size
                im.load()
        return {"w": w, "h": h, "error": None}
    except Exception as exc:
        return {"w": None, "h": None, "error": f"unreadable image ({exc or type(exc).__name__})"}


def _probe_label(path: Path) -> dict:
    try:
        with Image.open(path) as im:
            if im.mode not in LABEL_MODES:
                return {"error": f"label must be a single-channel PNG, got mode {im.mode}"}
            arr = np.array(im)
    except Exception as exc:
        return {"error": f"unreadable label ({exc or type(exc).__name__})"}
    if arr.ndim != 2:
        return {"error": f"label must be single-channel, got shape {arr.shape}"}
    return {"w": int(arr.shape[1]), "h": int(arr.shape[0]), "ids": np.unique(arr).tolist()}


def _load_cache(root: Path) -> dict:
    key = str(root)
    with _lock:
        if key in _memory:
            return _memory[key]
    entries: dict = {}
    try:
        doc = json.loads((root / CACHE_NAME).read_text())
        if doc.get("version") == CACHE_VERSION and isinstance(doc.get("files"), dict):
            entries = doc["files"]
    except (OSError, ValueError, AttributeError):
        pass
    with _lock:
        return _memory.setdefault(key, entries)


def _save_cache(root: Path, entries: dict) -> None:
    """Best effort: a read-only dataset root simply is not cached on disk."""
    from diffdass.utils.io import atomic_write_text

    if not os.access(root, os.W_OK):
        return
    with _lock:
        doc = {"version": CACHE_VERSION, "files": dict(entries)}
    try:
        atomic_write_text(root / CACHE_NAME, json.dumps(doc, separators=(",", ":")))
    except OSError:
        pass


def scan_split(
    root: str | Path,
    split: str,
    labels: str = "required",
    on_error: str = "raise",
    workers: int | None = None,
    cache: bool = True,
) -> SplitScan:
    """Check every file of ``root/split`` a stage will read (see the module docstring).

    ``labels``: ``"required"`` (every image needs a valid label), ``"optional"`` (labels that
    exist are checked) or ``"none"`` (labels are not read).

    Raises:
        DataError: the split cannot be listed, or (``on_error="raise"``) any bad sample.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    t0 = time.perf_counter()
    root = Path(root).absolute()
    classes = ClassInfo.load(root)
    listed = list_samples(root, split, "optional" if labels == "required" else labels)
    bad: dict[str, str] = {}  # image path -> cause
    if labels == "required":
        for s in listed:
            if s.label is None:
                expected = root / split / "labels" / f"{s.stem}.png"
                bad[str(s.image)] = f"{s.image}: has no label (expected {expected})"
        lbl_dir = root / split / "labels"
        if lbl_dir.is_dir():
            stems = {s.stem for s in listed}
            orphans = sorted(p.name for p in lbl_dir.glob("*.png") if p.stem not in stems)
            if orphans:
                msg = f"{lbl_dir}: labels with no image: {', '.join(orphans[:5])}"
                if on_error == "raise":
                    raise DataError(msg)
                log.warning("%s (ignored)", msg)

    files = [(s.image, "image") for s in listed]
    files += [(s.label, "label") for s in listed if s.label is not None]
    entries = _load_cache(root) if cache else {}
    results: dict[Path, dict] = {}
    todo = []
    for path, kind in files:
        try:
            st = path.stat()
        except OSError as exc:
            results[path] = {"error": f"cannot be read ({exc.strerror or exc})"}
            continue
        rel = str(path.relative_to(root))
        e = entries.get(rel)
        if e and e.get("size") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns:
            results[path] = e
        else:
            todo.append((path, kind, rel, st))
    if todo:
        n = workers or min(8, (os.cpu_count() or 2) * 2)
        probe = {"image": _probe_image, "label": _probe_label}
        with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
            found = list(pool.map(lambda t: probe[t[1]](t[0]), todo))
        for (path, kind, rel, st), res in zip(todo, found, strict=True):
            res = res | {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "kind": kind}
            results[path] = res
            with _lock:
                entries[rel] = res
        if cache:
            _save_cache(root, entries)

    nc, ign = classes.num_classes, classes.ignore_index
    good = []
    for s in listed:
        if str(s.image) in bad:
            continue
        img = results[s.image]
        if img.get("error"):
            bad[str(s.image)] = f"{s.image}: {img['error']}"
            continue
        if s.label is not None and labels != "none":
            lbl = results[s.label]
            if lbl.get("error"):
                bad[str(s.image)] = f"{s.label}: {lbl['error']}"
                continue
            if (lbl["w"], lbl["h"]) != (img["w"], img["h"]):
                bad[str(s.image)] = (
                    f"{s.label}: label size {lbl['w']}x{lbl['h']} does not match image "
                    f"{s.image} size {img['w']}x{img['h']}"
                )
                continue
            wrong = [i for i in lbl["ids"] if i >= nc and i != ign]
            if wrong:
                bad[str(s.image)] = (
                    f"{s.label}: label ids {wrong[:10]} are outside the class set "
                    f"(0..{nc - 1}, ignore {ign}); did you forget `diffdass prepare`?"
                )
                continue
        good.append(s)

    where = root / split
    causes = list(bad.values())
    if causes and on_error == "raise":
        more = f"; ... and {len(causes) - 5} more" if len(causes) > 5 else ""
        head = "" if len(causes) == 1 else f"{where}: {len(causes)} bad samples: "
        raise DataError(
            f"{head}{'; '.join(causes[:5])}{more} (found by the up-front check, before any "
            "training; fix the files, or set on_error: skip to leave them out)"
        )
    if not good:
        raise DataError(f"{where}: every sample is unreadable ({len(causes)} bad)")
    return SplitScan(
        root=root,
        split=split,
        labels=labels,
        on_error=on_error,
        classes=classes,
        samples=good,
        bad=list(bad.items()),
        files=len(files),
        probed=len(todo),
        seconds=time.perf_counter() - t0,
    )
