"""Data pipeline speed: synthetic generation, prepare throughput (frames/s, decord batch reads) and
prepared-store read throughput (clips/s through a DataLoader), on the synthetic benchmark.

    python -m pytest bench/test_data.py -q -s      # -s shows the summary lines

The `small` benchmark is generated once into $MGNET_BENCH_DATA (default: <tmp>/mgnet-bench-data) and
reused. Results are printed and saved as bench/results/data-<cpu|gpu>-<stamp>.json (or under
$MGNET_BENCH_OUT). Data loading must not limit training: compare clips/s here with the model's
training-step clips/s in bench/test_model.py.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
import time

import pytest
import torch

from mgnet.data import prepare, synthetic

ROOT = os.environ.get("MGNET_BENCH_DATA", os.path.join(tempfile.gettempdir(), "mgnet-bench-data"))
RESULTS = {}


def _cfg(root, size, cache_dir):
    return dict(kind="synthetic", root=root, cache_dir=cache_dir, seg_len=16, train_stride=4, test_stride=1,
                crop_size=64, scene_size=64, synth={"size": size, "seed": 0})


@pytest.fixture(scope="module", autouse=True)
def _save():
    yield
    if not RESULTS:
        return
    out = os.environ.get("MGNET_BENCH_OUT", os.path.join(os.path.dirname(__file__), "results"))
    os.makedirs(out, exist_ok=True)
    kind = "gpu" if torch.cuda.is_available() else "cpu"
    path = os.path.join(out, f"data-{kind}-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "results": RESULTS}, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"\nmgnet data bench (saved to {path}):")
    for k, v in RESULTS.items():
        print(f"  {k}: {v}")


@pytest.fixture(scope="module")
def small_root():
    root = os.path.join(ROOT, "synthetic-small")
    t = time.time()
    meta = synthetic.generate(root, "small", 0)
    if time.time() - t > 1:
        RESULTS["generate small (s)"] = round(time.time() - t, 1)
    return root, meta


def test_generate_tiny(benchmark, tmp_path):
    def run():
        shutil.rmtree(tmp_path / "tiny", ignore_errors=True)
        synthetic.generate(tmp_path / "tiny", "tiny", 0)
    benchmark.pedantic(run, rounds=2, iterations=1)
    RESULTS["generate tiny (s)"] = round(benchmark.stats.stats.min, 2)


@pytest.mark.parametrize("split", ["train", "test"])
def test_prepare_throughput(benchmark, small_root, tmp_path, split):
    root, meta = small_root
    cache = str(tmp_path / "prepared")
    stores = []

    def run():
        shutil.rmtree(cache, ignore_errors=True)
        stores.append(prepare.prepare_split(_cfg(root, "small", cache), split, progress=False))
    benchmark.pedantic(run, rounds=1, iterations=1)
    store = stores[-1]
    frames = store.meta["build"]["decoded_frames"]
    fps = frames / benchmark.stats.stats.min
    benchmark.extra_info.update(frames=frames, frames_per_s=fps, clips=len(store))
    RESULTS[f"prepare {split} (frames/s)"] = f"{fps:.0f} ({frames} frames, {len(store)} clips, "\
                                             f"{benchmark.stats.stats.min:.1f} s)"


@pytest.fixture(scope="module")
def store(small_root):
    root, _ = small_root
    return prepare.prepare_split(_cfg(root, "small", os.path.join(root, "prepared")), "test", progress=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_store_read_throughput(benchmark, store, workers):
    n = min(len(store), 2048)
    sub = torch.utils.data.Subset(store, torch.randperm(len(store), generator=torch.Generator().manual_seed(0))[:n])

    def run():
        dl = torch.utils.data.DataLoader(sub, batch_size=32, num_workers=workers, shuffle=True,
                                         persistent_workers=False)
        for b in dl:
            assert b["rgb"].dtype == torch.uint8
    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1)
    cps = n / benchmark.stats.stats.min
    benchmark.extra_info.update(clips=n, clips_per_s=cps)
    RESULTS[f"store read, DataLoader workers={workers} (clips/s)"] = f"{cps:.0f} (batch 32, shuffled, {n} clips)"
