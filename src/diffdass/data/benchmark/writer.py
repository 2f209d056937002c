"""Writing the benchmark: one image, the whole root, its hash, a preview, the CLI.

:func:`make_sample` regenerates any single image: image ``index`` of stream ``domain_id``
(0 source/train, 1 target/train, 2 target/val) draws its layout from
``np.random.default_rng([seed, domain_id, index, 0])`` and its appearance from
``[seed, domain_id, index, 1]``. :func:`generate_benchmark` writes every image (over up to
two *spawned* worker processes; the output does not depend on the worker count) into a
temporary sibling directory and renames it into place, so the root is never half-written;
``benchmark.json`` (config, :data:`GENERATOR_VERSION`, content hash, class statistics) is
written last, and an existing complete root with the same config and version is left
untouched. A file lock serialises concurrent calls on one root. :func:`preview_figure`
draws a grid of both domains; :func:`_main` is ``python -m diffdass.data.benchmark``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from diffdass.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX, colorize

from .common import NUM_CLASSES
from .layout import sample_layout
from .source import render_source
from .target import render_target

# Bump whenever the output changes (an existing root of another version is regenerated).
# 3: game-engine source renderer (procedural textures, sun shading, hard shadows)
# 2: far cars/people drawn without sub-pixel parts
#: Version of the generated output (stored in benchmark.json).
GENERATOR_VERSION = 3

#: Split name -> (domain id of the seed stream, directory, config field with its size).
SPLITS: dict[str, tuple[int, str, str]] = {
    "source/train": (0, "source/train", "n_source"),
    "target/train": (1, "target/train", "n_target_train"),
    "target/val": (2, "target/val", "n_target_val"),
}


@dataclass
class BenchmarkConfig:
    """Size and seed of a generated benchmark (the defaults fit a 2-core CPU in < 30 s).

    Use ``height=256, width=512`` (and more images) for GPU-scale experiments.
    """

    seed: int = 0
    height: int = 64
    width: int = 128
    n_source: int = 400
    n_target_train: int = 400
    n_target_val: int = 100

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError(f"height and width must be >= 16, got {self.height}x{self.width}")
        for name in ("n_source", "n_target_train", "n_target_val"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BenchmarkConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def count(self, split: str) -> int:
        return int(getattr(self, SPLITS[split][2]))


def make_sample(
    split: str, index: int, seed: int = 0, height: int = 64, width: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """(image RGB uint8, label uint8) of one benchmark image, regenerated on its own."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)}")
    domain = SPLITS[split][0]
    layout = sample_layout(np.random.default_rng([seed, domain, index, 0]), height, width)
    app = np.random.default_rng([seed, domain, index, 1])
    image = render_source(layout, app) if domain == 0 else render_target(layout, app)
    return image, layout.label


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _stem(index: int) -> str:
    return f"{index:06d}"


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _job(args) -> tuple[str, int, list[tuple[str, str]], np.ndarray]:
    """Generate and write one image (runs in worker processes); returns hashes and stats."""
    root, split, index, seed, height, width = args
    root = Path(root)
    image, label = make_sample(split, index, seed, height, width)
    img_b, lbl_b = _png_bytes(image), _png_bytes(label)
    stem = _stem(index)
    files = []
    if split == "source/train":
        dirs = [("source/train", True)]
    elif split == "target/train":
        dirs = [("target/train", False), ("target/train_oracle", True)]
    else:
        dirs = [("target/val", True)]
    for d, with_label in dirs:
        rel = f"{d}/images/{stem}.png"
        files.append((rel, _write(root / rel, img_b)))
        if with_label:
            rel = f"{d}/labels/{stem}.png"
            files.append((rel, _write(root / rel, lbl_b)))
    counts = np.bincount(label.ravel(), minlength=256)[:NUM_CLASSES].astype(np.int64)
    return split, index, files, counts


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _expected_files(cfg: BenchmarkConfig) -> dict[str, int]:
    n_s, n_t, n_v = cfg.n_source, cfg.n_target_train, cfg.n_target_val
    return {
        "source/train/images": n_s,
        "source/train/labels": n_s,
        "target/train/images": n_t,
        "target/train_oracle/images": n_t,
        "target/train_oracle/labels": n_t,
        "target/val/images": n_v,
        "target/val/labels": n_v,
    }


def _hash_listing(entries: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for rel, digest in sorted(entries):
        h.update(f"{rel}\t{digest}\n".encode())
    return h.hexdigest()


def content_hash(root: str | Path) -> str:
    """Recompute the content hash of a generated root: every file but ``benchmark.json`` and
    hidden files (``.diffdass_scan.json``, the data scan's cache, is written into dataset
    roots by the stages that read them)."""
    root = Path(root)
    entries = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "benchmark.json" and not p.name.startswith("."):
            entries.append(
                (p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
            )
    return _hash_listing(entries)


def _read_meta(root: Path) -> dict | None:
    try:
        return json.loads((root / "benchmark.json").read_text())
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, cfg: BenchmarkConfig) -> dict | None:
    meta = _read_meta(root)
    if not meta or meta.get("version") != GENERATOR_VERSION or meta.get("config") != cfg.to_dict():
        return None
    for rel, n in _expected_files(cfg).items():
        d = root / rel
        if not d.is_dir() or sum(1 for p in d.iterdir() if p.suffix == ".png") != n:
            return None
    if (root / "target/train/labels").exists():
        return None
    for dom in ("source", "target"):
        if not (root / dom / "classes.yaml").is_file():
            return None
    return meta


def _safe_to_replace(root: Path) -> bool:
    if not root.is_dir():
        return not root.exists()
    entries = {p.name for p in root.iterdir()}
    return not entries or "benchmark.json" in entries or entries <= {"source", "target"}


def _refuse_foreign(root: Path) -> None:
    if not _safe_to_replace(root):
        raise FileExistsError(
            f"{root}: exists and is not a generated benchmark (no benchmark.json); "
            "refusing to replace it -- pick another directory or remove it"
        )


@contextlib.contextmanager
def _lock(root: Path):
    """One generator per root at a time: an exclusive ``flock`` on ``.<root>.lock`` beside the
    root, which the holder removes when it is done (nothing is left behind). A process that
    waited on a file its holder removed locks the current file instead, so two processes
    never hold the lock at once."""
    import fcntl

    root.parent.mkdir(parents=True, exist_ok=True)
    path = root.parent / f".{root.name}.lock"
    while True:
        fh = open(path, "a")  # closed below, or after the lock is released
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                current = False
        except BaseException:
            fh.close()
            raise
        if current:
            break
        fh.close()  # the file was removed while this process waited: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _class_stats(counts: np.ndarray, present: np.ndarray, n_images: int) -> dict:
    total = max(int(counts.sum()), 1)
    return {
        name: {
            "image_fraction": round(float(present[c]) / max(n_images, 1), 4),
            "pixel_share": round(float(counts[c]) / total, 5),
        }
        for c, name in enumerate(CITYSCAPES_CLASSES)
    }


def generate_benchmark(
    out_root: str | Path,
    seed: int = 0,
    height: int = 64,
    width: int = 128,
    n_source: int = 400,
    n_target_train: int = 400,
    n_target_val: int = 100,
    progress: bool = True,
    *,
    config: BenchmarkConfig | None = None,
    workers: int | None = None,
) -> dict:
    """Generate the benchmark at ``out_root`` (see the module docstring) and return a summary.

    ``config`` overrides the individual size arguments. A complete root with the same config
    and generator version is left untouched (``summary["generated"]`` is False). Anything
    else is regenerated into a temporary sibling and renamed into place; a non-empty
    directory that is not a benchmark is never replaced (``FileExistsError``). ``workers``
    (default: up to 2 processes; 1 for small jobs) does not change the output; worker
    processes are *spawned*, so a calling script needs the usual ``if __name__ ==
    "__main__":`` guard (console entry points and pytest have one).
    """
    cfg = config or BenchmarkConfig(seed, height, width, n_source, n_target_train, n_target_val)
    root = Path(out_root).absolute()
    t0 = time.perf_counter()
    _refuse_foreign(root)  # before the lock file: a refused call leaves nothing behind
    with _lock(root):
        meta = _is_complete(root, cfg)
        if meta is not None:
            return {**meta, "root": str(root), "generated": False, "seconds": 0.0}
        _refuse_foreign(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the root should not be
        try:
            meta = _generate_into(tmp, cfg, progress, workers)
            meta["seconds"] = round(time.perf_counter() - t0, 2)
            from diffdass.utils.io import write_json

            write_json(tmp / "benchmark.json", meta)
            old = None
            if root.exists():
                old = root.parent / f".{root.name}.old-{os.getpid()}-{time.time_ns()}"
                os.rename(root, old)
            os.rename(tmp, root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {**meta, "root": str(root), "generated": True}


def _generate_into(tmp: Path, cfg: BenchmarkConfig, progress: bool, workers: int | None) -> dict:
    from tqdm.auto import tqdm

    from diffdass.data.folder import ClassInfo

    info = ClassInfo.create(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX)
    files: list[tuple[str, str]] = []
    for dom in ("source", "target"):
        info.save(tmp / dom)
        rel = f"{dom}/classes.yaml"
        files.append((rel, hashlib.sha256((tmp / rel).read_bytes()).hexdigest()))
    for rel in _expected_files(cfg):
        (tmp / rel).mkdir(parents=True, exist_ok=True)
    jobs = [
        (str(tmp), split, i, cfg.seed, cfg.height, cfg.width)
        for split in SPLITS
        for i in range(cfg.count(split))
    ]
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(jobs) >= 64 else 1
    counts = {s: np.zeros(NUM_CLASSES, np.int64) for s in SPLITS}
    present = {s: np.zeros(NUM_CLASSES, np.int64) for s in SPLITS}
    bar = tqdm(total=len(jobs), desc="benchmark", unit="img", disable=not progress)

    def collect(res):
        split, _, fl, cnt = res
        files.extend(fl)
        counts[split] += cnt
        present[split] += cnt > 0
        bar.update(1)

    try:
        if workers <= 1:
            for job in jobs:
                collect(_job(job))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: a forked child can deadlock in OpenCV's (or torch's) thread
            # pool inherited from the parent
            with ProcessPoolExecutor(
                workers, mp.get_context("spawn"), initializer=_worker_init
            ) as ex:
                for res in ex.map(
                    _job, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers)))
                ):
                    collect(res)
    finally:
        bar.close()
    stats = {s: _class_stats(counts[s], present[s], cfg.count(s)) for s in SPLITS}
    return {
        "generator": "diffdass.data.benchmark",
        "version": GENERATOR_VERSION,
        "config": cfg.to_dict(),
        "content_hash": _hash_listing(files),
        "n_files": len(files),
        "splits": {
            "source/train": cfg.n_source,
            "target/train": cfg.n_target_train,
            "target/train_oracle": cfg.n_target_train,
            "target/val": cfg.n_target_val,
        },
        "note": (
            "target/train_oracle holds the target/train images WITH labels, only for the "
            "target-oracle upper bound; adaptation methods must never read it"
        ),
        "class_stats": stats,
    }


def preview_figure(root: str | Path, out_png: str | Path, n: int = 4) -> Path:
    """A PNG grid of both domains: rows source image, source label, target image, target label.

    Target rows use ``target/val`` (the labeled target split). Small images are enlarged
    (nearest neighbour) so that each tile is at least 256 pixels wide; a legend of the 19
    classes is appended.
    """
    from PIL import ImageDraw, ImageFont

    from diffdass.utils.io import save_image

    root = Path(root)
    pal = CITYSCAPES_PALETTE

    def load(split, kind, i):
        p = root / split / kind / f"{_stem(i)}.png"
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB") if kind == "images" else im)

    src_n = len(list((root / "source/train/images").glob("*.png")))
    tgt_n = len(list((root / "target/val/images").glob("*.png")))
    n = max(1, min(n, src_n, tgt_n))
    rows = [
        ("source image", [load("source/train", "images", i) for i in range(n)]),
        ("source label", [colorize(load("source/train", "labels", i), pal) for i in range(n)]),
        ("target image", [load("target/val", "images", i) for i in range(n)]),
        ("target label", [colorize(load("target/val", "labels", i), pal) for i in range(n)]),
    ]
    h, w = rows[0][1][0].shape[:2]
    k = max(1, int(math.ceil(256 / w)))
    th, tw = h * k, w * k
    pad, left = 4, 110
    font = ImageFont.load_default()
    legend_rows = int(math.ceil(NUM_CLASSES / 5))
    legend_h = legend_rows * 18 + 8
    W = left + n * (tw + pad) + pad
    H = len(rows) * (th + pad) + pad + legend_h
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (title, tiles) in enumerate(rows):
        y = pad + r * (th + pad)
        draw.text((6, y + th // 2 - 6), title, fill=(0, 0, 0), font=font)
        for c, tile in enumerate(tiles):
            big = np.repeat(np.repeat(tile, k, axis=0), k, axis=1)
            canvas.paste(Image.fromarray(big), (left + pad + c * (tw + pad), y))
    y0 = len(rows) * (th + pad) + pad + 4
    col_w = (W - 12) // 5
    for c, name in enumerate(CITYSCAPES_CLASSES):
        x = 6 + (c % 5) * col_w
        y = y0 + (c // 5) * 18
        draw.rectangle([x, y, x + 14, y + 12], fill=tuple(pal[c]))
        draw.text((x + 20, y), f"{c} {name}", fill=(0, 0, 0), font=font)
    return save_image(out_png, np.asarray(canvas))


def _main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Generate the built-in diffdass benchmark.")
    ap.add_argument("root")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--n-source", type=int, default=400)
    ap.add_argument("--n-target-train", type=int, default=400)
    ap.add_argument("--n-target-val", type=int, default=100)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--preview", default=None, help="also write a preview PNG here")
    a = ap.parse_args(argv)
    cfg = BenchmarkConfig(a.seed, a.height, a.width, a.n_source, a.n_target_train, a.n_target_val)
    summary = generate_benchmark(a.root, config=cfg, workers=a.workers)
    print(json.dumps({k: summary[k] for k in ("root", "generated", "seconds", "content_hash")}))
    if a.preview:
        preview_figure(a.root, a.preview)
