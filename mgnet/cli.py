"""`mgnet` command line: one entry point, one subcommand per job (mgnet/jobs/<job>.py).

A job module holds ``usage() -> str`` and ``main(argv: list[str]) -> int``; this file routes to it,
answers ``--help`` with the job's usage, and turns the project's errors (a bad run folder, bad
input data, a bad config or argument) into one line ``mgnet <command>: error: ...`` on stderr and
the command's error status (2 for every command, as the README promises; `synth` and `prepare`
used 1 before). A config or option error (mgnet.config_schema.ConfigError) is a ValueError; an
OSError (disk full, read-only folder) is one line naming the file, with status 2 too. Subcommands that take a
config accept hydra overrides (``key=value``, ``group=option``).
"""
from __future__ import annotations

import importlib
import sys

from mgnet.data.errors import DataError
from mgnet.runs import RunError

# command -> (job module, summary, exit status on a project error)
COMMANDS = {
    "synth": ("mgnet.jobs.synth", "write the built-in synthetic benchmark (ShanghaiTech layout)", 2),
    "prepare": ("mgnet.jobs.prepare", "decode videos once into the prepared-clip store", 2),
    "train": ("mgnet.jobs.train", "train the four stages (resumable)", 2),
    "eval": ("mgnet.jobs.evaluate", "score the test split and report frame AUCs", 2),
    "demo": ("mgnet.jobs.demo", "synthesise, prepare, train and evaluate the small benchmark", 2),
    "score": ("mgnet.jobs.score", "score your own videos with a trained run", 2),
    "protocol": ("mgnet.jobs.protocol", "train and evaluate on benchmark variants x seeds: mean/min AUC table", 2),
    "export": ("mgnet.jobs.export", "export a trained run as ONNX / torch.export for deployment", 2),
}
# the project's errors: run folders, input data, configs and arguments (compose_config raises ValueError)
PROJECT_ERRORS = (RunError, DataError, ValueError, FileNotFoundError)


def _usage() -> str:
    lines = ["usage: mgnet <command> [args...]", "", "commands:"]
    lines += [f"  {name:<8} {doc}" for name, (_, doc, _) in COMMANDS.items()]
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
    path, _, error_status = COMMANDS[cmd]
    job = importlib.import_module(path)
    if any(a in ("-h", "--help") for a in rest):
        print(job.usage().rstrip("\n"))
        return 0
    try:
        return int(job.main(rest) or 0)
    except PROJECT_ERRORS as exc:
        print(f"mgnet {cmd}: error: {exc}", file=sys.stderr)
        return error_status
    except KeyboardInterrupt:
        print("mgnet: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, read-only folder, no permission: one line, status 2
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mgnet {cmd}: error: cannot write or read {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
