"""ASiT's Table II in miniature: pretrain a ViT-tiny per row on one fixed budget, then judge its teacher.

    python -m ablation run ROW... [--seeds S...] [--quick]    rows (each skipped if its result exists)
    python -m ablation all [--seeds 0 1 2] [--quick] [--jobs N]  every row, resumable, then the table
    python -m ablation table [--quick]                         results/ablations[-quick].md

Pretraining data: the FSDD takes 5-49 (the data set's train split) of every speaker but the held-out
one, plus the Speech Commands sample, all as unlabelled audio. Evaluation: FSDD with one speaker held out
(test = every take of that speaker; speaker-independent, harder than the data set's own split), by a
linear probe and a k-NN on the frozen teacher (its class token, and the mean of its patch tokens), and
(full budget only) a short fine-tune. The held-out speaker is never heard in pretraining. A row's finished
parts are kept: only what is missing runs.

Other data: DATA=/path (a folder laid out as the project's shared/data), or overrides of the pretraining
and evaluation configs with a results folder of their own, e.g.

    python -m ablation all --runs runs/ablations-mine --pretrain-set data.train=/my/unlabelled \\
        --eval-set data.train=/my/train.csv --eval-set data.val=/my/val.csv \\
        --eval-set data.test=/my/test.csv --eval-set data.fsdd_split=null
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from asit.errors import add_debug_option, run_command
from quality.tasks import data_root

from .rows import BUDGETS, BY_NAME, REPO
from .runner import Plan, default_runs, run_row
from .table import table


def main(argv: list[str] | None = None) -> int:
    # --debug sets ASIT_DEBUG, which run_command reads too.
    return run_command(lambda: ablations(sys.argv[1:] if argv is None else argv))


def ablations(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "all", "table"])
    parser.add_argument("rows", nargs="*", help="rows for `run` (default for `all`: every row)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true", help="the short budget, one fine-tune-free pass")
    parser.add_argument("--jobs", type=int, default=1, help="rows run side by side, sharing the cores")
    parser.add_argument("--held-out", default="george", help="the FSDD speaker never heard in pretraining")
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override every row's pretraining config (repeatable), e.g. data.train=/my/audio")
    parser.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the evaluations' config, configs/finetune/tiny_fsdd.yaml (repeatable)")
    parser.add_argument("--runs", type=Path, help="results folder (default runs/ablations/<budget>); required "
                        "with overrides, so that their results never mix with the default's")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    if args.debug:
        os.environ["ASIT_DEBUG"] = "1"  # the rows' commands too: their tracebacks go to commands.log
    budget = BUDGETS["quick" if args.quick else "full"]
    unknown = [r for r in args.rows if r not in BY_NAME]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(BY_NAME)}")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    custom = bool(args.pretrain_set or args.eval_set)
    if custom and args.runs is None:
        parser.error("--pretrain-set / --eval-set change the results: give them a folder of their own with --runs")
    plan = Plan(budget, args.held_out, (args.runs or default_runs(budget)).resolve(),
                tuple(args.pretrain_set), tuple(args.eval_set))
    if args.command in ("run", "all"):
        if plan.default_data() and not (data_root() / "fsdd" / "recordings").is_dir():
            parser.error(f"no FSDD recordings under {data_root()} (the {' and '.join(plan.default_data())} "
                         f"data): set DATA=/path/to/shared/data, or override data.train")
        if args.jobs > 1:
            # Small models use many cores poorly: two 1-thread runs side by side finish
            # sooner than one after the other with 2 threads each.
            os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
        pool = ThreadPoolExecutor(args.jobs)
        try:
            runs = [pool.submit(run_row, BY_NAME[name], seed, plan)
                    for name in args.rows or list(BY_NAME) for seed in args.seeds]
            for future in runs:
                print(json.dumps(future.result()), flush=True)
        finally:
            pool.shutdown(cancel_futures=True)  # after a failure, start nothing more
    if args.command in ("all", "table"):
        if custom or args.runs is not None:
            command = shlex.join(["python", "-m", "ablation", *argv])
            out = plan.root / "table.md"
        else:
            command = "make ablations-quick" if args.quick else "make ablations"
            out = REPO / "results" / f"ablations{'-quick' if args.quick else ''}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table(plan, command))
        print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
