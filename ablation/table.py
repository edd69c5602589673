"""results/ablations.md: every row's scores over its seeds, against the paper's."""

from __future__ import annotations

import json
import os
import platform
import shlex
import time

import numpy as np

from asit.metrics import rank_correlation

from .rows import ROWS, Row
from .runner import Plan, evaluations


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
