"""One row and seed: its pretraining set, pretraining, and the evaluations of its teacher; each part kept
when done, so a killed run redoes only what is missing."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from asit.errors import UserError
from asit.sources import list_audio, write_csv
from finetune.data import fsdd_name
from quality.tasks import data_root

from .rows import CONFIGS, REPO, Budget, Row


def pretraining_csv(out: Path, held_out: str) -> Path:
    """FSDD's train takes of the other speakers + the Speech Commands sample, as one CSV."""
    root = data_root()
    fsdd = [i for i in list_audio(root / "fsdd" / "recordings")
            if (name := fsdd_name(i.path)) and name[2] >= 5 and name[1] != held_out]
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
        last = log.read_text(errors="replace").rstrip().rpartition("\n")[2]  # the command's own error
        raise UserError(f"{shlex.join(args)} failed (exit {result.returncode}): {last}; its whole output is in {log}")


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
