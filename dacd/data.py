"""Datasets: the Fashion-MNIST idx reader, ImageFolder, class names and ids.

Every dataset exposes the same small interface (`ImageDataset`): `images` as a
uint8 array (N, C, H, W), `labels`, stable `ids` unique across splits, `class_names`
and `split`. Fashion-MNIST's 28x28 images are padded (not resized) to 32x32 here,
once; everything downstream sees 32x32.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_ENV = "DACD_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL_HINT = (
    "install the Debian package: `sudo apt-get update && sudo apt-get install -y "
    f"dataset-fashion-mnist`, or point ${FASHION_MNIST_ENV} (or --data-dir) at a folder "
    "holding the four idx files"
)
# Names as the dataset's authors document them (zalandoresearch/fashion-mnist README).
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = ("train", "test")
IMAGE_SIZE = 32
_IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class DatasetError(RuntimeError):
    """A dataset is missing or malformed; the message names the file and the fix."""


MAX_IMAGE_BYTES = 10 * 1024 * 1024  # image files (uploads) larger than this are refused


def load_image(path: str | Path) -> Image.Image:
    """An image file as PIL, refusing files over 10 MB and files PIL cannot read, by name."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"image {path.name!r} is {size / 2**20:.1f} MB; the limit is {MAX_IMAGE_BYTES // 2**20} MB")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception as e:  # PIL raises several kinds (UnidentifiedImageError, OSError, ...)
        raise ValueError(f"image {path.name!r} cannot be read as an image ({type(e).__name__}: {e})") from e


def slugify(name: str) -> str:
    """Class name -> file/folder slug: "T-shirt/top" -> "t-shirt-top"."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "class"


@dataclass
class ImageDataset:
    """In-memory images with labels, ids and class names (one split)."""

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    ids: np.ndarray  # str (N,), unique across splits
    class_names: tuple[str, ...]
    split: str
    name: str = "dataset"

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if not (len(self.images) == len(self.labels) == len(self.ids)):
            raise ValueError("images, labels and ids must have the same length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_chans(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_slugs(self) -> tuple[str, ...]:
        return tuple(slugify(c) for c in self.class_names)

    def class_index(self, name_or_index) -> int:
        """Accept an index, a display name or a slug; raise a clear error otherwise."""
        return resolve_class(name_or_index, self.class_names)

    def subset(self, index) -> "ImageDataset":
        index = np.asarray(index)
        return ImageDataset(self.images[index], self.labels[index], self.ids[index],
                            self.class_names, self.split, self.name)

    def as_float(self, index=None) -> np.ndarray:
        """Images as float32 in [0, 1]."""
        x = self.images if index is None else self.images[index]
        return x.astype(np.float32) / 255.0


def resolve_class(name_or_index, class_names) -> int:
    class_names = tuple(class_names)
    if isinstance(name_or_index, (int, np.integer)) and not isinstance(name_or_index, bool):
        if 0 <= int(name_or_index) < len(class_names):
            return int(name_or_index)
    elif isinstance(name_or_index, str):
        key = name_or_index.strip()
        for i, c in enumerate(class_names):
            if key == c or key.lower() == c.lower() or slugify(key) == slugify(c):
                return i
        if key.isdigit() and int(key) < len(class_names):
            return int(key)
    raise ValueError(
        f"Unknown class {name_or_index!r}: give a class name ({', '.join(class_names)}) "
        f"or its number, 0 to {len(class_names) - 1}."
    )


# ---------------------------------------------------------------- idx files

def _open_idx(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"cannot read {path}: {e}. The file looks corrupted; {FASHION_MNIST_INSTALL_HINT}.") from e


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read one idx file (gzipped or not) as a uint8 array, checking header and length."""
    path = Path(path)
    data = _open_idx(path)
    if len(data) < 4:
        raise DatasetError(f"{path} is truncated ({len(data)} bytes); {FASHION_MNIST_INSTALL_HINT}.")
    zero, dtype_code, ndim = data[0] << 8 | data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08 or (expected_ndim is not None and ndim != expected_ndim):
        magic = struct.unpack(">I", data[:4])[0]
        want = 0x0800 + (expected_ndim or ndim)
        raise DatasetError(
            f"{path} has magic number {magic:#010x}, expected {want:#010x} (unsigned-byte idx, "
            f"{expected_ndim or ndim} dims): not a Fashion-MNIST idx file; {FASHION_MNIST_INSTALL_HINT}."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated inside its header; {FASHION_MNIST_INSTALL_HINT}.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DatasetError(
            f"{path} holds {len(data) - header} bytes of data, its header promises {expected} "
            f"(shape {shape}): the file is truncated or corrupted; {FASHION_MNIST_INSTALL_HINT}."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def fashion_mnist_dir(data_dir: str | Path | None = None) -> Path:
    """The folder with the idx files: argument, then $DACD_FASHION_MNIST_DIR, then the Debian path."""
    return Path(data_dir or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"Fashion-MNIST file {folder / stem}[.gz] not found; {FASHION_MNIST_INSTALL_HINT}.")


def pad_to(images: np.ndarray, size: int, value: int = 0) -> np.ndarray:
    """Pad (N, C, h, w) images centred to (N, C, size, size) with the background value."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.full(images.shape[:-2] + (size, size), value, dtype=images.dtype)
    out[..., top:top + h, left:left + w] = images
    return out


def load_fashion_mnist(split: str = "train", data_dir: str | Path | None = None) -> ImageDataset:
    """Fashion-MNIST, one split, padded to 32x32 (background 0), ids "train:i"/"test:i"."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
    folder = fashion_mnist_dir(data_dir)
    if not folder.is_dir():
        raise DatasetError(f"Fashion-MNIST folder {folder} does not exist; {FASHION_MNIST_INSTALL_HINT}.")
    img_stem, lbl_stem = FASHION_MNIST_FILES[split]
    img_path, lbl_path = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
    images = read_idx(img_path, expected_ndim=3)
    labels = read_idx(lbl_path, expected_ndim=1)
    if len(images) != len(labels):
        raise DatasetError(
            f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} labels; "
            f"the files do not belong together. {FASHION_MNIST_INSTALL_HINT}."
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(f"{lbl_path} has label {labels.max()} outside 0..9; {FASHION_MNIST_INSTALL_HINT}.")
    images = pad_to(images[:, None], IMAGE_SIZE, value=0)
    ids = np.array([f"{split}:{i}" for i in range(len(labels))], dtype=object)
    return ImageDataset(images, labels.astype(np.int64), ids, FASHION_MNIST_CLASSES, split, "fashion-mnist")


# ---------------------------------------------------------------- ImageFolder

def load_image_folder(root: str | Path, split: str = "train", image_size: int = IMAGE_SIZE,
                      channels: int | None = None) -> ImageDataset:
    """An ImageFolder (`root/[split/]class/*.png`): class names from folder names.

    If `root/split` exists it is used, so `root/train` and `root/test` (or `val`) work
    as splits. Images are resized (shorter side) and centre-cropped to `image_size`;
    `channels` 1 or 3 (default: 1 if every image is greyscale, else 3).
    """

    root = Path(root)
    base = root / split if (root / split).is_dir() else root
    if not base.is_dir():
        raise DatasetError(f"ImageFolder {base} does not exist: pass a folder with one subfolder per class.")
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"ImageFolder {base} has no class subfolders (expected {base}/<class>/<image>.png).")
    files, labels = [], []
    for c, d in enumerate(class_dirs):
        for f in sorted(d.rglob("*")):
            if f.suffix.lower() in _IMAGE_EXTENSIONS:
                files.append(f)
                labels.append(c)
    if not files:
        raise DatasetError(f"ImageFolder {base} has class folders but no images ({sorted(_IMAGE_EXTENSIONS)}).")
    pil = []
    for f in files:
        try:
            with Image.open(f) as im:
                pil.append(im.copy())
        except OSError as e:
            raise DatasetError(f"cannot read image {f}: {e}; remove or replace the file.") from e
    if channels is None:
        channels = 1 if all(im.mode in ("L", "1", "I;16", "I") for im in pil) else 3
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for im in pil:
        im = im.convert(mode)
        w, h = im.size
        scale = image_size / min(w, h)
        im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        a = np.asarray(im.crop((left, top, left + image_size, top + image_size)), dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    ids = np.array([f"{split}:{f.relative_to(base).as_posix()}" for f in files], dtype=object)
    class_names = tuple(d.name for d in class_dirs)
    return ImageDataset(np.stack(arrays), np.array(labels, dtype=np.int64), ids, class_names, split, root.name)


def load_dataset(name_or_path: str = "fashion-mnist", split: str = "train", data_dir=None,
                 image_size: int = IMAGE_SIZE) -> ImageDataset:
    """"fashion-mnist" (optionally with `data_dir`), or the path of an ImageFolder."""
    if name_or_path in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return load_fashion_mnist(split, data_dir)
    return load_image_folder(name_or_path, split, image_size=image_size)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an idx file (gzipped if the name ends in .gz); used by tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def stratified_subset(labels, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-stratified random `fraction` of a dataset (at least one
    image per class that has any): the named "real subset" of the low-data experiments."""
    if not (np.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    labels = np.asarray(labels)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx))))
        out.append(np.random.default_rng([seed, int(c)]).choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, int)


def subset_name(dataset: str, split: str, fraction: float, seed: int) -> str:
    """The name under which a stratified subset is recorded (manifests, result tables)."""
    return f"{dataset}/{split}: stratified {fraction:g} (seed {seed})"
