"""The built-in benchmark generator: determinism, folder format, class coverage, domain gap."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffdass.data import benchmark as bm
from diffdass.data.folder import ClassInfo, FolderDataset
from diffdass.data.labels import CITYSCAPES_CLASSES, IGNORE_INDEX

TINY = dict(seed=0, height=32, width=64, n_source=8, n_target_train=8, n_target_val=8)


def _tiny(root: Path, **over) -> dict:
    return bm.generate_benchmark(root, **{**TINY, **over}, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "benchmark.json"
    }


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "root"
    _tiny(root)
    return root


def test_textures_load_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access during texture loading")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    bm.load_texture.cache_clear()
    for name in bm.TEXTURE_SOURCES:
        img = bm.load_texture(name)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.float32, name
        assert min(img.shape[:2]) >= 128 and 0.0 <= img.min() and img.max() <= 1.0, name
        assert img.std() > 0.02, name


def test_config_validation():
    with pytest.raises(ValueError, match="height"):
        bm.BenchmarkConfig(height=8)
    with pytest.raises(ValueError, match="n_source"):
        bm.BenchmarkConfig(n_source=0)
    cfg = bm.BenchmarkConfig(seed=3, height=256, width=512)
    assert bm.BenchmarkConfig.from_dict(cfg.to_dict()) == cfg


def test_deterministic_and_seed_dependent(tiny_root, tmp_path):
    again = tmp_path / "again"
    s = _tiny(again, workers=2)  # another process pool must give the same bytes
    a, b = _files(tiny_root), _files(again)
    assert a.keys() == b.keys() and a == b
    assert (
        s["content_hash"] == json.loads((tiny_root / "benchmark.json").read_text())["content_hash"]
    )
    assert bm.content_hash(again) == s["content_hash"]
    # the data scan's cache (written into dataset roots by the stages) is not content
    from diffdass.data.scan import scan_split

    scan_split(again / "source", "train", labels="required")
    assert (again / "source" / ".diffdass_scan.json").is_file()
    assert bm.content_hash(again) == s["content_hash"]
    other = _tiny(tmp_path / "other", seed=1)
    c = _files(tmp_path / "other")
    assert other["content_hash"] != s["content_hash"]
    assert sum(a[k] != c[k] for k in a if "images" in k) == sum(1 for k in a if "images" in k)
    # any single image can be regenerated on its own
    img, lbl = bm.make_sample("target/val", 5, seed=0, height=32, width=64)
    on_disk = np.asarray(Image.open(tiny_root / "target/val/images/000005.png"))
    assert np.array_equal(img, on_disk)
    assert np.array_equal(lbl, np.asarray(Image.open(tiny_root / "target/val/labels/000005.png")))


def test_folder_format(tiny_root):
    for dom in ("source", "target"):
        info = ClassInfo.load(tiny_root / dom)
        assert info.names == CITYSCAPES_CLASSES and info.ignore_index == IGNORE_INDEX
    assert not (tiny_root / "target/train/labels").exists()  # labels withheld
    splits = {
        ("source", "train", "required"): 8,
        ("target", "train", "optional"): 8,
        ("target", "train_oracle", "required"): 8,
        ("target", "val", "required"): 8,
    }
    for (dom, split, labels), n in splits.items():
        ds = FolderDataset(tiny_root / dom, split, labels=labels)
        assert len(ds) == n
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (3, 32, 64)
            lbl = item["label"].numpy()
            assert lbl.shape == (32, 64)
            assert np.isin(lbl, [*range(19), IGNORE_INDEX]).all()
            if split == "train" and dom == "target":
                assert (lbl == IGNORE_INDEX).all()
            else:
                assert lbl.max() <= 18
    # the oracle split holds exactly the target/train images
    for p in sorted((tiny_root / "target/train/images").glob("*.png")):
        assert p.read_bytes() == (tiny_root / "target/train_oracle/images" / p.name).read_bytes()
    meta = json.loads((tiny_root / "benchmark.json").read_text())
    assert meta["config"] == bm.BenchmarkConfig(**TINY).to_dict()
    assert meta["version"] == bm.GENERATOR_VERSION
    assert "never" in meta["note"]


def test_all_classes_occur():
    for domain in (0, 1):
        seen = np.zeros(19, bool)
        for i in range(60):
            lay = bm.sample_layout(np.random.default_rng([0, domain, i, 0]), 64, 128)
            seen |= np.bincount(lay.label.ravel(), minlength=19)[:19] > 0
        missing = [CITYSCAPES_CLASSES[c] for c in np.flatnonzero(~seen)]
        assert not missing, f"domain {domain}: classes never drawn: {missing}"


def test_same_scene_at_any_resolution():
    for i in range(3):
        small = bm.sample_layout(np.random.default_rng([0, 0, i, 0]), 32, 64).label
        big = bm.sample_layout(np.random.default_rng([0, 0, i, 0]), 128, 256).label
        assert (small == big[1::4, 1::4]).mean() > 0.85


def test_small_classes_are_common():
    small = (5, 6, 7, 11, 12, 17, 18)  # pole, light, sign, person, rider, motorcycle, bicycle
    present = np.zeros(19)
    n = 40
    for i in range(n):
        lay = bm.sample_layout(np.random.default_rng([0, 0, i, 0]), 64, 128)
        present += np.bincount(lay.label.ravel(), minlength=19)[:19] > 0
    frac = present / n
    assert (frac[[5, 6, 7, 11]] >= 0.5).all(), frac
    assert (frac[list(small)] >= 0.2).all(), frac


def _class_colours(img: np.ndarray, lbl: np.ndarray) -> np.ndarray:
    out = np.full((19, 3), np.nan)
    for c in np.unique(lbl):
        out[c] = img[lbl == c].mean(0)
    return out


def _texture(img: np.ndarray, ids: np.ndarray) -> float:
    """Mean absolute difference between horizontal neighbours on the same surface."""
    g = img.astype(np.float32).mean(2)
    same = ids[:, 1:] == ids[:, :-1]
    return float(np.abs(np.diff(g, axis=1))[same].mean())


def test_domains_share_layout_but_differ_in_appearance():
    n, H, W = 30, 64, 128
    share = {0: np.zeros(19), 1: np.zeros(19)}
    col_dist, tex_src, tex_tgt = [], [], []
    for i in range(n):
        for domain in (0, 1):
            lay = bm.sample_layout(np.random.default_rng([0, domain, i, 0]), H, W)
            share[domain] += np.bincount(lay.label.ravel(), minlength=19)[:19]
        # the same label map rendered in both styles
        lay = bm.sample_layout(np.random.default_rng([0, 0, i, 0]), H, W)
        src = bm.render_source(lay, np.random.default_rng([0, 0, i, 1]))
        tgt = bm.render_target(lay, np.random.default_rng([0, 1, i, 1]))
        assert src.shape == tgt.shape == (H, W, 3) and src.dtype == tgt.dtype == np.uint8
        d = np.linalg.norm(_class_colours(src, lay.label) - _class_colours(tgt, lay.label), axis=1)
        col_dist.append(np.nanmean(d))
        tex_src.append(_texture(src, lay.ids))
        tex_tgt.append(_texture(tgt, lay.ids))
    p0, p1 = share[0] / share[0].sum(), share[1] / share[1].sum()
    assert 0.5 * np.abs(p0 - p1).sum() < 0.12  # same label distribution (30 images)
    assert np.mean(col_dist) > 45  # per-class colours move between the domains
    # both are textured; the target also has sensor noise (between-neighbour differences)
    assert np.mean(tex_src) > 1.0
    assert np.mean(tex_tgt) > 2 * np.mean(tex_src)


def test_both_domains_render_the_same_label_map():
    """A layout seed fixes the label map; rendering (either style) never changes it."""
    for i in range(4):
        lay = bm.sample_layout(np.random.default_rng([0, 0, i, 0]), 64, 128)
        again = bm.sample_layout(np.random.default_rng([0, 0, i, 0]), 64, 128)
        label, ids = lay.label.copy(), lay.ids.copy()
        assert np.array_equal(label, again.label) and np.array_equal(ids, again.ids)
        src = bm.render_source(lay, np.random.default_rng([0, 0, i, 1]))
        tgt = bm.render_target(lay, np.random.default_rng([0, 1, i, 1]))
        assert src.shape == tgt.shape == (64, 128, 3)
        assert np.array_equal(lay.label, label) and np.array_equal(lay.ids, ids)
    # make_sample: the label is the layout's, whatever the style of the split
    for split in bm.SPLITS:
        domain = bm.SPLITS[split][0]
        _, lbl = bm.make_sample(split, 3, seed=0, height=32, width=64)
        lay = bm.sample_layout(np.random.default_rng([0, domain, 3, 0]), 32, 64)
        assert np.array_equal(lbl, lay.label)


def test_source_has_within_surface_variation():
    """The source is textured and shaded (a game look), not flat colours per class.

    Fails if the source renderer goes back to flat per-class colours: then a segmenter can
    learn a palette lookup instead of shapes and textures.
    """
    H, W = 64, 128
    road_std, inst_std, car_cols = [], [], []
    for i in range(12):
        lay = bm.sample_layout(np.random.default_rng([0, 0, i, 0]), H, W)
        img = bm.render_source(lay, np.random.default_rng([0, 0, i, 1])).astype(np.float32)
        grey = img.mean(2)
        # the near road surface (no markings): asphalt grain, patches, shadows
        road = (lay.label == 0) & (lay.part == 0)
        road[: int(lay.cam.cy) + 8] = False
        if road.sum() >= 200:
            road_std.append(grey[road].std())
        # every large surface (one instance and part) varies within itself
        for k in np.unique(lay.ids):
            m = lay.ids == k
            if m.sum() >= 60 and lay.label[m][0] != 10:  # not the sky
                inst_std.append(grey[m].std())
        for k in np.flatnonzero(lay.inst_cls == 13):  # cars
            m = (lay.instance == k) & (lay.part == 0)
            if m.sum() >= 10:
                car_cols.append(img[m].mean(0))
    assert len(road_std) >= 6 and np.median(road_std) > 4.0, road_std
    assert np.median(inst_std) > 3.0, np.median(inst_std)
    # colour is not a class key: car bodies come in many colours
    assert len(car_cols) >= 8 and np.std(np.asarray(car_cols), axis=0).mean() > 30


def test_rerun_is_noop_and_changes_regenerate(tmp_path):
    root = tmp_path / "b"
    first = _tiny(root)
    assert first["generated"]
    probe = root / "source/train/images/000000.png"
    stamps = (probe.stat().st_mtime_ns, (root / "benchmark.json").stat().st_mtime_ns)
    second = _tiny(root)
    assert not second["generated"] and second["content_hash"] == first["content_hash"]
    assert (probe.stat().st_mtime_ns, (root / "benchmark.json").stat().st_mtime_ns) == stamps

    third = _tiny(root, n_target_val=3)  # a different config regenerates
    assert third["generated"] and third["content_hash"] != first["content_hash"]
    assert len(list((root / "target/val/images").glob("*.png"))) == 3

    (root / "source/train/labels/000002.png").unlink()  # a damaged root regenerates
    fourth = _tiny(root, n_target_val=3)
    assert fourth["generated"] and fourth["content_hash"] == third["content_hash"]
    assert (root / "source/train/labels/000002.png").is_file()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "b"]
    assert not leftovers  # no temporary or old directories, no lock file left behind

    foreign = tmp_path / "mine"
    (foreign / "notes").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a generated benchmark"):
        _tiny(foreign)
    assert (foreign / "notes").is_dir()


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(bm.writer, "make_sample", boom)  # what the writer calls
    with pytest.raises(RuntimeError, match="boom"):
        _tiny(tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_preview_figure(tiny_root, tmp_path):
    out = bm.preview_figure(tiny_root, tmp_path / "img" / "preview.png", n=3)
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.width > 3 * 256 and im.height > 4 * 128


def test_tiny_benchmark_pixels_are_pinned(tiny_root):
    """The scene grammar's output, pinned: any change to the generator (a refactor included)
    that moves one pixel or label fails here (bump GENERATOR_VERSION when it is meant)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(tiny_root.rglob("*.png")):
        h.update(p.relative_to(tiny_root).as_posix().encode())
        h.update(np.ascontiguousarray(np.asarray(Image.open(p))).tobytes())
    assert h.hexdigest() == "c1506cde99c0627655b32c0ba9f5607aff8616a2035deeef9eba8c46ae3422ef"


def test_the_lock_serialises_callers_and_leaves_no_file(tmp_path):
    """Processes that wait on the lock while its holder removes the file still take turns."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    log = tmp_path / "log.txt"
    procs = [ctx.Process(target=_hold_lock, args=(str(tmp_path / "root"), str(log)))
             for _ in range(4)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    events = log.read_text().split()
    assert len(events) == 8 and events == ["in", "out"] * 4  # never two holders at once
    assert list(tmp_path.iterdir()) == [log]


def _hold_lock(root: str, log: str) -> None:
    import time

    from diffdass.data.benchmark.writer import _lock

    with _lock(Path(root)):
        with open(log, "a") as fh:
            fh.write("in\n")
        time.sleep(0.05)
        with open(log, "a") as fh:
            fh.write("out\n")
