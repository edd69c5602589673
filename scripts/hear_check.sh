#!/usr/bin/env bash
# The field's evaluation tools run on asit checkpoints, installed the way that works on today's Python:
#   1. HEAR's own validator (hearvalidator 2021.0.6) on a pretrained teacher and on classifiers fine-tuned
#      at patch stride 16 and 10;
#   2. heareval's embedding runner (heareval 2021.1.3) on two small tasks in the HEAR layout (a scene task
#      and an event task) built from real speech;
#   3. X-ARES (the dev extra's xares) on a small local task through `python -m asit.xares_run`.
#
#   scripts/hear_check.sh                      # makes the three checkpoints with short runs
#   scripts/hear_check.sh a.pt b.pt ...        # or checks these
#
# Why the install is not `pip install hearvalidator heareval`: both declare Python < 3.9 in their newest
# releases (pip on 3.11 falls back to hearvalidator 2021.0.2, which checks one length and no timestamps,
# and to heareval 2021.0.1, which has no embedding runner), and heareval pins numpy 1.19 and numba 0.48,
# which do not build on 3.11. So they go into their own virtual environment with --no-deps
# --ignore-requires-python, beside what their code imports (tensorflow-cpu: both import it at start-up;
# click, python-slugify, tqdm, intervaltree, soundfile for the runner). torch and asit are not installed
# twice: the environment sees this project's environment through a .pth file, after its own packages.
# Env: PYTHON (this project's python), HEAR_VENV (.cache/hear-venv), DATA (../shared/data), OUT (runs/hear-check).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
VENV=${HEAR_VENV:-.cache/hear-venv}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/hear-check}
COMMANDS=$DATA/speech_commands_sample
[ -d "$COMMANDS" ] || { echo "hear_check: no Speech Commands sample at $COMMANDS (set DATA=)" >&2; exit 2; }
LOGS=$OUT/logs
mkdir -p "$LOGS"

if [ ! -x "$VENV/bin/hear-validator" ]; then
  echo "== installing the HEAR tools into $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q tensorflow-cpu==2.21.0 click python-slugify tqdm intervaltree soundfile
  "$VENV/bin/pip" install -q --no-deps --ignore-requires-python hearvalidator==2021.0.6 heareval==2021.1.3
  site=$("$VENV/bin/python" -c "import site; print(site.getsitepackages()[0])")
  env_site=$("$PYTHON" -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
  printf 'import site; site.addsitedir(%s)\n%s\n' "'$env_site'" "$PWD" > "$site/asit-env.pth"
fi
export TF_CPP_MIN_LOG_LEVEL=2  # tensorflow's start-up notices

if [ $# -gt 0 ]; then
  CHECKPOINTS=("$@")
else
  echo "== short runs for the checkpoints (a teacher, classifiers at stride 16 and 10)"
  "$PYTHON" -m pretrain --config configs/pretrain/tiny.yaml output_dir="$OUT/pretrain" train.max_steps=20 \
    monitor.every_steps=0 > "$LOGS/pretrain.log" 2>&1 || { cat "$LOGS/pretrain.log"; exit 1; }
  CHECKPOINTS=("$OUT/pretrain/teacher_backbone.pt")
  for stride in 16 10; do
    "$PYTHON" -m finetune --config configs/finetune/tiny_fsdd.yaml data.train="$COMMANDS" data.fsdd_split=null \
      data.labels_from_folders=true model.init="$OUT/pretrain/teacher_backbone.pt" model.patch_stride=$stride \
      train.epochs=2 output_dir="$OUT/finetune-stride$stride" > "$LOGS/finetune$stride.log" 2>&1 \
      || { cat "$LOGS/finetune$stride.log"; exit 1; }
    CHECKPOINTS+=("$OUT/finetune-stride$stride/averaged.pt")  # no validation set: the last epochs' average
  done
fi

"$PYTHON" scripts/hear_tasks.py "$COMMANDS" "$OUT/tasks"
"$PYTHON" scripts/xares_commands_task.py "$COMMANDS" "$OUT/xares"
verdicts=()
for ckpt in "${CHECKPOINTS[@]}"; do
  echo "== $ckpt"
  log=$LOGS/$(echo "$ckpt" | tr / _)
  if "$VENV/bin/hear-validator" asit.hear --model "$ckpt" --device cpu > "$log.hear-validator" 2>&1 \
      && grep -q "Looks good!" "$log.hear-validator"; then
    verdicts+=("hear-validator 2021.0.6: Looks good!  $ckpt")
  else
    tail -5 "$log.hear-validator"
    verdicts+=("hear-validator 2021.0.6: FAILED ($log.hear-validator)  $ckpt")
  fi
  rm -rf "$OUT/embeddings"
  if "$VENV/bin/python" -m heareval.embeddings.runner asit.hear --model "$ckpt" --tasks-dir "$OUT/tasks" \
      --embeddings-dir "$OUT/embeddings" > "$log.heareval" 2>&1 \
      && [ -f "$OUT/embeddings/asit.hear/commands-scene/.done.embeddings" ] \
      && [ -f "$OUT/embeddings/asit.hear/commands-event/.done.embeddings" ]; then
    verdicts+=("heareval 2021.1.3 embeddings: done (scene and event)  $ckpt")
  else
    tail -5 "$log.heareval"
    verdicts+=("heareval 2021.1.3 embeddings: FAILED ($log.heareval)  $ckpt")
  fi
  rm -rf "$OUT/xares/commands/embeddings" "$OUT/xares/commands/checkpoints"
  if ASIT_XARES_ENV="$OUT/xares" ASIT_CKPT="$ckpt" "$PYTHON" -m asit.xares_run asit/hear.py \
      scripts/xares_commands_task.py > "$log.xares" 2>&1; then
    score=$(sed 's/\x1b\[[0-9;]*m//g' "$log.xares" | awk '$1 == "commands" {print "MLP " $2 ", k-NN " $3}')
    verdicts+=("X-ARES (asit.xares_run): ${score:-no score}  $ckpt")
  else
    tail -5 "$log.xares"
    verdicts+=("X-ARES (asit.xares_run): FAILED ($log.xares)  $ckpt")
  fi
done
echo
printf '%s\n' "${verdicts[@]}"
! printf '%s\n' "${verdicts[@]}" | grep -q -e FAILED -e "no score"
