"""File reading shared by the natural-image, few-shot and OOD task families (private: not a family).

Every reader validates what it opens and turns a missing, truncated or wrong-layout file into a
one-line UsageError naming the file and what was expected. Images come back as uint8 [N, C, H, W]
numpy arrays (the stored form of ImageTask); resizing to a family's size happens here, at load
time, so every upstream policy sees the same stored images and the trainer never resizes.
"""
from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from bench.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

# where the shared (offline) copies live below a data root: <root>/<sub>/<file> or <root>/<file>
SHARED_SUBDIRS = ("images", "digits", "")
CORRUPT = (zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError, IndexError)


def need_root(data_root: Path | None, task: str) -> Path:
    if data_root is None:
        raise UsageError(f"task {task} needs a data root (--data-root DIR or $SAFLEX_DATA)")
    return Path(data_root)


def first_existing(candidates: Iterable[Path]) -> Path | None:
    for p in candidates:
        if p.exists():
            return p
    return None


def shared_candidates(data_root: Path, relpath: str) -> list[Path]:
    """`<root>/images/<relpath>`, `<root>/digits/<relpath>`, `<root>/<relpath>` (the order looked in)."""
    return [data_root / sub / relpath if sub else data_root / relpath for sub in SHARED_SUBDIRS]


def describe_error(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else "unreadable"
    return f"{type(e).__name__}: {text}"


# ---- npz with JPEG bytes (shared/data/images/*.npz) -------------------------------------------------
def open_npz(path: Path, required: Sequence[str]):
    """np.load with the keys checked; UsageError on an unreadable file or a wrong layout."""
    import numpy as np

    try:
        d = np.load(path, allow_pickle=False)
        missing = [k for k in required if k not in d.files]
    except CORRUPT as e:
        raise UsageError(f"corrupt data file {path} ({describe_error(e)})") from None
    if missing:
        raise UsageError(f"wrong layout in {path}: missing key(s) {', '.join(missing)} (expected {', '.join(required)})")
    return d


def read_array(d, key: str, path: Path):
    try:
        return d[key]
    except CORRUPT as e:  # a truncated member surfaces only when it is read
        raise UsageError(f"corrupt data file {path} (key {key}: {describe_error(e)})") from None


def decode_jpeg_split(path: Path, d, split: str, size: int | None = None, index=None) -> tuple["np.ndarray", "np.ndarray"]:
    """(uint8 [N, 3, S, S] images, int64 [N] labels) of split `split` of a JPEG-bytes npz; `size`
    resizes (PIL, antialiased bilinear) every image to S x S, None keeps them (all must agree)."""
    import numpy as np

    blob = read_array(d, f"{split}_jpeg", path)
    offsets = read_array(d, f"{split}_offsets", path).astype(np.int64)
    labels = read_array(d, f"{split}_labels", path).astype(np.int64)
    if len(offsets) != len(labels) + 1 or offsets[-1] > len(blob) or (np.diff(offsets) <= 0).any():
        raise UsageError(f"wrong layout in {path}: {split}_offsets ({len(offsets)}) must be {len(labels)}+1 increasing "
                         f"offsets into {split}_jpeg ({len(blob)} bytes)")
    idx = np.arange(len(labels)) if index is None else np.asarray(index)
    images = [decode_image(blob[offsets[i]:offsets[i + 1]].tobytes(), size, f"{path} {split}[{i}]") for i in idx]
    return stack_images(images, path), labels[idx]


def decode_image(data: bytes, size: int | None, what: str) -> "np.ndarray":
    import numpy as np
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if size is not None:
            img.draft("RGB", (size, size))  # JPEG DCT scaling: big images decode at about the target size
        img = img.convert("RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError) as e:
        raise UsageError(f"corrupt image in {what} ({describe_error(e)})") from None


def read_image_file(path: Path, size: int | None) -> "np.ndarray":
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path} ({describe_error(e)})") from None
    return decode_image(data, size, str(path))


def stack_images(images: list, path: Path | str) -> "np.ndarray":
    import numpy as np

    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UsageError(f"images in {path} differ in size ({', '.join(map(str, sorted(shapes)[:3]))}); give the task a size")
    return np.stack(images) if images else np.zeros((0, 3, 1, 1), np.uint8)


# ---- MNIST idx files --------------------------------------------------------------------------
def read_idx(path: Path, offset: int, shape_tail: tuple[int, ...]) -> "np.ndarray":
    import numpy as np

    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"corrupt data file {path} ({describe_error(e)})") from None
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else 0
    expected_magic = 2051 if shape_tail else 2049
    n = int.from_bytes(raw[4:8], "big") if len(raw) >= 8 else -1
    body = np.frombuffer(raw, np.uint8, offset=min(offset, len(raw)))
    per = int(np.prod(shape_tail)) if shape_tail else 1
    if magic != expected_magic or n < 0 or body.size != n * per:
        raise UsageError(f"corrupt data file {path} (idx magic {magic}, {body.size} bytes for {n} items; expected magic "
                         f"{expected_magic} and {n}x{per} bytes)")
    return body.reshape(n, *shape_tail)


# ---- resizing and channels (stored uint8 arrays) -------------------------------------------------
def resize_uint8(x: "np.ndarray", size: int) -> "np.ndarray":
    """uint8 [N, C, H, W] -> [N, C, size, size]: bilinear with antialiasing (torch), rounded."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    if x.shape[-2:] == (size, size):
        return x
    out = []
    for i in range(0, len(x), 4096):
        t = torch.from_numpy(np.ascontiguousarray(x[i:i + 4096])).float()
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(t.round_().clamp_(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out) if out else np.zeros((0, x.shape[1], size, size), np.uint8)


def to_channels(x: "np.ndarray", channels: int) -> "np.ndarray":
    """Grey -> RGB by replication; RGB -> grey by ITU-R 601 luma (PIL's 'L')."""
    import numpy as np

    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return np.repeat(x, 3, axis=1)
    if x.shape[1] == 3 and channels == 1:
        luma = x.astype(np.float32).transpose(0, 2, 3, 1) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.round(luma), 0, 255).astype(np.uint8)[:, None]
    raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")


# ---- seeded, stratified index draws --------------------------------------------------------------
def split_generator(seed: int, *keys) -> "torch.Generator":
    from bench.seeding import generator

    return generator(seed, "task-split", *keys)


def holdout(y: "np.ndarray", frac: float, g: "torch.Generator") -> tuple["np.ndarray", "np.ndarray"]:
    """(kept, held) index arrays: `frac` of every class held out (bench.data.stratified_holdout)."""
    import torch

    from bench.data import stratified_holdout

    kept, held = stratified_holdout(torch.from_numpy(y), frac, g)
    return kept.numpy(), held.numpy()


def per_class(y: "np.ndarray", n: int | None, g: "torch.Generator", exclude=None) -> "np.ndarray":
    """Sorted indices of `n` samples of every class drawn with `g` (all of a class with fewer; all when
    n is None), never from `exclude`."""
    import numpy as np
    import torch

    if n is None and exclude is None:
        return np.arange(len(y))
    banned = np.zeros(len(y), bool)
    if exclude is not None:
        banned[np.asarray(exclude, dtype=np.int64)] = True
    out = []
    for c in np.unique(y):
        idx = np.nonzero((y == c) & ~banned)[0]
        idx = idx[torch.randperm(len(idx), generator=g).numpy()]
        out.append(idx if n is None else idx[:n])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


# ---- metrics -----------------------------------------------------------------------------------
def accuracy_auc(scores: "np.ndarray", y: "np.ndarray") -> dict[str, float]:
    """Accuracy and one-vs-rest AUC averaged over the classes present in `y` (a class subset of a
    test set, e.g. Office-31 images not drawn, can lack a class: MedMNIST's getAUC would fail)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    acc = float((scores.argmax(1) == y).mean()) if len(y) else float("nan")
    aucs = [roc_auc_score(y == c, scores[:, c]) for c in np.unique(y) if 0 < (y == c).sum() < len(y)]
    return {"acc": acc, "auc": float(np.mean(aucs)) if aucs else float("nan")}


# ---- Office-31 ---------------------------------------------------------------------------------
OFFICE31_FILE = "office31_amazon1000_webcam.npz"
OFFICE31_DOMAINS = ("amazon", "webcam", "dslr")


def office31_candidates(root: Path, domain: str) -> list[Path]:
    """The standard folder layout first (<root>/office31/<domain>/images/<class>/*.jpg), then the shared npz."""
    return [root / "office31" / domain / "images", *shared_candidates(root, OFFICE31_FILE)]


def read_office31(data_root: Path | None, domain: str, size: int, task: str) -> tuple["np.ndarray", "np.ndarray", str]:
    """(uint8 [N, 3, size, size], int64 labels, origin) of one Office-31 domain, resized to size x size."""
    import numpy as np

    root = need_root(data_root, task)
    hit = first_existing(office31_candidates(root, domain))
    if hit is None:
        looked = " or ".join(str(p) for p in office31_candidates(root, domain)[:2])
        raise UsageError(f"missing data for task {task}: none of {looked} found (Office-31 domain {domain})")
    if hit.is_dir():
        classes = sorted(p.name for p in hit.iterdir() if p.is_dir())
        if len(classes) != 31:
            raise UsageError(f"wrong layout in {hit}: {len(classes)} class folders, expected 31")
        files = [(f, c) for c, name in enumerate(classes) for f in sorted((hit / name).glob("*.jpg"))]
        x = stack_images([read_image_file(f, size) for f, _ in files], hit)
        return x, np.array([c for _, c in files], dtype=np.int64), f"folder:{hit}"
    d = open_npz(hit, ["classes", f"{domain}_jpeg", f"{domain}_offsets", f"{domain}_labels"])
    x, y = decode_jpeg_split(hit, d, domain, size)
    if len(read_array(d, "classes", hit)) != 31 or y.min() < 0 or y.max() > 30:
        raise UsageError(f"wrong layout in {hit}: expected 31 classes and labels 0..30")
    return x, y, f"shared:{hit}"


def office31_present(data_root: Path, domain: str) -> bool:
    return first_existing(office31_candidates(Path(data_root), domain)) is not None
