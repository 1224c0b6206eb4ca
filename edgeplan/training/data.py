"""Training data: CIFAR-10 binary, MNIST IDX, a folder of .npy files, scikit-learn's digits, or synthetic data.

A user's data set folder is read in the standard on-disk format they already
have (no download, no pickle): CIFAR-10's binary version (``data_batch_*.bin``
and ``test_batch.bin``: one label byte + 3,072 pixel bytes per record) or
MNIST's IDX files (``train-images-idx3-ubyte`` ..., optionally ``.gz``). The
format is detected from the file names; images are normalised with the data
set's published mean/std and fitted to the model's input (grey <-> RGB,
integer upsampling + centred padding, or nearest-neighbour downsampling).
``load_dataset`` is the one reader entry (per split, optional fixed subset).

Every rank loads the same arrays and computes the same seeded order, so no
sample travels between boards except as activations: stage 0 replicas read the
inputs of their own sample ranges, the last stage the labels of theirs. The
order of epoch ``e`` depends only on (seed, e), so a run resumed from a
checkpoint sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeplan.errors import EdgeplanError

DATASETS = ("digits", "synthetic")  # besides a folder path
SYNTHETIC_SIZE = 2048  # training samples of the synthetic set (plus a quarter for test)
TEST_FRACTION = 0.2


class DataError(EdgeplanError):
    """The training data could not be loaded or does not fit the model's input."""


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    x_train: np.ndarray  # float32 [N, *input_shape]
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    description: str = ""  # what was loaded and how it was fitted (printed at the start of a run)


def fit_to(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Bring images [N, C, H, W] to a model input ``shape`` (C', H', W').

    Channels: 1 -> C' by repetition, C -> 1 by averaging (RGB to grey), else
    they must match. Space: a smaller image is upsampled by the largest integer
    nearest-neighbour factor that fits, then zero-padded (centred) to the
    target, so 8x8 digits become 32x32 by a factor 4 and 28x28 MNIST is padded
    to 32x32; a larger image is downsampled (nearest neighbour, aspect kept)
    and padded.
    """
    if x.ndim != 4 or len(shape) != 3:
        raise DataError(f"images of shape {x.shape[1:]} cannot be fitted to model input {shape}; "
                        "give a model with a (channels, height, width) input")
    c, h, w = shape
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = np.repeat(x, c, axis=1)
        elif c == 1:
            x = x.mean(axis=1, keepdims=True, dtype=np.float32)
        else:
            raise DataError(f"data has {x.shape[1]} channels but the model takes {c}; give data with {c} or 1")
    if x.shape[2] > h or x.shape[3] > w:
        scale = min(h / x.shape[2], w / x.shape[3])
        nh, nw = max(1, int(x.shape[2] * scale)), max(1, int(x.shape[3] * scale))
        rows = (np.arange(nh) * x.shape[2] / nh).astype(np.int64)
        cols = (np.arange(nw) * x.shape[3] / nw).astype(np.int64)
        x = x[:, :, rows][:, :, :, cols]
    f = min(h // x.shape[2], w // x.shape[3])
    if f > 1:
        x = x.repeat(f, axis=2).repeat(f, axis=3)
    ph, pw = h - x.shape[2], w - x.shape[3]
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    return np.ascontiguousarray(x, dtype=np.float32)


def fit_note(src: tuple[int, ...], shape: tuple[int, ...]) -> str:
    """How ``fit_to`` maps a per-sample shape (C, H, W) to ``shape``, in words for the run's output."""
    src, shape = tuple(int(d) for d in src), tuple(int(d) for d in shape)
    if src == shape:
        return f"{'x'.join(map(str, src))} as is"
    steps = []
    if src[0] != shape[0]:
        steps.append("grey repeated to every channel" if src[0] == 1 else "channels averaged to grey")
    if src[1] > shape[1] or src[2] > shape[2]:
        steps.append("nearest-neighbour downsampled")
    else:
        f = min(shape[1] // src[1], shape[2] // src[2])
        if f > 1:
            steps.append(f"nearest-neighbour upsampled x{f}")
        if (src[1] * f, src[2] * f) != shape[1:]:
            steps.append("zero-padded")
    return f"{'x'.join(map(str, src))} -> {'x'.join(map(str, shape))} ({', '.join(steps)})"


# --- readers of the standard on-disk formats (no download, no pickle) -----------------------------------

CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + 1,024 red, 1,024 green, 1,024 blue pixel bytes
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10 training set, per channel
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)  # MNIST training set
IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # IDX magic: unsigned bytes, 3 dims / 1 dim
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SPLITS = ("train", "test")
FORMATS = ("CIFAR-10 binary (data_batch_1.bin ... data_batch_5.bin, test_batch.bin)",
           "MNIST IDX (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-..., optionally .gz)",
           "numpy (x.npy + y.npy, or train_x/train_y/test_x/test_y.npy)")


@dataclass(frozen=True, eq=False)
class _Raw:
    """One split as stored: uint8 images [N, C, H, W] (or float for .npy), labels, normalisation, name."""

    x: np.ndarray
    y: np.ndarray
    mean: tuple[float, ...] | None  # per channel, of pixels scaled to [0, 1]; None: leave values as stored
    std: tuple[float, ...] | None
    name: str
    total: int  # samples of the split on disk


def _cifar_dir(path: Path) -> Path | None:
    for d in (path, path / "cifar-10-batches-bin"):
        if (d / "test_batch.bin").exists() or list(d.glob("data_batch_*.bin")):
            return d
    return None


def _read_cifar(path: Path, split: str) -> _Raw:
    d = _cifar_dir(path)
    files = sorted(d.glob("data_batch_*.bin")) if split == "train" else [d / "test_batch.bin"]
    if not files or not files[0].exists():
        want = "data_batch_1.bin ... data_batch_5.bin" if split == "train" else "test_batch.bin"
        raise DataError(f"{d}: CIFAR-10 binary folder has no {split} file; expected {want}")
    xs, ys = [], []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % CIFAR_RECORD:
            raise DataError(f"{f}: {raw.size} bytes is not a whole number of CIFAR-10 records of {CIFAR_RECORD} "
                            "bytes (1 label byte + 3,072 pixel bytes); is it the binary version, not the pickle?")
        rec = raw.reshape(-1, CIFAR_RECORD)
        if rec[:, 0].max() > 9:
            raise DataError(f"{f}: label byte {int(rec[:, 0].max())} is not a CIFAR-10 class 0..9; "
                            "CIFAR-100's binary version (2 label bytes) is not supported")
        ys.append(rec[:, 0].astype(np.int64))
        xs.append(rec[:, 1:].reshape(-1, 3, 32, 32))
    x, y = np.concatenate(xs), np.concatenate(ys)
    return _Raw(x, y, CIFAR_MEAN, CIFAR_STD, f"CIFAR-10 binary in {d}", len(x))


def _idx_path(path: Path, stem: str) -> Path | None:
    """``train-images-idx3-ubyte`` also as ``train-images.idx3-ubyte`` and either with ``.gz``."""
    alt = stem.replace("-idx", ".idx")
    for name in (stem, alt, stem + ".gz", alt + ".gz"):
        if (path / name).exists():
            return path / name
    return None


def _read_idx(f: Path, magic: int) -> np.ndarray:
    try:
        raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{f}: cannot read ({e}); expected an MNIST IDX file (gzip allowed)") from e
    ndim = magic & 0xFF
    head = 4 + 4 * ndim
    got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if got != magic:
        got = f"0x{got:08x}" if got is not None else "(file shorter than 4 bytes)"
        what = ("images (magic 0x00000803: unsigned bytes, 3 dimensions)" if magic == IDX_IMAGES
                else "labels (magic 0x00000801: unsigned bytes, 1 dimension)")
        raise DataError(f"{f}: magic number {got} is not that of IDX {what}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=head)
    if body.size != math.prod(dims):
        raise DataError(f"{f}: header says {'x'.join(map(str, dims))} = {math.prod(dims)} bytes of data but "
                        f"{body.size} follow; the file is truncated or not IDX")
    return body.reshape(dims)


def _read_mnist(path: Path, split: str) -> _Raw:
    names = MNIST_FILES[split]
    found = [_idx_path(path, n) for n in names]
    missing = [n for n, f in zip(names, found, strict=True) if f is None]
    if missing:
        raise DataError(f"{path}: MNIST IDX folder has no {' or '.join(missing)} (optionally .gz) for the "
                        f"{split} split")
    x, y = _read_idx(found[0], IDX_IMAGES), _read_idx(found[1], IDX_LABELS).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"{found[1]}: {len(y)} labels for {len(x)} images in {found[0]}; use files of one release")
    return _Raw(x[:, None], y, MNIST_MEAN, MNIST_STD, f"MNIST IDX in {path}", len(x))


def _read_npy(path: Path, split: str, seed: int) -> _Raw:
    def load(name: str) -> np.ndarray:
        try:
            return np.load(path / name, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path / name}: cannot read ({e}); save it with numpy.save") from e

    if (path / "train_x.npy").exists():
        x, y = load(f"{split}_x.npy"), load(f"{split}_y.npy")
    else:
        x_all, y_all = load("x.npy"), load("y.npy")
        if len(x_all) != len(y_all) or y_all.ndim != 1:
            raise DataError(f"{path}: x.npy has {len(x_all)} samples but y.npy has shape {y_all.shape}; "
                            "labels must be one integer per sample")
        x_tr, y_tr, x_te, y_te = _split(x_all, y_all, seed)
        x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    if len(x) != len(y) or y.ndim != 1:
        raise DataError(f"{path}: {split} inputs have {len(x)} samples but labels shape {y.shape}; "
                        "labels must be one integer per sample")
    x = x if x.ndim == 4 else x[:, None] if x.ndim == 3 else x
    return _Raw(x, y.astype(np.int64), None, None, f"numpy arrays in {path}", len(x))


def detect_format(path: Path) -> str:
    """``cifar10``, ``mnist`` or ``npy`` from the file names in ``path``; the error lists what is expected."""
    if not path.is_dir():
        raise DataError(f"--dataset-dir {path}: not a folder; give the folder holding one of: {'; '.join(FORMATS)}")
    if _cifar_dir(path) is not None:
        return "cifar10"
    if any(_idx_path(path, n) for pair in MNIST_FILES.values() for n in pair):
        return "mnist"
    if (path / "x.npy").exists() or (path / "train_x.npy").exists():
        return "npy"
    present = ", ".join(sorted(p.name for p in path.iterdir())[:6]) or "nothing"
    raise DataError(f"{path}: no data set found (it holds {present}); expected one of: {'; '.join(FORMATS)}")


def _subset(n: int, samples: int | None, seed: int, split: str) -> np.ndarray | None:
    """A fixed, seeded choice of ``samples`` of ``n`` (same on every rank and every run), in file order."""
    if samples is None or samples >= n:
        return None
    if samples < 1:
        raise DataError(f"--samples must be at least 1, got {samples}")
    return np.sort(np.random.default_rng([seed, SPLITS.index(split), 0x5EED]).permutation(n)[:samples])


def load_dataset(directory: str | Path | None, input_shape: tuple[int, ...], split: str = "train",
                 samples: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """One split of a data set fitted to the model: (x float32 [N, *input_shape], y int64 [N], description).

    ``directory`` holds CIFAR-10 binary, MNIST IDX or .npy files (detected);
    None means scikit-learn's digits (no download), split 80/20 by ``seed``.
    ``samples`` keeps a fixed seeded subset of that many samples of the split.
    The description says what was read, how many samples and how they were fitted.
    """
    x, y, (source, count, fit) = _load_split(directory, input_shape, split, samples, seed)
    return x, y, f"{source}, {split}: {count}, {fit}"


def _load_split(directory, input_shape, split, samples, seed) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    shape = tuple(int(d) for d in input_shape)
    if directory is None:
        raw = _digits_raw(split, seed)
        source = "scikit-learn digits (no --dataset-dir given)"
    else:
        path = Path(directory)
        fmt = detect_format(path)
        raw = _read_cifar(path, split) if fmt == "cifar10" else _read_mnist(path, split) if fmt == "mnist" \
            else _read_npy(path, split, seed)
        source = raw.name
    keep = _subset(len(raw.x), samples, seed, split)
    x, y = (raw.x, raw.y) if keep is None else (raw.x[keep], raw.y[keep])
    x = x.astype(np.float32)
    if raw.mean is not None:  # uint8 pixels: [0, 1], then the data set's per-channel mean/std
        mean = np.asarray(raw.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(raw.std, np.float32).reshape(1, -1, 1, 1)
        x = (x / np.float32(255.0) - mean) / std
    src = x.shape[1:]
    if src != shape:
        x = fit_to(x if x.ndim == 4 else x[:, None], shape)
    count = f"{len(x)} of {raw.total} samples (fixed seeded subset, --samples)" if keep is not None \
        else f"{len(x)} samples"
    return np.ascontiguousarray(x, np.float32), y, (source, count, fit_note(src, shape))


def _digits_raw(split: str, seed: int) -> _Raw:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - dependency of edgeplan
        raise DataError("the digits data set needs scikit-learn: pip install 'scikit-learn>=1.3,<2'") from e
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 - 0.5) / 0.5  # [-1, 1]
    x_tr, y_tr, x_te, y_te = _split(x[:, None], d.target.astype(np.int64), seed)
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return _Raw(x, y, None, None, "scikit-learn digits", len(x))


def _split(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * TEST_FRACTION))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _synthetic(shape: tuple[int, ...], seed: int, classes: int = 10) -> Dataset:
    """CIFAR-shaped noise with a learnable class signal (for speed tests, not accuracy claims)."""
    rng = np.random.default_rng(seed)
    n = SYNTHETIC_SIZE + SYNTHETIC_SIZE // 4
    y = rng.integers(0, classes, n).astype(np.int64)
    protos = rng.standard_normal((classes, *shape)).astype(np.float32)
    x = (rng.standard_normal((n, *shape)).astype(np.float32) + protos[y]).astype(np.float32)
    te = SYNTHETIC_SIZE
    return Dataset("synthetic", x[:te], y[:te], x[te:], y[te:], classes=classes,
                   description=f"synthetic class prototypes + noise (speed tests only): {te} train / "
                               f"{n - te} test samples of {'x'.join(map(str, shape))}")


def load(name: str | None, input_shape: tuple[int, ...], seed: int = 0, samples: int | None = None) -> Dataset:
    """``digits`` (or None), ``synthetic`` or a data set folder (``load_dataset``), fitted to the model's input.

    ``samples`` keeps a fixed seeded subset of that many samples of each split.
    """
    shape = tuple(int(d) for d in input_shape)
    if name == "synthetic":
        ds = _synthetic(shape, seed)
        if samples is not None:
            tr = _subset(len(ds.x_train), samples, seed, "train")
            te = _subset(len(ds.x_test), samples, seed, "test")
            tr = slice(None) if tr is None else tr
            te = slice(None) if te is None else te
            ds = Dataset(ds.name, ds.x_train[tr], ds.y_train[tr], ds.x_test[te], ds.y_test[te], ds.classes,
                         f"{ds.description} (at most {samples} per split, --samples)")
        return ds
    if name in (None, "digits"):
        directory = None
    elif Path(name).is_dir():
        directory = Path(name)
    else:
        raise DataError(f"dataset {name!r} is neither {' nor '.join(DATASETS)} nor a folder of one of: "
                        f"{'; '.join(FORMATS)}")
    x_tr, y_tr, (source, n_tr, fit) = _load_split(directory, shape, "train", samples, seed)
    x_te, y_te, (_, n_te, _) = _load_split(directory, shape, "test", samples, seed)
    classes = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
    return Dataset("digits" if directory is None else directory.name, x_tr, y_tr, x_te, y_te, classes=classes,
                   description=f"{source}: train {n_tr}, test {n_te}; {fit}")


def save(ds: Dataset, path: str | Path) -> Path:
    """Cache a loaded data set as one .npz (local runs load it once for all ranks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test,
             classes=np.int64(ds.classes), name=np.str_(ds.name), description=np.str_(ds.description))
    tmp.replace(path)
    return path


def load_cached(path: str | Path) -> Dataset:
    with np.load(path, allow_pickle=False) as z:
        return Dataset(str(z["name"]), z["x_train"], z["y_train"], z["x_test"], z["y_test"], int(z["classes"]),
                       str(z["description"]) if "description" in z else "")


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Sample order of one epoch: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def iterations(n: int, batch: int) -> int:
    """Full global batches per epoch (the last partial batch is dropped, as single-process training does)."""
    if n < batch:
        raise DataError(f"the data set has {n} training samples, fewer than the global batch {batch}; "
                        "plan with a smaller --batch")
    return n // batch


def microbatch_indices(order: np.ndarray, it: int, batch: int, microbatches: int, k: int,
                       lo: int, hi: int) -> np.ndarray:
    """Dataset indices of samples [lo, hi) of micro-batch ``k`` of iteration ``it``."""
    m = batch // microbatches
    start = it * batch + k * m
    return order[start + lo:start + hi]
