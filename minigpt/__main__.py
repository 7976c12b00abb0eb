"""The command line: `python -m minigpt COMMAND ...`."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minigpt", description="A transformer inference engine in NumPy."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print Python, NumPy, BLAS and CPU details")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from minigpt.info import describe

        print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
