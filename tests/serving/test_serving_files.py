"""File inputs for `edgeplan infer`: chunked reading, errors naming the file, atomic output writes."""

from __future__ import annotations

import numpy as np
import pytest

from edgeplan.infer_files import InputFileError, load_inputs, open_inputs, run_files, save_outputs

SPECS = [("x", (2, 3), "float32")]


def _arr(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 2, 3)).astype(np.float32)


def test_folder_of_npy_files_is_read_in_chunks_in_name_order(tmp_path):
    parts = {"a.npy": _arr(3, 0), "b.npy": _arr(1, 1)[0], "c.npy": _arr(5, 2)}  # b: one sample, no batch dim
    for name, a in parts.items():
        np.save(tmp_path / name, a)
    src = open_inputs([tmp_path], SPECS)
    assert src.n == 9
    chunks = list(src.chunks(4))
    assert [len(c[0]) for c in chunks] == [4, 4, 1]
    want = np.concatenate([parts["a.npy"], parts["b.npy"][None], parts["c.npy"]])
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), want)
    np.testing.assert_array_equal(load_inputs([tmp_path], SPECS)[0], want)


def test_float64_npy_is_cast_and_wrong_shapes_are_named_before_anything_runs(tmp_path):
    np.save(tmp_path / "f64.npy", _arr(2, 0).astype(np.float64))
    (x,) = load_inputs([tmp_path / "f64.npy"], SPECS)
    assert x.dtype == np.float32 and x.shape == (2, 2, 3)
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 2), np.float32))
    with pytest.raises(InputFileError, match=r"bad\.npy.*'x'.*\[-1, 2, 3\]"):
        open_inputs([tmp_path / "f64.npy", tmp_path / "bad.npy"], SPECS)
    np.save(tmp_path / "ints.npy", np.zeros((1, 2, 3), np.complex64))
    with pytest.raises(InputFileError, match=r"ints\.npy.*complex64"):
        open_inputs([tmp_path / "ints.npy"], SPECS)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(InputFileError, match=r"notes\.txt.*unknown input file type"):
        open_inputs([tmp_path / "notes.txt"], SPECS)
    with pytest.raises(InputFileError, match="no such file"):
        open_inputs([tmp_path / "missing"], SPECS)


def test_npz_by_input_name_and_images_need_an_image_shaped_input(tmp_path):
    specs = [("a", (2,), "float32"), ("b", (1,), "int64")]
    np.savez(tmp_path / "in.npz", a=np.ones((3, 2), np.float32), b=np.arange(3)[:, None])
    a, b = load_inputs([tmp_path / "in.npz"], specs)
    assert a.shape == (3, 2) and b.dtype == np.int64
    np.savez(tmp_path / "half.npz", a=np.ones((3, 2), np.float32))
    with pytest.raises(InputFileError, match=r"half\.npz.*\['b'\]"):
        open_inputs([tmp_path / "half.npz"], specs)
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "p.png")
    with pytest.raises(InputFileError, match=r"p\.png.*\[C, H, W\]"):
        open_inputs([tmp_path / "p.png"], SPECS)


class _Echo:
    """connect()-like: outputs 2x and x+1 per sample, futures resolved at once."""

    def submit(self, xs):
        from concurrent.futures import Future

        f: Future = Future()
        f.set_result([2 * xs[0], xs[0] + 1])
        return f


def test_run_files_keeps_order_and_reports_progress(tmp_path):
    np.save(tmp_path / "x.npy", _arr(10, 5))
    src = open_inputs([tmp_path / "x.npy"], SPECS)
    seen = []
    y2, y1 = run_files(_Echo(), src.chunks(3), src.n, inflight=2, progress=lambda d, t: seen.append((d, t)))
    np.testing.assert_array_equal(y2, 2 * _arr(10, 5))
    assert seen[-1] == (10, 10) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_save_outputs_is_atomic_and_checks_the_suffix(tmp_path, monkeypatch):
    out = tmp_path / "o" / "y.npz"
    save_outputs(out, [np.ones(2), np.zeros(3)], ["p", "q"])
    with np.load(out) as z:
        assert sorted(z.files) == ["p", "q"]
    with pytest.raises(InputFileError, match="2 outputs"):
        save_outputs(tmp_path / "y.npy", [np.ones(2), np.zeros(3)], ["p", "q"])
    with pytest.raises(InputFileError, match=r"\.npy or \.npz"):
        save_outputs(tmp_path / "y.csv", [np.ones(2)], ["p"])
    np.save(tmp_path / "keep.npy", np.arange(3))

    def half_then_fail(f, a):
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_outputs(tmp_path / "keep.npy", [np.ones(5)], ["p"])
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(tmp_path / "keep.npy"), np.arange(3))  # the old file is intact
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left
