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
import platform
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asit.metrics import rank_correlation
from asit.sources import list_audio, write_csv

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "ablation"
FSDD_NAME = re.compile(r"(\d)_([a-z]+)_(\d+)\.wav$")


@dataclass(frozen=True)
class Row:
    name: str  # its config is configs/ablation/<name>.yaml; "scratch" has none (no pretraining)
    what: str
    paper: str  # the paper's AS-20K mAP after fine-tuning a ViT-S (method.md section 7), or its claim


ROWS = [
    Row("scratch", "no pretraining", "12.6"),
    Row("nocorr_rec", "reconstruction, no corruption", "16.6"),
    Row("nocorr_global", "global, no corruption", "20.2"),
    Row("local", "corruption + local", "23.9"),
    Row("rec", "corruption + reconstruction", "25.5"),
    Row("local_global", "corruption + local + global", "25.9"),
    Row("rec_global", "corruption + reconstruction + global", "27.1"),
    Row("rec_local", "corruption + reconstruction + local", "27.6"),
    Row("full", "corruption + reconstruction + local + global", "28.1"),
    Row("aligned", "full, blocks aligned to patches", "26.9 (10 ep.)"),
    Row("ratio_03", "full, corruption ratio 0.3", "best at 0.6-0.8"),
    Row("ratio_05", "full, corruption ratio 0.5", "best at 0.6-0.8"),
    Row("ratio_07", "full, corruption ratio 0.7", "best at 0.6-0.8"),
    Row("ratio_09", "full, corruption ratio 0.9", "best at 0.6-0.8"),
    Row("local_all", "full, local loss on all tokens", "-"),
    Row("rec_weight_2", "full, reconstruction weight 2", "-"),
]
BY_NAME = {row.name: row for row in ROWS}


@dataclass(frozen=True)
class Budget:
    name: str
    pretrain: list[str]  # overrides of configs/ablation/base.yaml
    finetune_epochs: int  # 0: no fine-tune, frozen evaluations only
    # What the frozen probes read. Only the global loss trains the class token, so rows without it are
    # judged on the patch tokens too (left out of the quick budget, which must stay under 30 minutes).
    features: tuple[str, ...] = ("cls", "mean")


BUDGETS = {
    "quick": Budget("quick", ["train.epochs=2"], 0, features=("cls",)),
    "full": Budget("full", [], 4),
}


def data_root() -> Path:
    return Path(os.environ.get("DATA", REPO.parent / "shared" / "data"))


def pretraining_csv(out: Path, held_out: str) -> Path:
    """FSDD's train takes of the other speakers + the Speech Commands sample, as one CSV."""
    root = data_root()
    fsdd = [i for i in list_audio(root / "fsdd" / "recordings")
            if (m := FSDD_NAME.search(i.path)) and int(m[3]) >= 5 and m[2] != held_out]
    commands = list_audio(root / "speech_commands_sample") if (root / "speech_commands_sample").is_dir() else []
    path = out / "pretrain.csv"
    write_csv(fsdd + commands, path)
    return path


def run(args: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write("$ " + shlex.join(args) + "\n")
        f.flush()
        result = subprocess.run(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}): {shlex.join(args)}; see {log}")


def final_entropy(run_dir: Path) -> float | None:
    """The teacher's global-head entropy at the end, as a fraction of ln K (collapse: near 0 or 1)."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    keys = ("collapse/global_entropy_frac", "collapse/local_entropy_frac")
    values = [r[k] for r in rows[-1:] for k in keys if k in r]
    return values[0] if values else None


@dataclass(frozen=True)
class Plan:
    """What every row shares: budget, held-out speaker, where results go, and the user's overrides."""
    budget: Budget
    held_out: str
    root: Path
    pretrain_set: tuple[str, ...] = ()  # key=value overrides of every row's pretraining config
    eval_set: tuple[str, ...] = ()  # ... and of the evaluations' (configs/finetune/tiny_fsdd.yaml)

    def default_data(self) -> list[str]:
        """Which of the shared-data defaults are in use ("pretraining", "evaluation"): not overridden."""
        return [name for name, overrides in (("pretraining", self.pretrain_set), ("evaluation", self.eval_set))
                if not any(o.split("=", 1)[0].strip() == "data.train" for o in overrides)]


def evaluations(budget: Budget) -> dict[str, list[str]]:
    """How a teacher is judged: result key -> overrides of configs/finetune/tiny_fsdd.yaml."""
    judge = {}
    for features in budget.features:
        suffix = "" if features == "cls" else f"_{features}"  # linear, knn, linear_mean, knn_mean
        for mode in ("linear", "knn"):
            # No references: the scratch row is the table's random backbone.
            judge[mode + suffix] = [f"finetune.mode={mode}", f"finetune.features={features}", "finetune.baselines=false"]
    if budget.finetune_epochs:
        # Mean pooling: in 4 epochs the class token of a briefly pretrained tiny backbone barely learns
        # (val accuracy 0.18 vs 0.53 with the mean), so the fine-tune would judge nothing.
        judge["full"] = ["finetune.mode=full", f"train.epochs={budget.finetune_epochs}", "model.pool=mean"]
    return judge


def run_row(row: Row, seed: int, plan: Plan) -> dict:
    """Pretrain (unless done) and judge (what is not judged yet) one row with one seed."""
    budget, held_out = plan.budget, plan.held_out
    out = plan.root / row.name / f"seed{seed}"
    result_path = out / "result.json"
    result = (json.loads(result_path.read_text()) if result_path.exists()
              else {"row": row.name, "seed": seed, "budget": budget.name})
    todo = {key: extra for key, extra in evaluations(budget).items() if key not in result}
    if not todo:
        return result
    out.mkdir(parents=True, exist_ok=True)
    log, tic = out / "commands.log", time.time()

    def save() -> None:
        # After every stage, so that a killed run keeps what it finished and the time it took.
        nonlocal tic
        result["seconds"] = result.get("seconds", 0) + round(time.time() - tic)
        tic = time.time()
        tmp = result_path.with_name(result_path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, result_path)

    init = "null" if row.name == "scratch" else str(out / "pretrain" / "teacher_backbone.pt")
    if row.name != "scratch" and "pretrain_steps" not in result:
        pre = out / "pretrain"
        data = [f"data.train={pretraining_csv(out, held_out)}"] if "pretraining" in plan.default_data() else []
        run([sys.executable, "-m", "pretrain", "--config", str(CONFIGS / "base.yaml"),
             "--config", str(CONFIGS / f"{row.name}.yaml"), *data,
             f"output_dir={pre}", f"seed={seed}", *budget.pretrain, *plan.pretrain_set], log)
        result["entropy_frac"] = final_entropy(pre)
        result["pretrain_steps"] = json.loads((pre / "log.jsonl").read_text().splitlines()[-1])["step"]
        save()
    data = ([f"data.train={data_root() / 'fsdd' / 'recordings'}", f"data.fsdd_split=speaker:{held_out}"]
            if "evaluation" in plan.default_data() else [])
    # The frozen evaluations of one embedding (class token, then mean) share one embedding pass.
    evaluate = [sys.executable, "-m", "finetune", "--config", str(REPO / "configs" / "finetune" / "tiny_fsdd.yaml"),
                *data, f"model.init={init}", f"seed={seed}", f"finetune.embedding_cache={out / 'embeddings.pt'}"]
    for key, extra in todo.items():
        run([*evaluate, f"output_dir={out / key}", *extra, *plan.eval_set], log)
        result[key] = json.loads((out / key / "metrics.json").read_text())["test"]["accuracy"]
        save()
    return result


def default_runs(budget: Budget) -> Path:
    return REPO / "runs" / "ablations" / budget.name


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    pct = 100 * np.asarray(values, dtype=float)
    # The sample std (n - 1): over 3 seeds the population std understates the spread by a fifth.
    return f"{pct.mean():.1f}" if len(pct) == 1 else f"{pct.mean():.1f} ± {pct.std(ddof=1):.1f}"


COLUMNS = {"linear": "linear", "knn": "k-NN", "linear_mean": "linear (mean)", "knn_mean": "k-NN (mean)",
           "full": "fine-tune"}


def table(plan: Plan, command: str) -> str:
    budget, defaults = plan.budget, plan.default_data()
    keys = list(evaluations(budget))
    results = [json.loads(p.read_text()) for p in sorted(plan.root.glob("*/seed*/result.json"))]
    steps = sorted({r["pretrain_steps"] for r in results if "pretrain_steps" in r})
    minutes = sum(r["seconds"] for r in results) / 60
    pretrain_data = ("on FSDD takes 5-49 of five speakers + the Speech Commands sample" if "pretraining" in defaults
                     else "on the data of the command's overrides")
    eval_data = (f"FSDD digits with one speaker held out ({plan.held_out}: test = all 500 of its clips)"
                 if "evaluation" in defaults else "the data of the command's overrides")
    lines = [
        f"# ASiT ablations in miniature ({budget.name} budget)", "",
        f"Made by `{command}` on {platform.node() or 'this machine'} ({os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}), {time.strftime('%Y-%m-%d')}.", "",
        "Pretraining: ViT-tiny, 1 s views, `configs/ablation/base.yaml`"
        f"{f' (+ `{shlex.join(budget.pretrain)}`)' if budget.pretrain else ''}, the same steps for every row, "
        f"{pretrain_data}. "
        f"Evaluation: {eval_data}, test accuracy in % (mean ± sample std over seeds): linear probe and 20-NN "
        "on the frozen teacher's class token" +
        (" and on the mean of its patch tokens (only the global loss trains the class token)"
         if "mean" in budget.features else "") +
        (f", and a {budget.finetune_epochs}-epoch fine-tune" if budget.finetune_epochs else "") +
        ". Paper: AS-20K mAP after fine-tuning a ViT-S pretrained on AudioSet (Table II). "
        "Entropy: the teacher's final output entropy as a fraction of ln K (near 0 or 1 = collapse).", "",
        f"Budget: {', '.join(map(str, steps)) or '-'} pretraining steps of 32 clips per row; "
        f"{len(results)} runs took {minutes:.0f} min in all (summed over runs).", "",
        f"| row | what | paper | {' | '.join(COLUMNS[key] for key in keys)} | entropy | seeds |",
        "|---" * (len(keys) + 5) + "|",
    ]
    ranked = {key: ([], []) for key in keys}  # column -> (paper mAPs, our means) of the rows with both
    for row in ROWS:
        found = [json.loads(p.read_text()) for p in sorted((plan.root / row.name).glob("seed*/result.json"))]
        found = [r for r in found if all(key in r for key in keys)]  # a killed run's partial result waits
        if not found:
            continue
        entropy = [r["entropy_frac"] for r in found if r.get("entropy_frac") is not None]
        values = {key: [r[key] for r in found if key in r] for key in keys}
        lines.append(f"| {row.name} | {row.what} | {row.paper} | {' | '.join(mean_std(values[key]) for key in keys)} | "
                     f"{f'{np.mean(entropy):.2f}' if entropy else '-'} | {len(found)} |")
        paper = paper_map(row)
        for key in keys:
            if paper is not None and values[key]:
                ranked[key][0].append(paper)
                ranked[key][1].append(np.mean(values[key]))
    rho = {key: rank_correlation(*ranked[key]) for key in keys if len(ranked[key][0]) >= 3}
    if rho:
        counts = " or ".join(map(str, sorted({len(ranked[key][0]) for key in rho})))
        lines += ["", f"Agreement with the paper's ordering: Spearman's rank correlation between each column and "
                  f"the paper's mAP over the {counts} rows it gives an mAP for (1 = the same order, 0 = unrelated): "
                  + ", ".join(f"{COLUMNS[key]} {value:.2f}" for key, value in rho.items()) + "."]
    return "\n".join(lines) + "\n"


def paper_map(row: Row) -> float | None:
    """The paper's mAP for a row, or None where it gives a claim or another budget instead."""
    try:
        return float(row.paper)
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
    args = parser.parse_args(argv)
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
            # Small models use many cores poorly: on 2 cores, two 1-thread runs side by side finish 1.3x
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
