"""One quality run: pretrain a recipe on the benchmark's unlabelled audio, then probe its teacher on
every task against the two references (a random backbone, fbank statistics).

runs/quality/<name>/seed<k>/pretrain/   the pretraining run (resumable)
runs/quality/<name>/seed<k>/<task>/     the frozen evaluation (metrics.json)
results/quality/<name>-seed<k>.json     what the table reads: scores, budget, time (committed)
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from asit.runtime import cpu_name

from .experiments import BY_NAME, Experiment
from .tasks import REPO, Task, build

RUNS = REPO / "runs" / "quality"
RESULTS = REPO / "results" / "quality"
PRETRAIN_CONFIG = "configs/pretrain/tiny.yaml"  # the laptop recipe, as `make pretrain` runs it
PROBE_CONFIG = "configs/quality/probe.yaml"
FINETUNE_CONFIG = "configs/quality/finetune.yaml"  # the full fine-tune of the teacher and of a scratch ViT
FINETUNE = "finetune"
# Every teacher (and its references) is also read as the field reads frozen audio models: each frequency
# row of the last block's patch tokens pooled over time (mean and std), standardised, the same probe.
FREQ = "freq"
FREQ_PROBE = ("finetune.features=freq_std",)
# Pretraining settings that leave the backbone's architecture and input alone: the random backbone and the
# fbank statistics of a run that only changes these score as the recipe's did, and are probed once.
TRAINING_ONLY = ("train.", "loss.", "gmml.", "monitor.", "model.head_", "model.global_out_dim",
                 "model.local_out_dim")


def call(args: list[str], log: Path) -> float:
    """Run `args` from the repository root, output appended to `log`; returns the seconds it took."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + shlex.join(args) + "\n")
        f.flush()
        result = subprocess.run(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}): {shlex.join(args)}; see {log}")
    return time.perf_counter() - tic


def last_step(run_dir: Path) -> dict:
    """The last logged training step (the online monitor's rows carry no losses)."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [row for row in rows if "loss/total" in row][-1]


def monitor_curve(run_dir: Path) -> list[dict]:
    """The online monitor's rows of a pretraining run: step and scores."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k.removeprefix("monitor/"): v for k, v in row.items()} for row in rows if "monitor/seconds" in row]


def run(exp: Experiment, seed: int, freq: bool = True, finetune: bool = False) -> dict:
    """Pretrain and evaluate `exp` with `seed` (each part skipped if done), with the frequency readout
    too unless `freq` is false, and fine-tuned (teacher and scratch) if `finetune`; returns its result."""
    out = RUNS / exp.name / f"seed{seed}"
    result_path = RESULTS / f"{exp.name}-seed{seed}.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else {}
    pretrain_csv, tasks = build(RUNS / "data")
    # The online monitor watches FSDD digits of the held-out speaker (fitted on the other five).
    monitor = [f"monitor.data={RUNS / 'data' / 'fsdd_train.csv'}", f"monitor.test={RUNS / 'data' / 'fsdd_test.csv'}",
               "monitor.max_clips=512", "monitor.every_steps=200"]
    result = {"name": exp.name, "what": exp.what, "seed": seed, "overrides": list(exp.overrides),
              "probe": list(exp.probe), "pretrain_seconds": previous.get("pretrain_seconds"),
              "tasks": previous.get("tasks", {})}
    if exp.teacher_of:
        teacher = run(BY_NAME[exp.teacher_of], seed, freq, finetune)
        pretrain_dir = RUNS / exp.teacher_of / f"seed{seed}" / "pretrain"
        result |= {"overrides": teacher["overrides"], "pretrain_seconds": teacher["pretrain_seconds"]}
    else:
        pretrain_dir = out / "pretrain"
        args = [sys.executable, "-m", "pretrain", "--config", PRETRAIN_CONFIG, f"data.train={pretrain_csv}",
                f"output_dir={pretrain_dir}", f"seed={seed}", *monitor, *exp.overrides]
        if not (pretrain_dir / "teacher_backbone.pt").exists() or "pretrain_seconds" not in previous:
            result["pretrain_seconds"] = call(args, out / "pretrain.log")
    backbone = pretrain_dir / "teacher_backbone.pt"
    final = last_step(pretrain_dir)
    result |= {"steps": final.get("step"), "seconds_per_step": final.get("time/seconds_per_step"),
               "entropy": final.get("collapse/global_entropy_frac"), "monitor": monitor_curve(pretrain_dir),
               "machine": previous.get("machine") or f"{os.cpu_count()} cores, {cpu_name()}"}
    for task in tasks:
        if task.name not in result["tasks"]:
            result["tasks"][task.name] = evaluate(task, backbone, out / task.name, seed, exp.probe,
                                                  reference_file(task, seed, exp.probe, result["overrides"]))
            save(result, result_path)
        if freq and FREQ not in result["tasks"][task.name] and not exp.probe:
            result["tasks"][task.name][FREQ] = evaluate(task, backbone, out / f"{task.name}-{FREQ}", seed,
                                                        FREQ_PROBE,
                                                        reference_file(task, seed, FREQ_PROBE, result["overrides"]))
            save(result, result_path)
        if finetune and FINETUNE not in result["tasks"][task.name] and not exp.probe:
            result["tasks"][task.name][FINETUNE] = fine_tune(task, backbone, out / f"{task.name}-{FINETUNE}", seed,
                                                             result["overrides"])
            save(result, result_path)
    save(result, result_path)
    return result


def fine_tune(task: Task, backbone: Path, out: Path, seed: int, overrides: list[str]) -> dict:
    """Test accuracy (%) of `backbone` fully fine-tuned on `task`, and of the same ViT from scratch (run once
    per task, seed and backbone shape)."""
    scratch_file = reference_file(task, seed, (FINETUNE,), overrides)
    if scratch_file.is_file():
        scratch = json.loads(scratch_file.read_text())
    else:
        shape = [o for o in overrides if o.startswith("model.patch_size=")]  # the teacher's patches, untrained
        scratch = {"scratch": fine_tune_run(task, out.with_name(out.name + "-scratch"), seed,
                                            ["model.init=null", *shape])}
        save(scratch, scratch_file)
    tic = time.perf_counter()
    teacher = fine_tune_run(task, out, seed, [f"model.init={backbone}"])
    return {"asit": teacher, **scratch, "seconds": round(time.perf_counter() - tic, 1)}


def fine_tune_run(task: Task, out: Path, seed: int, init: list[str]) -> float:
    call([sys.executable, "-m", "finetune", "--config", FINETUNE_CONFIG, *task.overrides, *init,
          f"output_dir={out}", f"seed={seed}"], out.with_suffix(".log"))
    metrics = json.loads((out / "metrics.json").read_text())
    return accuracy(metrics, metrics["averaged"])


def accuracy(metrics: dict, row: dict) -> float:
    """A row of a run's metrics.json as test accuracy in %: in cross-validation each held-out fold is "val"."""
    return round(100 * row["val" if metrics.get("cv") else "test"]["accuracy"], 2)


def reference_file(task: Task, seed: int, probe: tuple[str, ...], overrides: list[str]) -> Path:
    """Where the references' scores of a probe are kept: one file per task, seed, probe and the pretraining
    overrides that shape the backbone or its input (a new patch shape, say, gets its own random backbone)."""
    shaping = sorted(o for o in overrides if not o.startswith(TRAINING_ONLY))
    digest = hashlib.sha1(json.dumps([list(probe), shaping]).encode()).hexdigest()[:12]
    return RUNS / "references" / f"{task.name}-seed{seed}-{digest}.json"


def evaluate(task: Task, backbone: Path, out: Path, seed: int, probe: tuple[str, ...] = (),
             references: Path | None = None) -> dict:
    """The frozen probe of `backbone` on `task`: test accuracy of it and of the references, in %; the
    references are probed once and read from `references` afterwards."""
    known = json.loads(references.read_text()) if references and references.is_file() else None
    args = [sys.executable, "-m", "finetune", "--config", PROBE_CONFIG, *task.overrides, *probe,
            f"model.init={backbone}", f"output_dir={out}", f"seed={seed}",
            # The random backbone and fbank references depend on the task and seed only: embedded once.
            f"finetune.embedding_cache={RUNS / 'embeddings' / f'{task.name}-seed{seed}.pt'}",
            *(["finetune.baselines=false"] if known else [])]
    seconds = call(args, out.with_suffix(".log"))
    metrics = json.loads((out / "metrics.json").read_text())
    if known is None:
        known = {name: accuracy(metrics, row) for name, row in metrics["baselines"].items()}
        if references:
            save(known, references)
    scores = {"asit": accuracy(metrics, metrics), **known, "seconds": round(seconds, 1)}
    if "layers" in metrics:
        scores["layers"] = {name: accuracy(metrics, row) for name, row in metrics["layers"].items()}
    return scores


def save(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
