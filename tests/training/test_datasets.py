"""Data set readers: CIFAR-10 binary and MNIST IDX files written here in their formats, fitting, subsets, errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeplan.cli import app
from edgeplan.training import data, launch

from .training_helpers import training_plan


def write_cifar(folder, counts=(6, 4), test=5, seed=0):
    """CIFAR-10 binary batches: per record one label byte, then 1,024 R, 1,024 G, 1,024 B bytes (row-major)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    names = [f"data_batch_{i + 1}.bin" for i in range(len(counts))] + ["test_batch.bin"]
    for name, n in zip(names, (*counts, test), strict=True):
        y = rng.integers(0, 10, n, dtype=np.uint8)
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([y[:, None], x.reshape(n, -1)], axis=1).tobytes())
        written[name] = (x, y)
    return written


def write_idx(path, arr: np.ndarray, gz: bool = False):
    """IDX: magic (0, 0, 0x08 = unsigned byte, ndim), big-endian uint32 dims, then the bytes."""
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    body = head + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(body) if gz else body)


def write_mnist(folder, n_train=12, n_test=7, gz=False, seed=1):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", x, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", y, gz)
        out[split] = (x, y)
    return out


def test_cifar_binary_reads_records_in_file_order_normalised(tmp_path):
    written = write_cifar(tmp_path / "cifar")
    x, y, desc = data.load_dataset(tmp_path / "cifar", (3, 32, 32), "train")
    rx = np.concatenate([written["data_batch_1.bin"][0], written["data_batch_2.bin"][0]])
    ry = np.concatenate([written["data_batch_1.bin"][1], written["data_batch_2.bin"][1]])
    assert x.shape == (10, 3, 32, 32) and x.dtype == np.float32 and np.array_equal(y, ry)
    # channel planes R, G, B in that order, scaled to [0, 1] then normalised by CIFAR-10's mean/std
    for c in range(3):
        want = (rx[:, c] / 255.0 - data.CIFAR_MEAN[c]) / data.CIFAR_STD[c]
        np.testing.assert_allclose(x[:, c], want, atol=1e-5)
    assert desc.startswith("CIFAR-10 binary in ") and "train: 10 samples" in desc and "3x32x32 as is" in desc
    xt, yt, _ = data.load_dataset(tmp_path / "cifar", (3, 32, 32), "test")
    assert len(xt) == 5 and np.array_equal(yt, written["test_batch.bin"][1])
    # LeNet takes grey 32x32: the three normalised planes are averaged
    grey, _, desc = data.load_dataset(tmp_path / "cifar", (1, 32, 32), "train")
    np.testing.assert_allclose(grey[:, 0], x.mean(axis=1), atol=1e-5)
    assert "3x32x32 -> 1x32x32 (channels averaged to grey)" in desc


def test_mnist_idx_plain_and_gz_padded_to_32(tmp_path):
    for gz in (False, True):
        folder = tmp_path / f"mnist{gz}"
        written = write_mnist(folder, gz=gz)
        x, y, desc = data.load_dataset(folder, (1, 32, 32), "train")
        assert x.shape == (12, 1, 32, 32) and np.array_equal(y, written["train"][1])
        inner = (written["train"][0] / 255.0 - data.MNIST_MEAN[0]) / data.MNIST_STD[0]
        np.testing.assert_allclose(x[:, 0, 2:30, 2:30], inner, atol=1e-5)  # 28 -> 32: 2 zero rows each side
        assert np.all(x[:, 0, :2] == 0) and np.all(x[:, 0, :, 30:] == 0)
        assert desc.startswith("MNIST IDX in") and "1x28x28 -> 1x32x32 (zero-padded)" in desc
        xt, yt, _ = data.load_dataset(folder, (3, 56, 56), "test")  # x2 upsampled, grey to RGB
        assert xt.shape == (7, 3, 56, 56) and np.array_equal(yt, written["t10k"][1])
        np.testing.assert_array_equal(xt[:, 0, ::2, ::2], xt[:, 2, 1::2, 1::2])


def test_downsampling_to_a_smaller_input(tmp_path):
    write_cifar(tmp_path / "c")
    x, _, desc = data.load_dataset(tmp_path / "c", (3, 16, 16), "train")
    full, _, _ = data.load_dataset(tmp_path / "c", (3, 32, 32), "train")
    assert x.shape == (10, 3, 16, 16) and "nearest-neighbour downsampled" in desc
    np.testing.assert_array_equal(x, full[:, :, ::2, ::2])


def test_samples_is_a_fixed_subset_said_in_the_description(tmp_path):
    write_cifar(tmp_path / "c", counts=(30,), test=20)
    a, ya, desc = data.load_dataset(tmp_path / "c", (3, 32, 32), "train", samples=8, seed=3)
    b, yb, _ = data.load_dataset(tmp_path / "c", (3, 32, 32), "train", samples=8, seed=3)
    full, yf, _ = data.load_dataset(tmp_path / "c", (3, 32, 32), "train")
    assert len(a) == 8 and np.array_equal(a, b) and np.array_equal(ya, yb)
    # the subset's samples are samples of the file, each once
    rows = {full[i].tobytes() for i in range(len(full))}
    assert all(s.tobytes() in rows for s in a) and len({s.tobytes() for s in a}) == 8
    assert "8 of 30 samples (fixed seeded subset, --samples)" in desc
    c, _, _ = data.load_dataset(tmp_path / "c", (3, 32, 32), "train", samples=8, seed=4)
    assert not np.array_equal(a, c)
    ds = data.load(str(tmp_path / "c"), (3, 32, 32), seed=0, samples=8)
    assert (len(ds.x_train), len(ds.x_test)) == (8, 8) and "train 8 of 30" in ds.description


def test_default_is_digits_and_says_so():
    x, y, desc = data.load_dataset(None, (1, 32, 32), "train")
    assert x.shape[1:] == (1, 32, 32) and len(x) == 1438
    assert desc.startswith("scikit-learn digits (no --dataset-dir given)") and "upsampled x4" in desc
    xt, _, _ = data.load_dataset(None, (1, 32, 32), "test")
    assert len(x) + len(xt) == 1797


def test_errors_name_the_file_and_what_was_expected(tmp_path):
    write_cifar(tmp_path / "c")
    with (tmp_path / "c" / "data_batch_2.bin").open("ab") as f:
        f.write(b"\0" * 10)  # a torn record
    with pytest.raises(data.DataError, match=r"data_batch_2.bin: 12302 bytes is not a whole number of CIFAR-10 "
                                             r"records of 3073 bytes"):
        data.load_dataset(tmp_path / "c", (3, 32, 32), "train")
    (tmp_path / "m").mkdir()
    write_idx(tmp_path / "m" / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte", np.zeros((3, 28, 28)))  # 3 dims: not labels
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte: magic number 0x00000803 is not that of "
                                             r"IDX labels"):
        data.load_dataset(tmp_path / "m", (1, 28, 28), "train")
    with pytest.raises(data.DataError, match=r"no t10k-images-idx3-ubyte or t10k-labels-idx1-ubyte"):
        data.load_dataset(tmp_path / "m", (1, 28, 28), "test")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "readme.txt").write_text("hi")
    with pytest.raises(data.DataError, match=r"no data set found \(it holds readme.txt\); expected one of: "
                                             r"CIFAR-10 binary"):
        data.load_dataset(tmp_path / "e", (3, 32, 32))
    with pytest.raises(data.DataError, match="not a folder"):
        data.load_dataset(tmp_path / "nope", (3, 32, 32))


def test_train_dataset_dir_on_the_command_line(tmp_path):
    write_cifar(tmp_path / "cifar", counts=(40,), test=10)
    plan = training_plan("lenet5", (), ((4, 4),), batch=8, microbatches=1)
    art = launch.prepare(plan, "lenet5", tmp_path / "art")
    r = CliRunner().invoke(app, ["train", str(art), "--local", "--dataset-dir", str(tmp_path / "cifar"),
                                 "--samples", "24", "--timeout", "30"])
    assert r.exit_code == 0, r.output
    assert "data: CIFAR-10 binary in" in r.output and "train 24 of 40 samples" in r.output, r.output
    assert "epoch 1:" in r.output  # 24 samples / batch 8: three iterations
    assert launch.load(art) and (art / "run" / "metrics.json").exists()
    from edgeplan import jsonio

    row = jsonio.read(art / "run" / "metrics.json")["epochs"][0]
    assert row["iterations"] == 3
    # what each board used (the study of issue 15 reports it): CPU, memory; network only where boards
    # have their own interfaces (not in a local run)
    for dev in ("board0a", "board0b"):
        b = row["boards"][dev]
        assert b["cpu_s"] > 0 and 0 < b["cpu_cores"] < 4 and b["peak_rss_bytes"] > 50e6, b
        assert b["net_rx_bytes"] is None and b["net_tx_bytes"] is None
    r = CliRunner().invoke(app, ["train", str(art), "--local", "--dataset-dir", str(tmp_path / "cifar"),
                                 "--dataset", "digits"])
    assert r.exit_code != 0 and "not both" in r.output


def test_net_bytes_counts_every_interface_but_loopback(tmp_path):
    from edgeplan.training.metrics import net_bytes

    dev = tmp_path / "dev"
    dev.write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
        "carrier compressed\n"
        "    lo: 1000      10    0    0    0     0          0         0     1000      10    0    0    0     0 0 0\n"
        "  eth0: 5000      40    0    0    0     0          0         0     7000      50    0    0    0     0 0 0\n"
        "veth-x:  300       3    0    0    0     0          0         0      200       2    0    0    0     0 0 0\n")
    assert net_bytes(str(dev)) == (5300, 7200)
    assert net_bytes(str(tmp_path / "absent")) == (0, 0)
