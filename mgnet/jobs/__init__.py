"""One module per `mgnet` command. Each holds ``usage() -> str`` and ``main(argv) -> int``: it parses
its arguments, calls library code and prints. The project's errors propagate to mgnet.cli, which
turns them into one message and the exit status; a job never imports another job, and no library
module imports a job (tests/test_layers.py)."""
