"""python -m quality [run NAME... | table] [--seeds 0 1]: see quality/experiments.py and results/quality.md."""

import argparse
import sys

from .experiments import BY_NAME, CURVE, EXPERIMENTS, RECIPE
from .run import run
from .table import load_results, render
from .tasks import REPO


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quality", description=__doc__)
    parser.add_argument("command", choices=["run", "table"], nargs="?", default="run")
    parser.add_argument("names", nargs="*", help=f"experiments (default: the recipe, {RECIPE}); "
                        f"known: {', '.join(BY_NAME)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--classic-only", action="store_true",
                        help="probe the classic readout only, not the frequency readout too (a quicker search)")
    parser.add_argument("--finetune", action="store_true",
                        help="also fine-tune the teacher and a scratch ViT on every task (configs/quality/finetune.yaml)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown experiment {unknown[0]}")
    retired = [n for n in args.names if BY_NAME[n].retired]
    if args.command == "run" and retired:
        parser.error(f"{retired[0]} cannot be rerun: {BY_NAME[retired[0]].retired}")
    if args.command == "run":
        for name in args.names or [RECIPE]:
            for seed in args.seeds:
                run(BY_NAME[name], seed, freq=not args.classic_only, finetune=args.finetune)
    table = render(load_results(), RECIPE, [e.name for e in EXPERIMENTS], CURVE)
    path = REPO / "results" / "quality.md"
    path.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
