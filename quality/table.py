"""results/quality.md: the laptop recipe against the references on every task, and every experiment."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from asit.runtime import cpu_name

from .run import FINETUNE, FREQ, RESULTS
from .tasks import FSDD_HELD_OUT

TARGET_MARGIN = 15.0  # points over the random backbone that pretraining must add, on every task
FREQ_MARGIN = 5.0  # the same with the frequency readout, where a random backbone is much stronger
FINETUNE_MARGIN = 10.0  # points the fine-tuned teacher must add over the same ViT fine-tuned from scratch
TASKS = {  # name -> (what, chance in %)
    "fsdd": (f"FSDD digits, speaker {FSDD_HELD_OUT} never heard", 10.0),
    "hyke": ("Hyke speaker ID (83), line 1 trains, lines 2-5 test", 100 / 83),
    "commands": ("Speech Commands sample, 30 words, 5-fold CV by speaker", 100 / 30),
}


def load_results(folder: Path = RESULTS) -> dict[str, list[dict]]:
    """name -> the results of its seeds that finished every task, by seed."""
    by_name: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        if set(TASKS) <= set(result.get("tasks", {})):
            by_name.setdefault(result["name"], []).append(result)
    return {name: sorted(rows, key=lambda r: r["seed"]) for name, rows in by_name.items()}


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def changes(overrides: list[str], drop: str | None = None) -> str:
    """The overrides as code, leaving out those that start with `drop`."""
    return " ".join(f"`{o}`" for o in overrides if not (drop and o.startswith(drop)))


def render(results: dict[str, list[dict]], recipe: str, order: list[str], curve: list[str] = ()) -> str:
    lines = [
        "# Learning quality: does pretraining beat a random backbone and fbank statistics?", "",
        f"Made by `make quality` (`python -m quality`) on {os.cpu_count()} cores ({cpu_name()}), "
        f"{time.strftime('%Y-%m-%d')}. Test accuracy in %; mean ± sample std over seeds where there are "
        "several. The probe: logistic regression on the frozen teacher's [class token, mean of patch "
        "tokens] (last block), C chosen by 5-fold cross-validation grouped by speaker (Hyke: by 8 s "
        "stretches of the training recording); the references get the same probe on the same split. "
        "`random init`: the same ViT-tiny untrained (the run's seed); `fbank stats`: per-bin mean and "
        "std over time of the same 96 frames (256 numbers).", "",
    ]
    if recipe in results:
        rows = results[recipe]
        r0 = rows[0]
        minutes = [r["pretrain_seconds"] / 60 for r in rows]
        verdicts, all_won = [], True
        lines += [f"## The laptop recipe (`{recipe}`): {len(rows)} seed(s) ({', '.join(str(r['seed']) for r in rows)})",
                  "", f"Pretraining: `configs/pretrain/tiny.yaml`{''.join(' ' + o for o in r0['overrides'])} on the "
                  f"benchmark's unlabelled audio, {r0['steps']} steps of 32 clips, "
                  f"{mean_std(minutes)} min each.", "",
                  "| task | chance | random init | fbank stats | asit teacher | asit - random "
                  "| random, freq readout | asit, freq readout | fine-tuned from scratch | fine-tuned asit |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for task, (what, chance) in TASKS.items():
            col = {k: [r["tasks"][task][k] for r in rows] for k in ("random_init", "fbank_stats", "asit")}
            freq = {k: [r["tasks"][task][FREQ][k] for r in rows if FREQ in r["tasks"][task]]
                    for k in ("random_init", "asit")}
            tuned = {k: [r["tasks"][task][FINETUNE][k] for r in rows if FINETUNE in r["tasks"][task]]
                     for k in ("scratch", "asit")}
            gap = [a - b for a, b in zip(col["asit"], col["random_init"])]
            lines.append(f"| {what} | {chance:.1f} | {mean_std(col['random_init'])} | {mean_std(col['fbank_stats'])} "
                         f"| {mean_std(col['asit'])} | {mean_std(gap)} | {mean_std(freq['random_init'])} "
                         f"| {mean_std(freq['asit'])} | {mean_std(tuned['scratch'])} | {mean_std(tuned['asit'])} |")
            margin = min(gap) >= TARGET_MARGIN
            freq_won = len(freq["asit"]) == len(rows) and all(
                a > f and a - r >= FREQ_MARGIN for a, r, f in zip(freq["asit"], freq["random_init"], col["fbank_stats"]))
            tuned_won = len(tuned["asit"]) == len(rows) and all(
                a - b >= FINETUNE_MARGIN and a > f for a, b, f in zip(tuned["asit"], tuned["scratch"], col["fbank_stats"]))
            all_won = all_won and margin and freq_won and tuned_won
            verdicts.append(f"{task}: margin over random {'met' if margin else 'not met'}, freq readout "
                            f"{'beats both' if freq_won else 'does not beat fbank stats and random by ' + f'{FREQ_MARGIN:g}'}"
                            f", fine-tuned {'beats both' if tuned_won else 'not measured' if not tuned['asit'] else 'does not beat scratch by ' + f'{FINETUNE_MARGIN:g} and fbank stats'}")
        lines += ["", f"Targets (every seed): the classic readout at least {TARGET_MARGIN:g} points above random "
                  f"init; the frequency readout (each frequency row of patch tokens, mean and std over time) above "
                  f"fbank stats and at least {FREQ_MARGIN:g} points above the random backbone read the same way; "
                  f"fine-tuned (`configs/quality/finetune.yaml`, `--finetune`) at least {FINETUNE_MARGIN:g} points "
                  f"above the same ViT fine-tuned from scratch, and above fbank stats. {'; '.join(verdicts)}.", ""]
        if not all_won:
            lines += ["Not won at this budget: the recipe is the best configuration found (the experiments "
                      "below are what else was tried), and the budget curve shows how its scores grow with "
                      "the minutes of pretraining.", ""]
    points = sorted((results[n] for n in curve if n in results), key=lambda rs: rs[0]["steps"])
    if len(points) > 1:
        lines += ["## The budget curve", "", "The recipe with its whole schedule compressed into fewer epochs "
                  "(same probe; asit teacher, and asit - random init, per task), with the other changes each point "
                  "was measured with. Minutes are wall time, start-up included; s/step above the others' means "
                  "the machine was shared during that run.", "",
                  "| pretraining min | steps | s/step | experiment [seeds] | change | " + " | ".join(TASKS) + " |",
                  "|---|---|---|---|---|" + "---|" * len(TASKS)]
        for rows in points:
            scores = " | ".join(f"{mean_std([r['tasks'][t]['asit'] for r in rows])} "
                                f"({mean_std([r['tasks'][t]['asit'] - r['tasks'][t]['random_init'] for r in rows])})"
                                for t in TASKS)
            lines.append(f"| {mean_std([r['pretrain_seconds'] / 60 for r in rows])} | {rows[0]['steps']} "
                         f"| {np.mean([r['pretrain_seconds'] / r['steps'] for r in rows]):.2f} "
                         f"| {rows[0]['name']} [{','.join(str(r['seed']) for r in rows)}] "
                         f"| {changes(rows[0]['overrides'], drop='train.epochs=') or '(none)'} | {scores} |")
        lines.append("")
    lines += ["## Experiments", "", "Each row changes the recipe of its time as said (overrides of "
              "`configs/pretrain/tiny.yaml`, or of the probe); seeds in brackets. Each task: asit teacher / "
              "random init with the row's probe, and in brackets the same two read by frequency row (mean and std "
              "over time of each row of patch tokens), seeds named where not all have it (fbank stats, which no "
              "row changes: "
              + ", ".join(f"{t} {mean_std([r['tasks'][t]['fbank_stats'] for rs in results.values() for r in rs])}"
                          for t in TASKS) + ").", "",
              "| experiment | change | steps | min | " + " | ".join(TASKS) + " |",
              "|---|---|---|---|" + "---|" * len(TASKS)]
    sweeps, curves = [], []
    for name in order + sorted(set(results) - set(order)):
        rows = results.get(name)
        if not rows:
            continue
        def freq_cell(task: str) -> str:  # the frequency readout, of the seeds that have it
            have = [r for r in rows if FREQ in r["tasks"][task]]
            seeds = "" if len(have) == len(rows) else f" [{','.join(str(r['seed']) for r in have)}]"
            return (f" (freq{seeds} {mean_std([r['tasks'][task][FREQ]['asit'] for r in have])} / "
                    f"{mean_std([r['tasks'][task][FREQ]['random_init'] for r in have])})") if have else ""

        def tuned_cell(task: str) -> str:  # fine-tuned teacher / scratch, of the seeds that have it
            have = [r for r in rows if FINETUNE in r["tasks"][task]]
            seeds = "" if len(have) == len(rows) else f" [{','.join(str(r['seed']) for r in have)}]"
            return (f" (fine-tuned{seeds} {mean_std([r['tasks'][task][FINETUNE]['asit'] for r in have])} / "
                    f"{mean_std([r['tasks'][task][FINETUNE]['scratch'] for r in have])})") if have else ""

        scores = " | ".join(f"{mean_std([r['tasks'][t]['asit'] for r in rows])} / "
                            f"{mean_std([r['tasks'][t]['random_init'] for r in rows])}{freq_cell(t)}{tuned_cell(t)}"
                            for t in TASKS)
        minutes = mean_std([r["pretrain_seconds"] / 60 for r in rows])
        if "machine" in rows[0]:
            minutes += f" ({rows[0]['machine']}{'; shared with other work: slower' if rows[0].get('shared') else ''})"
        if rows[0].get("monitor"):
            curves.append((name, rows))
        change = changes(rows[0]["overrides"] + rows[0].get("probe", [])) or "(none)"
        lines.append(f"| {name} [{','.join(str(r['seed']) for r in rows)}] | {rows[0]['what']}: {change} "
                     f"| {rows[0]['steps']} | {minutes} | {scores} |")
        if "layers" in rows[0]["tasks"]["fsdd"]:
            sweeps.append((name, rows))
    for name, rows in sweeps:
        blocks = list(rows[0]["tasks"]["fsdd"]["layers"])
        lines += ["", f"Every block of `{name}` read alone (asit teacher, same probe):", "",
                  "| task | " + " | ".join(b.replace("block_", "") for b in blocks) + " |",
                  "|---|" + "---|" * len(blocks)]
        for task in TASKS:
            lines.append(f"| {task} | " + " | ".join(mean_std([r["tasks"][task]["layers"][b] for r in rows])
                                                     for b in blocks) + " |")
    if curves:
        lines += ["", "## Online monitor curves", "", "What the run's online monitor saw (`asit.monitor`): FSDD digits "
                  "of the held-out speaker, a k-NN and a quick ridge probe fitted on 512 clips of the other five, "
                  "the teacher's [class, mean] readout / its frequency readout, at each step (step 0: the "
                  "untrained network). Seed 0 where there are several.", "",
                  "| experiment | teacher linear probe, step: [class, mean] / freq | student at the end |", "|---|---|---|"]
        for name, rows in curves:
            curve = rows[0]["monitor"]
            points = ", ".join(f"{p['step']}: {100 * p['teacher/linear']:.0f} / {100 * p['teacher/linear_freq']:.0f}"
                               for p in curve)
            end = curve[-1]
            student = (f"{100 * end['student/linear']:.0f} / {100 * end['student/linear_freq']:.0f}"
                       if "student/linear" in end else "-")
            lines.append(f"| {name} | {points} | {student} |")
    return "\n".join(lines) + "\n"
