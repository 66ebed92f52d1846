"""A full disk or a read-only output folder: one message naming the file, exit status 2, the previous
files intact and no temporary file left. Tests run as root, where chmod does not stop writes, so the
failures are injected: a writer that fails part-way (ENOSPC after writing some bytes) and a folder
whose temporary files cannot be created (EROFS)."""
import errno
import json
import os
import tempfile

import numpy as np
import pytest
import torch

from mgnet import cli, runs
from mgnet.data.synthetic import generate


def _full_disk_after(nbytes):
    """``fail(target)``: writes ``nbytes`` of junk into the target (a path or a file), then ENOSPC."""
    def fail(target):
        path = target if isinstance(target, (str, os.PathLike)) else getattr(target, "name", None)
        if hasattr(target, "write"):
            target.write(b"\0" * nbytes)
        else:
            with open(target, "wb") as f:
                f.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path) if path else None)
    return fail


def _read_only(*a, **k):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), k.get("dir"))


def _listing(folder):
    return sorted(p.name for p in folder.rglob("*"))


def test_checkpoint_write_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "stage1.pt"
    runs.save_checkpoint(path, {"model": {"w": torch.ones(3)}, "stage": 1})
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: _full_disk_after(100)(f))
    with pytest.raises(runs.RunError, match=r"cannot write .*stage1\.pt: No space left on device") as e:
        runs.save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "stage": 1})
    assert "\n" not in str(e.value) and "unchanged" in str(e.value)
    assert path.read_bytes() == before and _listing(tmp_path / "checkpoints") == ["stage1.pt"]


def test_read_only_folder_keeps_the_previous_file(tmp_path, monkeypatch):
    runs.write_json(tmp_path / "metrics.json", {"auc": 0.5})
    monkeypatch.setattr(tempfile, "mkstemp", _read_only)
    with pytest.raises(runs.RunError, match="metrics.json: Read-only file system"):
        runs.write_json(tmp_path / "metrics.json", {"auc": 0.9})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"auc": 0.5}
    assert _listing(tmp_path) == ["metrics.json"]


def test_files_written_together_change_none_when_the_second_fails(tmp_path, monkeypatch):
    """eval's frame_scores.npz + metrics.json: a full disk on the second leaves both old ones."""
    runs.save_npz(tmp_path / "frame_scores.npz", {"v": np.zeros(3)})
    runs.write_json(tmp_path / "metrics.json", {"auc": 0.5})
    real = runs.json_writer({"auc": 0.9})
    calls = []

    def second_fails(tmp):
        calls.append(tmp)
        real(tmp)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
    with pytest.raises(runs.RunError, match="metrics.json: No space left on device"):
        runs.atomic_write_all([(tmp_path / "frame_scores.npz", runs.npz_writer({"v": np.ones(3)})),
                               (tmp_path / "metrics.json", second_fails)])
    assert calls and json.loads((tmp_path / "metrics.json").read_text()) == {"auc": 0.5}
    assert np.load(tmp_path / "frame_scores.npz")["v"].tolist() == [0, 0, 0]
    assert _listing(tmp_path) == ["frame_scores.npz", "metrics.json"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk") / "data"
    generate(root, "tiny", 0)
    return root


def test_prepare_on_a_full_disk_stops_with_one_line_and_no_half_store(tiny_data, tmp_path, monkeypatch, capsys):
    """The disk fills while the second video's shard is written: status 2, one message, no shard
    folder half-written, no store.json claiming the shards; freed, the same command completes."""
    argv = ["prepare", "experiment=tiny", f"data.root={tiny_data}", f"data.cache_dir={tmp_path}/c",
            "data.splits=[test]"]
    real, n = np.save, {"calls": 0}

    def save(file, arr, *a, **k):
        n["calls"] += 1
        if n["calls"] == 7:   # kps, fg, scene, windows, gt, types .npy: the second video's first
            return _full_disk_after(64)(file)
        return real(file, arr, *a, **k)
    monkeypatch.setattr(np, "save", save)
    assert cli.main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "prepare test" not in ln]
    assert len(err) == 1 and "No space left on device" in err[0] and err[0].startswith("mgnet prepare: error: ")
    store = tmp_path / "c" / "test"
    assert not (store / "store.json").exists()
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]
    done = sorted(p.name for p in (store / "shards").iterdir())
    assert len(done) == 1 and (store / "shards" / done[0] / "shard.json").exists()  # the first video, whole
    monkeypatch.setattr(np, "save", real)
    assert cli.main(argv) == 0
    assert json.loads((store / "store.json").read_text())["build"]["decoded_frames"] > 0
