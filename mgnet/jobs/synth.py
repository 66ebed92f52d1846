"""`mgnet synth`: write the built-in synthetic benchmark (mgnet.data.synthetic)."""
from __future__ import annotations

import argparse

from mgnet import config_schema
from mgnet.data import synth_variants, synthetic


def build_parser() -> argparse.ArgumentParser:
    ap = config_schema.ArgumentParser(prog="mgnet synth", description=synthetic.__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (ShanghaiTech layout)")
    ap.add_argument("--size", default="small", choices=sorted(synthetic.SIZES), help="tiny (tests), small (demo), full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="default", choices=list(synth_variants.VARIANTS),
                    help="generator variant (mgnet.data.synth_variants; default: the demo's benchmark)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: min(2, cores))")
    ap.add_argument("--force", action="store_true", help="replace an existing, different folder at --out")
    return ap


def usage() -> str:
    return build_parser().format_help()


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    config_schema.check_args(config_schema.SynthArgs, args)  # before anything is generated
    meta = synthetic.generate(args.out, args.size, args.seed, args.workers, args.force, args.variant)
    vids = meta["videos"]
    n_train = sum(v["frames"] for v in vids.values() if v["split"] == "train")
    n_test = sum(v["frames"] for v in vids.values() if v["split"] == "test")
    ab = sum(v["abnormal_frames"] for v in vids.values())
    print(f"mgnet synth: {args.out}: {meta['size']} seed {meta['seed']}, {len(meta['scenes'])} scenes, "
          f"{n_train} train frames, {n_test} test frames ({ab} abnormal), {meta['generation_seconds']} s")
    return 0
