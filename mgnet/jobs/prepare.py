"""`mgnet prepare`: decode videos once into the prepared-clip store (mgnet.data.prepare)."""
from __future__ import annotations

import time

from mgnet import config_schema
from mgnet.data import prepare


def usage() -> str:
    return ("usage: mgnet prepare [hydra overrides...]\n\n" + prepare.__doc__.split("\n\n")[1] + "\n\n"
            "examples:\n  mgnet prepare                               # the synthetic benchmark (small)\n"
            "  mgnet prepare data=shanghaitech data.root=/data/shanghaitech\n"
            "  mgnet prepare data=ubnormal data.root=/data/UBnormal 'data.splits=[train,test]'")


def main(argv) -> int:
    dcfg = config_schema.compose(argv).data  # checked before any data is generated or prepared
    splits = list(dcfg.get("splits") or ["train", "test"])
    for split in splits:
        t = time.time()
        store = prepare.prepare_split(dcfg, split, progress=True)
        b = store.meta.get("build", {})
        print(f"mgnet prepare: {split}: {len(store)} clips from {len(store.videos)} videos -> {store.path} "
              f"({b.get('decoded_frames', 0)} frames decoded in {time.time() - t:.1f} s)")
    return 0
