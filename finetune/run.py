"""A fine-tuning run: the splits (one, or one per fold), the mode's runner on each, metrics.json.

output_dir/
  metrics.json          val and test metrics, the config, the init checkpoint; per fold and mean/std in CV
  per_class.csv         per-class report of the reported model (per fold folder in CV)
  best.pt, last.pt      classifiers (full mode; linear mode: best.pt holds the probe as the head)
  averaged.pt           weight average of the last epochs (full mode with train.average_last)
  log.jsonl, tensorboard/
In cross-validation each fold writes its own files in output_dir/fold_<k>/.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from asit import distributed
from asit.config import to_dict

from .config import FinetuneConfig
from .data import Labels, build_labels, make_splits
from .probe import run_frozen
from .train import Finetuner

log = logging.getLogger("asit")


def finetune(cfg: FinetuneConfig) -> dict:
    """Run a fine-tune (or frozen evaluation) as configured; returns what metrics.json holds (rank 0)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with distributed.process_group(cfg.train.device) as env:
        splits = make_splits(cfg.data)
        # In cross-validation the vocabulary comes from every fold, so all folds share one label order.
        labels = build_labels(splits[0].train + (splits[0].val if cfg.data.cv else []), cfg.data)
        out = Path(cfg.output_dir)
        folds, memo = {}, {}
        for split in splits:
            split_dir = out / split.name
            if env.is_main:
                log.info("%s: %d train, %d val, %d test clips", split.name or "split", len(split.train),
                         len(split.val or []), len(split.test or []))
            if cfg.finetune.mode == "full":
                results = Finetuner(cfg, split, labels, split_dir, env).run()
            else:
                results = run_frozen(cfg, split, labels, split_dir, env, memo)
            if env.is_main:
                write_per_class(results.pop("per_class", None), split_dir / "per_class.csv")
                folds[split.name] = results
        if not env.is_main:
            return {}
        metrics = summary(cfg, labels, splits, folds)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        for name in ("val", "test"):
            if metrics[name]:
                log.info("%s: %s", name, ", ".join(f"{k} {v:.4f}" for k, v in metrics[name].items()))
        return metrics


def summary(cfg: FinetuneConfig, labels: Labels, splits, folds: dict[str, dict]) -> dict:
    """metrics.json: the reported val/test metrics at the top (the mean over folds in cross-validation)."""
    head = {
        "mode": cfg.finetune.mode,
        "task": "multi" if labels.multilabel else "single",
        "init": cfg.model.init,
        "labels": list(labels.names),
        "num_clips": {name: len(getattr(splits[0], name) or []) for name in ("train", "val", "test")},
    }
    if not cfg.data.cv:
        return {**head, **folds[""], "config": to_dict(cfg)}
    mean, std = aggregate(list(folds.values()), np.mean), aggregate(list(folds.values()), np.std)
    return {**head, **mean, "cv": {"folds": folds, "mean": mean, "std": std}, "config": to_dict(cfg)}


def aggregate(per_fold: list, reduce):
    """The folds' metrics reduced leaf by leaf (val, test, and the references' and blocks' own); a set
    missing from a fold is None. What the probe chose differs by fold and is left to `cv.folds`."""
    if any(m is None for m in per_fold):
        return None
    if isinstance(per_fold[0], dict):
        return {k: aggregate([m.get(k) for m in per_fold], reduce) for k in per_fold[0]
                if k not in ("probe", "probe_train_loss")}
    return float(reduce(per_fold))


def write_per_class(report: dict | None, path: Path) -> None:
    """One row per class: name, support and the class's metrics, on the set named in the `set` column."""
    if not report:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"set": report["set"], **row} for row in report["classes"]]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
