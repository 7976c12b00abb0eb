"""Run every benchmark: python -m benchmarks [--quick | --replot] [NAME ...].

Results go to benchmarks/results/ (a temporary folder with --quick), or to the
folder named by $MINIGPT_RESULTS, from which the next `mkdocs build` also reads.
`--replot` measures nothing: it draws the charts again from the stored results.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help="run only these (e.g. matmul layout)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, for a smoke run")
    parser.add_argument("--replot", action="store_true",
                        help="measure nothing: redraw the charts from stored results")
    args = parser.parse_args(argv)
    here = Path(__file__).parent
    found = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)])
                   if m.name.startswith("bench_"))
    unknown = set(args.names) - set(found)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; "
                     f"available: {', '.join(found)}")
    from benchmarks import common

    common.WRITE = not args.quick
    if args.replot:
        for name in args.names or found:
            drawn = common.replot(importlib.import_module(f"benchmarks.bench_{name}"),
                                  name)
            print(f"[replot] {name}: {'drawn' if drawn else 'no chart'}", flush=True)
        return 0
    for name in args.names or found:
        start = time.perf_counter()
        module = importlib.import_module(f"benchmarks.bench_{name}")
        common.start_run()
        module.run(quick=args.quick)
        print(f"[bench] {name}: {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
