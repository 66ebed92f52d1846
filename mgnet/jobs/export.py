"""`mgnet export`: a finished run as one model file that scores person clips (mgnet.deploy.export).

    mgnet export --run runs/demo --format onnx --out deploy/demo-onnx [--verify]
    mgnet export --run runs/demo --format torch --out deploy/demo-pt2 [--verify]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mgnet.deploy.export import FORMATS, run_export


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mgnet export", description="Export a trained run for deployment.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="a finished training run folder (stage 4 + score_stats.json)")
    p.add_argument("--format", default="onnx", choices=tuple(FORMATS), help="onnx (model.onnx) or torch (model.pt2)")
    p.add_argument("--out", required=True, type=Path, help="output folder (created; an earlier export there is replaced)")
    p.add_argument("--verify", action="store_true", help="compare with the torch model on the run's test clips")
    p.add_argument("--batch-size", type=int, default=64, help="clips per batch in --verify")
    p.add_argument("--threads", type=int, default=None, help="torch / onnxruntime CPU threads")
    return p


def usage() -> str:
    return build_parser().format_help()


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    run_export(args.run, args.format, args.out, args.verify, args.batch_size, args.threads,
               log=lambda m: print(m, file=sys.stderr))
    return 0
