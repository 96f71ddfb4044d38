"""Image data sets for the sequential-pixel task, read from local files; nothing is downloaded.

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, values 0-16), split 1437/360 with a
  fixed seed (0), the same for every run. Works offline.
- ``mnist``: the four standard IDX files (optionally gzipped) in ``data_dir``.
- ``cifar10``: the python pickles of ``cifar-10-batches-py/`` in ``data_dir`` (or ``data_dir`` itself).

Every loader returns images as uint8/float arrays [N, H*W, C] in row-major pixel order, and int64 labels.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass

import numpy as np

MNIST_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
               "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
MNIST_URL = "https://yann.lecun.com/exdb/mnist/ (or any mirror, e.g. the torchvision or Kaggle copies)"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it there)"
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
DIGITS_TEST = 360
DIGITS_SPLIT_SEED = 0


class MissingData(FileNotFoundError):
    """A data set is not in --data-dir; the message says which files and where to get them."""


class BadData(ValueError):
    """A data file exists but cannot be read as what it should be."""


@dataclass(frozen=True)
class ImageData:
    """train_x / test_x [N, T, C] (T pixels in order, C channels), train_y / test_y [N] int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    max_value: float  # the largest possible pixel value (16 for digits, 255 otherwise)
    num_classes: int = 10


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (``.gz`` is opened transparently) into an array of its stated shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise BadData(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise BadData(f"{path} is truncated (header)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise BadData(f"{path}: header says shape {shape} but the file has {len(data) - header} data bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(data_dir: str, name: str) -> str | None:
    for candidate in (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    return None


def load_mnist(data_dir: str) -> ImageData:
    """MNIST from the IDX files in data_dir: 60000/10000 images of 28x28 -> [N, 784, 1]."""
    paths = {key: _find(data_dir, name) for key, name in MNIST_FILES.items()}
    missing = [MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise MissingData(f"MNIST not found in {os.path.abspath(data_dir)}: missing {', '.join(missing)} "
                          f"(.gz also accepted); get the four IDX files from {MNIST_URL} and put them "
                          "there, or pass --data-dir; or use --dataset digits, which needs no files")
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise BadData(f"MNIST {split} files disagree: images {x.shape}, labels {y.shape}")
    flat = lambda a: a.reshape(len(a), -1, 1)  # noqa: E731  [N, H*W, 1]
    return ImageData(flat(arrays["train_x"]), arrays["train_y"].astype(np.int64),
                     flat(arrays["test_x"]), arrays["test_y"].astype(np.int64), max_value=255.0)


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        try:
            batch = pickle.load(f, encoding="bytes")
        except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
            raise BadData(f"{path} is not a CIFAR-10 python pickle ({type(err).__name__})") from None
    data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
    labels = batch.get(b"labels", batch.get("labels")) if isinstance(batch, dict) else None
    if data is None or labels is None:
        raise BadData(f"{path} has no 'data'/'labels' entries: not a CIFAR-10 batch")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise BadData(f"{path}: data {data.shape} and {len(labels)} labels do not fit CIFAR-10 (N x 3072)")
    # rows are 1024 red, 1024 green, 1024 blue values of a 32x32 image -> [N, 1024 pixels, 3 channels]
    return data.reshape(-1, 3, 1024).transpose(0, 2, 1), np.asarray(labels, dtype=np.int64)


def load_cifar10(data_dir: str) -> ImageData:
    """CIFAR-10 from data_batch_1..5 and test_batch: 50000/10000 images of 32x32x3 -> [N, 1024, 3]."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for folder in (os.path.join(data_dir, "cifar-10-batches-py"), data_dir):
        if all(os.path.isfile(os.path.join(folder, n)) for n in names):
            break
    else:
        raise MissingData(f"CIFAR-10 not found in {os.path.abspath(data_dir)}: need cifar-10-batches-py/ with "
                          f"data_batch_1..5 and test_batch; get {CIFAR_URL}, or pass --data-dir; or use "
                          "--dataset digits, which needs no files")
    parts = [_read_cifar_batch(os.path.join(folder, n)) for n in names]
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    return ImageData(train_x, train_y, parts[5][0], parts[5][1], max_value=255.0)


def load_digits() -> ImageData:
    """scikit-learn's 8x8 digits, fixed split 1437 train / 360 test -> [N, 64, 1]."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise MissingData("--dataset digits needs scikit-learn (pip install 'scikit-learn>=1.3')") from None
    bunch = sk_load_digits()
    x = bunch.data.astype(np.float32).reshape(-1, 64, 1)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(x))
    test, train = order[:DIGITS_TEST], order[DIGITS_TEST:]
    return ImageData(x[train], y[train], x[test], y[test], max_value=16.0)


def load(dataset: str, data_dir: str) -> ImageData:
    """digits, mnist or cifar10."""
    if dataset == "digits":
        return load_digits()
    if dataset == "mnist":
        return load_mnist(data_dir)
    if dataset == "cifar10":
        return load_cifar10(data_dir)
    raise ValueError(f"unknown dataset {dataset!r}; valid datasets: digits, mnist, cifar10")
