"""`python -m tests.system.chaos [--seconds N] [--rounds R] [--seed S] [--keep]`, from the repo
root: one chaos run (see the package's docstring); exits 1 when a guarantee was violated."""

from __future__ import annotations

import argparse
import asyncio
import sys

from tests.system import chaos
from tests.system.chaos.run import Config, main

parser = argparse.ArgumentParser(
    prog="python -m tests.system.chaos",
    description=chaos.__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
parser.add_argument("--seconds", type=float, default=Config.seconds, help="of load and kills")
parser.add_argument("--seed", type=int, default=Config.seed)
parser.add_argument("--rounds", type=int, default=Config.rounds, help="at least this many kills of each kind")
parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, data)")
args = parser.parse_args()
results = asyncio.run(main(Config(seconds=args.seconds, seed=args.seed, rounds=args.rounds, keep=args.keep)))
sys.exit(1 if any(results["violations"].values()) else 0)
