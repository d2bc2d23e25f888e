"""Selective search on a Dask cluster (``--scheduler``) gives joblib's proposals."""

import sys
import time

import numpy as np

from minircnn.data import toyvoc
from minircnn.data.voc import VOCDataset
from minircnn.proposals import cache
from minircnn.proposals.__main__ import main

CONFIG = cache.ProposalConfig(mode="single", max_proposals=200)
CLI_CONFIG = ["--mode", "single", "--max-proposals", "200"]


def tiny_set(root):
    toyvoc.generate(root, seed=1, counts={"train": 4}, min_size=64, max_size=96)
    return VOCDataset(root, split="train")


def test_local_cluster_matches_joblib(tmp_path, monkeypatch, capsys):
    ds = tiny_set(tmp_path / "toy")
    t0 = time.perf_counter()
    expected = cache.load_or_compute(ds, CONFIG, tmp_path / "joblib", jobs=2, progress=False)
    t_joblib = time.perf_counter() - t0

    def no_local_search(*args):
        raise AssertionError("computed by joblib in this process, not on the cluster")

    monkeypatch.setattr(cache, "_one_image", no_local_search)
    argv = ["--root", str(tmp_path / "toy"), "--split", "train", *CLI_CONFIG]
    argv += ["--cache-dir", str(tmp_path / "dask"), "--scheduler", "local", "--jobs", "2"]
    t0 = time.perf_counter()
    assert main(argv) == 0
    t_dask = time.perf_counter() - t0
    # the client wrote the cache: reading it back computes nothing (_one_image would raise)
    got = cache.load_or_compute(ds, CONFIG, tmp_path / "dask", jobs=1, progress=False)
    assert len(got) == len(expected) == 4
    for a, b in zip(expected, got, strict=True):
        assert len(a) > 0
        np.testing.assert_array_equal(a, b)
    with capsys.disabled():
        print(
            f"\n4 images: joblib (2 processes) {t_joblib:.1f} s, "
            f"Dask LocalCluster (2 worker processes, start included) {t_dask:.1f} s"
        )


def test_worker_decodes_the_shipped_bytes(tmp_path):
    ds = tiny_set(tmp_path / "toy")
    path = ds[0].path
    shipped = cache._one_encoded_image(str(path), path.read_bytes(), CONFIG)
    np.testing.assert_array_equal(shipped, cache._one_image(path, CONFIG))


def test_missing_dask_names_the_extra(tmp_path, monkeypatch, capsys):
    tiny_set(tmp_path / "toy")
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # import now fails
    argv = ["--root", str(tmp_path / "toy"), "--split", "train", *CLI_CONFIG]
    argv += ["--cache-dir", str(tmp_path / "c"), "--scheduler", "local"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "error: --scheduler needs dask.distributed: pip install 'minircnn[dask]'\n"
    )
