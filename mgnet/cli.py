"""`mgnet` command line: one entry point, one subcommand per job.

Each subcommand lives in its own module as ``main(argv: list[str]) -> int``; this file only routes.
Subcommands that take a config accept hydra overrides (``key=value``, ``group=option``).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "synth": ("mgnet.data.synthetic", "write the built-in synthetic benchmark (ShanghaiTech layout)"),
    "prepare": ("mgnet.data.prepare", "decode videos once into the prepared-clip store"),
    "train": ("mgnet.train", "train the four stages (resumable)"),
    "eval": ("mgnet.evaluate", "score the test split and report frame AUCs"),
    "demo": ("mgnet.demo", "synthesise, prepare, train and evaluate the small benchmark"),
    "score": ("mgnet.score_videos", "score your own videos with a trained run"),
}


def _usage() -> str:
    lines = ["usage: mgnet <command> [args...]", "", "commands:"]
    lines += [f"  {name:<8} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines += ["", "`mgnet <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"mgnet: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    from mgnet.config_schema import ConfigError
    try:
        return int(module.main(rest) or 0)
    except ConfigError as exc:  # a bad option (argparse) or config value outside a job's own handler
        print(f"mgnet {cmd}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mgnet: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, read-only folder, no permission: one line, status 2
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mgnet {cmd}: error: cannot write or read {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
