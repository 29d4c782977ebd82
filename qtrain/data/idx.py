"""The idx file format of MNIST and Fashion-MNIST (LeCun et al.; Xiao, Rasul, Vollgraf 2017), plain
or gzipped, and the datasets read from it.

An idx file: two zero bytes, a type byte (0x08 unsigned byte, 0x09 signed byte, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, each dimension as a big-endian
uint32, then the values, big-endian, row-major.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from qtrain.data.base import Dataset
from qtrain.data.bounded import GzipReader, read_file
from qtrain.memory import require_fits

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530  # of the training images, pixels in [0, 1]
SPLITS = {"train": "train", "test": "t10k"}


def read_idx(path: Path, copies: float = 10.0) -> np.ndarray:
    """The array stored in an idx file (``.gz`` read transparently); ValueError naming the file
    when it is not a complete idx file. The header's dimensions, times ``copies`` (the values,
    their native-order copy, and the loader's float32 images and the temporary of normalising
    them, or its int64 labels), must fit in memory before the values are read or
    decompressed (``data.bounded``); a gzip stream is never inflated past them."""
    path, raw = read_file(path, "an idx file")
    if raw[:2] == b"\x1f\x8b":
        stream = GzipReader(raw, path)
        take = stream.take
    else:
        stream, view = None, memoryview(raw)
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            out = bytes(view[pos : pos + n])
            pos += len(out)
            return out

    magic = take(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in IDX_TYPES:
        raise ValueError(f"{path}: not an idx file (bad magic {magic.hex()})")
    ndim = magic[3]
    dims = take(4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise ValueError(f"{path}: idx header declares {ndim} dimensions and is cut short")
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    dtype = np.dtype(IDX_TYPES[magic[2]])
    need = math.prod(shape) * dtype.itemsize
    if stream is None and len(raw) - 4 - 4 * ndim != need:
        raise ValueError(
            f"{path}: shape {shape} needs {need} bytes of values, the file has {len(raw) - 4 - 4 * ndim}"
        )
    require_fits(int(need * copies), f"idx file {str(path)!r} (shape {list(shape)})")
    body = take(need)
    if len(body) != need:
        raise ValueError(f"{path}: shape {shape} needs {need} bytes of values, the file has {len(body)}")
    if stream is not None:
        stream.finish(f"the {need} bytes of values its shape {shape} needs")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():  # read_idx refuses what is not a regular file, by name
            return directory / name
    raise ValueError(f"{directory}: no {stem} (or {stem}.gz)")


def _split(directory: Path, split: str, mean: float, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(_find(directory, f"{SPLITS[split]}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{SPLITS[split]}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match "
            "(expected N x rows x cols images and N labels)"
        )
    x = (torch.from_numpy(images.astype(np.float32)) / 255.0 - mean) / std
    return x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def idx_images(cfg, seed: int, name: str = "idx", mean: float = 0.5, std: float = 0.5) -> Dataset:
    """MNIST-layout image classification from the directory ``data.path``: train-images-idx3-ubyte,
    train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz).
    Pixels scaled to [0, 1], then (p - mean) / std; images (N, 1, rows, cols)."""
    if not cfg.path:
        raise ValueError(f"data.name={name} needs data.path (a directory of MNIST-style idx files)")
    directory = Path(cfg.path).expanduser()
    if not directory.is_dir():
        raise ValueError(f"data.path {str(directory)!r} is not a directory")
    x_train, y_train = _split(directory, "train", mean, std)
    x_test, y_test = _split(directory, "test", mean, std)
    classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(name, x_train, y_train, x_test, y_test, "classification", classes)


def fashion_mnist(cfg, seed: int) -> Dataset:
    """Fashion-MNIST (60,000 + 10,000 28x28 images, 10 classes), by default from Debian's
    ``dataset-fashion-mnist`` package (``make sysdeps`` installs it as root); ``data.path`` may
    name another directory of its idx files."""
    directory = cfg.path or FASHION_MNIST_DIR
    if not Path(directory).is_dir():
        raise ValueError(
            f"Fashion-MNIST not found at {directory}: install it (Debian: apt-get install "
            "dataset-fashion-mnist, or make sysdeps as root) or set data.path to its idx files"
        )

    class _At:
        path = directory

    return idx_images(_At, seed, "fashion-mnist", FASHION_MNIST_MEAN, FASHION_MNIST_STD)
