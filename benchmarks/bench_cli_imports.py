"""How long does a `saflex-bench` call spend importing before it does anything?

    python benchmarks/bench_cli_imports.py [--repeat 5]

Runs each listing command and `--help` in a fresh interpreter and prints the median wall time and
whether torch was imported (it must not be: listing names needs no tensors).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = (["--help"], ["list", "tasks"], ["list", "methods"], ["list", "learners"], ["list", "models"], ["list", "knobs"])
PROBE = ("import sys, runpy; sys.argv = ['saflex-bench', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('bench.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules))")


def measure(argv: list[str], repeat: int) -> tuple[float, bool]:
    times, torch_loaded = [], False
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t0)
        torch_loaded |= "TORCH=1" in out.stderr
    return statistics.median(times), torch_loaded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    base, _ = measure(["--version"], args.repeat)
    print(f"{'command':24s}{'wall s':>8s}{'torch?':>8s}")
    for argv in COMMANDS:
        wall, torch_loaded = measure(argv, args.repeat)
        print(f"{' '.join(argv):24s}{wall:8.3f}{'yes' if torch_loaded else 'no':>8s}")
    print(f"(interpreter + --version alone: {base:.3f} s)")


if __name__ == "__main__":
    main()
