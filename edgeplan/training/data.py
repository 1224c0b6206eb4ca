"""Training data: scikit-learn's digits, a folder of .npy files, or synthetic CIFAR-shaped data.

Every rank loads the same arrays and computes the same seeded order, so no
sample travels between boards except as activations: stage 0 replicas read the
inputs of their own sample ranges, the last stage the labels of theirs. The
order of epoch ``e`` depends only on (seed, e), so a run resumed from a
checkpoint sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

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


def fit_to(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Bring images [N, C, H, W] to a model input ``shape`` (C', H', W').

    Channels are repeated (1 -> 3) or must match; spatial size is upsampled by
    an integer nearest-neighbour factor when it divides, then zero-padded
    (centred) to the target. 8x8 digits become 32x32 by a factor 4.
    """
    if x.ndim != 4 or len(shape) != 3:
        raise DataError(f"images of shape {x.shape[1:]} cannot be fitted to model input {shape}; "
                        "give a model with a (channels, height, width) input")
    c, h, w = shape
    if x.shape[1] != c:
        if x.shape[1] != 1:
            raise DataError(f"data has {x.shape[1]} channels but the model takes {c}; give data with {c} or 1")
        x = np.repeat(x, c, axis=1)
    fh, fw = h // x.shape[2], w // x.shape[3]
    if fh < 1 or fw < 1:
        raise DataError(f"data images {x.shape[2]}x{x.shape[3]} are larger than the model input {h}x{w}")
    f = min(fh, fw)
    if f > 1:
        x = x.repeat(f, axis=2).repeat(f, axis=3)
    ph, pw = h - x.shape[2], w - x.shape[3]
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    return np.ascontiguousarray(x, dtype=np.float32)


def _split(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * TEST_FRACTION))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _digits(shape: tuple[int, ...], seed: int) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - dependency of edgeplan
        raise DataError("the digits data set needs scikit-learn: pip install 'scikit-learn>=1.3,<2'") from e
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 - 0.5) / 0.5  # [-1, 1]
    x = fit_to(x[:, None], shape)
    return Dataset("digits", *_split(x, d.target.astype(np.int64), seed), classes=10)


def _synthetic(shape: tuple[int, ...], seed: int, classes: int = 10) -> Dataset:
    """CIFAR-shaped noise with a learnable class signal (for speed tests, not accuracy claims)."""
    rng = np.random.default_rng(seed)
    n = SYNTHETIC_SIZE + SYNTHETIC_SIZE // 4
    y = rng.integers(0, classes, n).astype(np.int64)
    protos = rng.standard_normal((classes, *shape)).astype(np.float32)
    x = (rng.standard_normal((n, *shape)).astype(np.float32) + protos[y]).astype(np.float32)
    te = SYNTHETIC_SIZE
    return Dataset("synthetic", x[:te], y[:te], x[te:], y[te:], classes=classes)


def _folder(path: Path, shape: tuple[int, ...], seed: int) -> Dataset:
    """``x.npy`` + ``y.npy`` (split 80/20 by the seed) or ``train_x/train_y/test_x/test_y.npy``."""
    def load(name: str) -> np.ndarray:
        try:
            return np.load(path / name, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path / name}: cannot read ({e}); save it with numpy.save") from e

    if (path / "train_x.npy").exists():
        parts = [load(f) for f in ("train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy")]
    elif (path / "x.npy").exists():
        parts = list(_split(load("x.npy"), load("y.npy"), seed))
    else:
        raise DataError(f"{path}: expected x.npy and y.npy (or train_x/train_y/test_x/test_y.npy) in the folder")
    for xi, yi, what in ((parts[0], parts[1], "train"), (parts[2], parts[3], "test")):
        if len(xi) != len(yi) or yi.ndim != 1:
            raise DataError(f"{path}: {what} inputs have {len(xi)} samples but labels shape {yi.shape}; "
                            "labels must be one integer per sample")
    xs = []
    for xi in (parts[0], parts[2]):
        xi = xi.astype(np.float32)
        if xi.shape[1:] != tuple(shape):
            xi = fit_to(xi if xi.ndim == 4 else xi[:, None], shape)
        xs.append(xi)
    y_tr, y_te = parts[1].astype(np.int64), parts[3].astype(np.int64)
    classes = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
    return Dataset(path.name, xs[0], y_tr, xs[1], y_te, classes=classes)


def load(name: str, input_shape: tuple[int, ...], seed: int = 0) -> Dataset:
    """``digits``, ``synthetic`` or a folder of .npy files, fitted to the model's per-sample input shape."""
    shape = tuple(int(d) for d in input_shape)
    if name == "digits":
        return _digits(shape, seed)
    if name == "synthetic":
        return _synthetic(shape, seed)
    path = Path(name)
    if path.is_dir():
        return _folder(path, shape, seed)
    raise DataError(f"dataset {name!r} is neither {' nor '.join(DATASETS)} nor a folder of .npy files")


def save(ds: Dataset, path: str | Path) -> Path:
    """Cache a loaded data set as one .npz (local runs load it once for all ranks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test,
             classes=np.int64(ds.classes), name=np.str_(ds.name))
    tmp.replace(path)
    return path


def load_cached(path: str | Path) -> Dataset:
    with np.load(path, allow_pickle=False) as z:
        return Dataset(str(z["name"]), z["x_train"], z["y_train"], z["x_test"], z["y_test"], int(z["classes"]))


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
