"""`edgeplan infer`: run files through a pipeline and save the outputs.

Inputs: one ``.npy`` (one-input models; batch first, or one sample without the
batch dimension), one ``.npz`` (an array per input name; ``arr_0`` for one input),
a folder of ``.npy`` files (one sample or a batch each, stacked in sorted name
order), or images (files or a folder; Pillow). Images are converted to the
input's channels (1: grey, 3: RGB), resized to its height x width (bilinear),
scaled to [0, 1], then normalised: ``imagenet`` subtracts mean (0.485, 0.456, 0.406)
and divides by std (0.229, 0.224, 0.225) per RGB channel (torchvision's
convention), ``unit`` keeps [0, 1], ``raw`` keeps 0..255; ``auto`` is imagenet for 3
channels and unit otherwise. Rows of the outputs follow the sorted file names.

Outputs: ``.npy`` (one-output models) or ``.npz`` (an array per output name),
written to a temporary file and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeplan.errors import EdgeplanError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE = ("auto", "imagenet", "unit", "raw")


class InputFileError(EdgeplanError):
    """An input file does not fit the model (names the file, the input and the expected shape)."""


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _fit(a: np.ndarray, where: str, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Batch-first array for input ``name``; a single sample gets its batch dimension."""
    if tuple(a.shape) == tuple(shape):
        a = a[None]
    if a.ndim != len(shape) + 1 or tuple(a.shape[1:]) != tuple(shape):
        raise InputFileError(f"{where}: array of shape {list(a.shape)} for input '{name}', expected "
                             f"{_shape_text((-1, *shape))} (batch first) or {_shape_text(shape)} (one sample)")
    dt = np.dtype(dtype)
    if a.dtype != dt:
        if not np.can_cast(a.dtype, dt, "same_kind"):
            raise InputFileError(f"{where}: dtype {a.dtype} for input '{name}' cannot become the model's {dt}")
        a = a.astype(dt)
    return a


def load_image(path: Path, shape: tuple[int, ...], normalize: str = "auto") -> np.ndarray:
    """One image as a (C, H, W) float32 sample for an input of per-sample ``shape``."""
    from PIL import Image, UnidentifiedImageError

    if len(shape) != 3 or shape[0] not in (1, 3):
        raise InputFileError(f"{path}: images need an input of shape [C, H, W] with C = 1 or 3; the model's is "
                             f"{_shape_text(shape)}; give .npy/.npz inputs instead")
    c, h, w = shape
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as e:
        raise InputFileError(f"{path}: not a readable image ({e})") from None
    a = a.reshape(h, w, c).transpose(2, 0, 1)
    mode = ("imagenet" if c == 3 else "unit") if normalize == "auto" else normalize
    if mode == "raw":
        return np.ascontiguousarray(a)
    a = a / 255.0
    if mode == "imagenet":
        if c != 3:
            raise InputFileError(f"{path}: imagenet normalisation needs 3 channels; use --normalize unit")
        a = (a - np.array(IMAGENET_MEAN, np.float32)[:, None, None]) / np.array(IMAGENET_STD, np.float32)[:, None, None]
    elif mode != "unit":
        raise InputFileError(f"--normalize {normalize!r}: use one of {', '.join(NORMALIZE)}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _expand(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            inner = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            if not inner:
                raise InputFileError(f"{p}: empty folder; put .npy files or images in it")
            files += inner
        elif p.is_file():
            files.append(p)
        else:
            raise InputFileError(f"{p}: no such file or folder")
    return files


@dataclass(frozen=True)
class InputSet:
    """Samples from files, read a chunk at a time (a folder of 10,000 frames never sits in memory at once).

    ``parts``: per file, (sample count, loader returning one batch-first array per model input).
    """

    n: int
    parts: tuple[tuple[int, Callable[[], list[np.ndarray]]], ...]

    def chunks(self, size: int) -> Iterator[list[np.ndarray]]:
        """Consecutive chunks of at most ``size`` samples, in file order."""
        held: list[list[np.ndarray]] = []
        count = 0
        for _, load in self.parts:
            xs = load()
            at, k = 0, len(xs[0])
            while at < k:
                take = min(size - count, k - at)
                held.append([x[at:at + take] for x in xs])
                count += take
                at += take
                if count == size:
                    yield [np.concatenate([h[i] for h in held]) for i in range(len(xs))]
                    held, count = [], 0
        if held:
            yield [np.concatenate([h[i] for h in held]) for i in range(len(held[0]))]


def open_inputs(paths: Sequence[str | os.PathLike[str]], input_specs, normalize: str = "auto") -> InputSet:
    """Check the files against the model inputs (``input_specs``: (name, per-sample shape, dtype)) and
    return them as an :class:`InputSet`; .npy files are memory-mapped, images decoded when their chunk is due."""
    files = _expand([Path(p) for p in paths])
    names = [n for n, _, _ in input_specs]
    if len(files) == 1 and files[0].suffix == ".npz":
        with np.load(files[0], allow_pickle=False) as z:
            keys = list(z.keys())
            if len(input_specs) == 1 and names[0] not in keys and len(keys) == 1:
                keys_for = {names[0]: keys[0]}
            else:
                missing = [n for n in names if n not in keys]
                if missing:
                    raise InputFileError(f"{files[0]}: no array for input(s) {missing}; it has {keys}; "
                                         f"save one array per input name ({', '.join(names)})")
                keys_for = {n: n for n in names}
            xs = [_fit(z[keys_for[n]], str(files[0]), n, tuple(s), d) for n, s, d in input_specs]
        counts = {len(x) for x in xs}
        if len(counts) != 1:
            raise InputFileError(f"{files[0]}: inputs have different sample counts {sorted(counts)}; "
                                 "every input needs the same")
        return InputSet(len(xs[0]), ((len(xs[0]), lambda: xs),))
    if len(input_specs) != 1:
        raise InputFileError(f"the model takes {len(names)} inputs ({', '.join(names)}): give one .npz file "
                             "with an array per input name")
    name, shape, dtype = input_specs[0]
    shape = tuple(shape)
    parts = []
    for f in files:
        if f.suffix == ".npy":
            try:
                a = np.load(f, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise InputFileError(f"{f}: not a numeric .npy array ({e})") from None
            a = a[None] if tuple(a.shape) == shape else a
            _fit(a[:0], str(f), name, shape, dtype)  # shape and dtype checked now, data read later
            parts.append((len(a), lambda a=a, f=f: [_fit(np.asarray(a), str(f), name, shape, dtype)]))
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            if len(shape) != 3 or shape[0] not in (1, 3):
                load_image(f, shape, normalize)  # raises: names the file and the input shape
            parts.append((1, lambda f=f: [load_image(f, shape, normalize)[None].astype(dtype, copy=False)]))
        else:
            raise InputFileError(f"{f}: unknown input file type; give .npy, .npz or images "
                                 f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return InputSet(sum(c for c, _ in parts), tuple(parts))


def load_inputs(paths: Sequence[str | os.PathLike[str]], input_specs, normalize: str = "auto") -> list[np.ndarray]:
    """Every sample at once: one batch-first array per model input."""
    src = open_inputs(paths, input_specs, normalize)
    (xs,) = src.chunks(max(src.n, 1))
    return xs


def save_outputs(path: str | os.PathLike[str], outputs: list[np.ndarray], names: Sequence[str]) -> Path:
    """Write ``outputs`` to ``path`` (.npy for one output, .npz by name) atomically (temp file + rename)."""
    path = Path(path)
    if path.suffix not in (".npy", ".npz"):
        raise InputFileError(f"{path}: the outputs file must end in .npy or .npz")
    if path.suffix == ".npy" and len(outputs) != 1:
        raise InputFileError(f"{path}: the model has {len(outputs)} outputs ({', '.join(names)}); "
                             "write them to a .npz file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix == ".npy":
                np.save(f, outputs[0])
            else:
                np.savez(f, **dict(zip(names, outputs, strict=True)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_files(pipe, chunks: Iterable[list[np.ndarray]], total: int | None = None, inflight: int = 8,
              progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Send each chunk through ``pipe`` (``connect()``'s API), ``inflight`` at once; outputs in order."""
    futures: deque = deque()
    results: list[list[np.ndarray]] = []
    done = 0

    def collect() -> None:
        nonlocal done
        r = futures.popleft().result()
        results.append(r if isinstance(r, list) else [r])
        done += len(results[-1][0])
        if progress:
            progress(done, total if total is not None else done)

    for xs in chunks:
        futures.append(pipe.submit(xs))
        while len(futures) >= inflight:
            collect()
    while futures:
        collect()
    if not results:
        raise InputFileError("no samples in the inputs")
    return [np.concatenate([r[k] for r in results]) for k in range(len(results[0]))]


def text_progress(stream=sys.stderr, every_s: float = 1.0) -> Callable[[int, int], None]:
    """A progress line at most once per ``every_s`` (and at the end): samples done, rate."""
    t0 = time.monotonic()
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < every_s:
            return
        last[0] = now
        rate = done / max(now - t0, 1e-9)
        print(f"{done}/{total} samples ({rate:.1f}/s)", file=stream, flush=True)

    return show
