"""Aligned multi-view data for trying FPL without cameras: scikit-learn digits seen through horizontal bands.

Source ``k`` of ``K`` sees the same digit as every other source, but only a band
of its rows (3 of 8 rows for 3 sources; the rest of the image is zero), so each
source alone is partly informative and the sources together see the whole digit,
like cameras looking at one scene from different angles. ``write`` saves each
source's view as ``train_x.npy``/``train_y.npy``/``test_x.npy``/``test_y.npy`` in
its own folder, which ``edgeplan train --data SOURCE=DIR`` reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeplan.training import data


def bands(k: int, rows: int = 8) -> list[tuple[int, int]]:
    """Row ranges [a, b) of ``k`` equal horizontal bands covering an image ``rows`` high (the last may overlap)."""
    width = -(-rows // k)
    return [(min(i * width, rows - width), min(i * width, rows - width) + width) for i in range(k)]


def digits_views(k: int, seed: int = 0) -> list[data.Dataset]:
    """One aligned data set per source (same samples, split and labels; a different band each)."""
    x_tr, y_tr, _ = data.load_dataset(None, (1, 8, 8), "train", seed=seed)
    x_te, y_te, _ = data.load_dataset(None, (1, 8, 8), "test", seed=seed)
    out = []
    for i, (a, b) in enumerate(bands(k, x_tr.shape[2])):
        def view(x: np.ndarray, a: int = a, b: int = b) -> np.ndarray:
            v = np.zeros_like(x)
            v[:, :, a:b] = x[:, :, a:b]
            return v

        out.append(data.Dataset(f"digits-band{i}", view(x_tr), y_tr, view(x_te), y_te, classes=10,
                                description=f"scikit-learn digits, rows {a}-{b - 1} only"))
    return out


def write(datasets: list[data.Dataset], folders: list[str | Path]) -> list[Path]:
    """Each view into its folder as .npy files (the format ``data.load`` reads)."""
    paths = []
    for ds, folder in zip(datasets, folders, strict=True):
        p = Path(folder)
        p.mkdir(parents=True, exist_ok=True)
        for name, arr in (("train_x", ds.x_train), ("train_y", ds.y_train), ("test_x", ds.x_test),
                          ("test_y", ds.y_test)):
            np.save(p / f"{name}.npy", arr)
        paths.append(p)
    return paths
