"""The pretraining run's config: one typed section per component, filled from YAML + overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from asit.features import FrontEndConfig
from asit.gmml import GMMLConfig
from asit.losses import LossConfig
from asit.model import ModelConfig
from asit.monitor import MonitorConfig
from asit.views import ViewsConfig


@dataclass
class DataConfig:
    # A folder (scanned recursively), an AST-style JSON manifest or a CSV with a `path` column.
    # Empty: a small procedurally generated audio set, made once in the cache folder, so the main job
    # runs with nothing to download.
    train: str | None = None
    num_workers: int = 2  # loader processes per training process
    # Unreadable, empty, silent or non-finite files are skipped with one warning each and listed in
    # output_dir/bad_files.txt; more than this fraction of the distinct files read stops the run (the
    # data set is then broken, not a few files).
    max_bad_fraction: float = 0.05
    synthetic_clips: int = 512
    cache_dir: str | None = None  # for the synthetic set; default $ASIT_CACHE_DIR or ~/.cache/asit


@dataclass
class TrainConfig:
    epochs: int = 100
    max_steps: int | None = None  # stop after this many steps; schedules still follow `epochs`
    batch_size: int = 32  # clips per process; each clip gives two views
    lr: float = 5e-4  # per global batch of 256 clips, scaled linearly with the global batch
    min_lr: float = 1e-6
    warmup_frac: float = 0.1
    weight_decay: float = 0.04  # cosine to weight_decay_end
    weight_decay_end: float = 0.4
    # The teacher's EMA momentum at the start (cosine to 1.0), given either as is or as a horizon sized to
    # the run: teacher_half_life is its half-life (ln 0.5 / ln m steps) as a fraction of the planned
    # steps. A fixed momentum gives a long run's teacher the lag of a short run's (0.996: 173 steps,
    # 39% of a 448-step run, 0.2% of 100k steps); a fixed fraction keeps it the same share of any run,
    # so a short trial run ranks variants as the long run would. Set exactly one of the two.
    momentum_teacher: float | None = 0.996
    teacher_half_life: float | None = None
    clip_grad: float = 3.0  # 0 disables clipping
    freeze_last_layer_epochs: int = 1
    # auto: bf16 autocast on CPU and on GPUs that support it, fp16 with a grad scaler on older GPUs.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch.compile the student and the teacher: faster steps after a compile of a minute or more; what
    # fails to compile runs eagerly instead.
    compile: bool = False
    save_every_steps: int = 200
    log_every_steps: int = 10
    image_every_steps: int = 200  # tensorboard images of a view, its corruption and reconstruction


    def __post_init__(self):
        if (self.momentum_teacher is None) == (self.teacher_half_life is None):
            raise ValueError("set exactly one of train.momentum_teacher and train.teacher_half_life (the other "
                             f"null); got {self.momentum_teacher} and {self.teacher_half_life}")
        if self.teacher_half_life is not None and not 0 < self.teacher_half_life <= 1:
            raise ValueError(f"train.teacher_half_life is a fraction of the run, in (0, 1]; got {self.teacher_half_life}")


@dataclass
class PretrainConfig:
    output_dir: str = "runs/pretrain"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)  # the model's input (checkpoints pin it)
    views: ViewsConfig = field(default_factory=ViewsConfig)  # the two crops of a clip (the run's choice)
    gmml: GMMLConfig = field(default_factory=GMMLConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)  # online evaluation during the run

    def __post_init__(self):
        if self.loss.w_local > 0 and self.loss.local_loss_tokens == "corrupted" and not self.gmml.enabled:
            raise ValueError("loss.local_loss_tokens=corrupted needs gmml.enabled=true "
                             "(without corruption there are no corrupted tokens to distil)")
