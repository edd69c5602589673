"""The rows of the table (the paper's Table II and our extra ones) and the two budgets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "ablation"


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
