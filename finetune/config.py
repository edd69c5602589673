"""The fine-tuning run's config: one typed section per component, filled from YAML + overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from asit.augment import AugmentConfig
from asit.config import pair
from asit.features import FrontEndConfig


@dataclass
class DataConfig:
    # Each a folder, an AST-style JSON manifest ({"data": [{"wav", "labels"}]}) or a CSV with `path` and
    # `label` (one) or `labels` (comma-separated) columns. Relative paths are relative to the file.
    train: str | None = None
    val: str | None = None  # null: no model selection (a full fine-tune then writes no best.pt)
    test: str | None = None
    labels_from_folders: bool = False  # folders: each file's label is the name of its folder
    # AST's class_labels_indices.csv (index, mid, display_name): fixes the label order and names, and
    # manifests' labels are mids. Without it the vocabulary is the sorted labels of the training set.
    class_labels: str | None = None
    # single: one class per clip (cross-entropy; accuracy, macro F1); multi: tags (BCE; mAP, AUC,
    # d-prime); auto: multi as soon as one training clip has other than exactly one label.
    task: Literal["auto", "single", "multi"] = "auto"
    # K-fold cross-validation over the `fold` column of data.train (ESC-50): each fold in turn is the
    # validation set and the others train; metrics.json reports every fold and the mean and std.
    cv: bool = False
    folds: list[str | int] | None = None  # the folds to hold out (default: all of them)
    # The Free Spoken Digit Dataset from its recordings folder (data.train), labels from the file names
    # {digit}_{speaker}_{index}.wav. official: test = takes 0-4 (the data set's own test set), val =
    # takes 5-9, train = 10-49. speaker:<name>: test = every take of <name>, val = takes 0-4 of the other
    # speakers, train = the rest. Validation is never test: model selection must not see the test set.
    fsdd_split: str | None = None
    num_workers: int = 2  # loader processes per training process
    # Compute every clip's features once and keep them in memory (4 x 128 x frames bytes a clip: 64 KB
    # at 1 s, 0.5 MB at 10 s). Worth it on small sets, where reading and resampling every file every
    # epoch costs as much as the model; augmentation is unaffected, it happens on the batch. Full mode
    # only: the frozen modes read each clip once anyway.
    cache_features: bool = False


@dataclass
class ModelConfig:
    arch: Literal["tiny", "small", "base"] = "base"
    # Where the backbone starts: an asit checkpoint.pt (its teacher) or teacher_backbone.pt, a timm ViT
    # state dict (RGB ones are averaged to one channel, AST), or null to train from scratch. The
    # positional embedding is resampled to this run's grid.
    init: str | None = None
    # Which network of a pretraining checkpoint.pt to start from: the EMA teacher (what pretraining is
    # for), or the student, which the teacher lags after a short run.
    init_network: Literal["teacher", "student"] = "teacher"
    num_frames: int = 1024  # frames fed to the model: AST's 1024 for 10 s, 512 for 5 s, 128 for 1 s
    # Mel bins x frames of a patch, one number (square) or [frequency, time]; null: model.init's (as it
    # was pretrained), 16 without one.
    patch_size: int | tuple[int, int] | None = None
    # AST overlaps 16 x 16 patches by 6 when fine-tuning (stride 10): better, and 2.5x the tokens. One
    # number or [frequency, time]; null: no overlap (the patch), as pretrained.
    patch_stride: int | tuple[int, int] | None = 10
    pool: Literal["token", "mean"] = "token"  # token: class (+ distillation) token, AST; mean: patches
    drop_path: float = 0.0

    def __post_init__(self):
        if self.patch_size is not None:
            pair(self.patch_size, "model.patch_size")
        if self.patch_stride is not None:
            pair(self.patch_stride, "model.patch_stride")


@dataclass
class TrainConfig:
    epochs: int = 25
    batch_size: int = 12  # clips per process
    lr: float = 5e-5  # not scaled with the batch: AST's recipes give it per recipe
    # cosine: warm-up then a half cosine to min_lr. step: warm-up, then AST's MultiStepLR, i.e. the rate
    # multiplied by decay_gamma every decay_every epochs from epoch decay_start on.
    schedule: Literal["cosine", "step"] = "step"
    min_lr: float = 1e-7
    warmup_steps: int = 0  # AST: 1000 steps on AudioSet, none on ESC-50 and Speech Commands
    decay_start: int = 10
    decay_every: int = 5
    decay_gamma: float = 0.5
    weight_decay: float = 5e-7  # AST's; biases and norms are never decayed
    # Layer-wise learning-rate decay (BEiT, MAE, data2vec fine-tune so): the head and final norm at
    # train.lr, each block below at this factor times the one above, the embeddings at factor^(depth+1).
    # 1 (AST's recipe): one rate for all. Below 1 keeps pretrained lower blocks close to where they start.
    layer_decay: float = 1.0
    clip_grad: float = 0.0  # 0 disables clipping
    # auto: cross-entropy for single-label, BCE for multi-label data. AST trains Speech Commands with BCE.
    loss: Literal["auto", "ce", "bce"] = "auto"
    # Draw training clips with replacement, each weighted by the sum over its labels of 1 / label
    # frequency (AST on AudioSet-full: rare classes are otherwise barely seen).
    balanced_sampling: bool = False
    # Also evaluate and save (averaged.pt) the average of the weights at the end of the last N epochs
    # (AST: weight averaging of epoch checkpoints; all epochs if there are fewer). 0 disables.
    average_last: int = 0
    eval_batch_size: int = 64
    # auto: bf16 autocast on CPU and on GPUs that support it, fp16 with a grad scaler on older GPUs.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every_steps: int = 20

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train.epochs and train.batch_size must be at least 1")
        if self.average_last < 0:
            raise ValueError(f"train.average_last must be >= 0, got {self.average_last}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"train.layer_decay must be in (0, 1], got {self.layer_decay}")


@dataclass
class ModeConfig:
    # full: fine-tune everything (AST). linear: a linear probe, knn: weighted k-NN, both on embeddings of
    # the frozen backbone computed once per clip.
    mode: Literal["full", "linear", "knn"] = "full"
    # Frozen modes: class token, mean of patches, both, or freq: each frequency row of patches averaged
    # over time, rows concatenated (keeps where in frequency a pattern is; EVAR, MSM-MAE and M2D's
    # readout of frozen audio ViTs); freq_std: freq and each row's std over time. The probe standardises
    # every dimension, as EVAR does.
    features: Literal["cls", "mean", "both", "freq", "freq_std"] = "cls"
    # The blocks the frozen modes read, averaged (each through the backbone's final norm), counted from
    # 1; negative from the end: [-1] the last, [-4, -3, -2, -1] the mean of the last four, [8] block 8.
    # Audio SSL models are often best read below the top. A best.pt is saved only for the last block.
    layers: list[int] = field(default_factory=lambda: [-1])
    # How the blocks of `layers` are combined: averaged, or concatenated (ATST reads every block so).
    layer_combine: Literal["mean", "concat"] = "mean"
    layer_sweep: bool = False  # also fit the probe (or k-NN) on every block alone and report each
    # Score, with the same probe on the same split, two references: the same architecture randomly
    # initialised (this run's seed) and hand-crafted features (per-bin mean and std over time of the
    # normalised fbank the model reads). Pretraining helped only if it beats both.
    baselines: bool = True
    knn_k: int = 20
    knn_temperature: float = 0.07  # DINO's: votes weighted by exp(cosine / 0.07)
    # Linear probe: logistic regression, its inverse L2 strength C chosen from this grid by
    # probe_folds-fold cross-validation on the training set, folds grouped by the data's `group`
    # (speaker / source) column where every clip has one.
    probe_grid: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    probe_folds: int = 5
    # Frozen modes: a file that keeps the embeddings for the next frozen run of the same backbone, front
    # end, features and seed (a k-NN after a linear probe then embeds nothing); a clip whose audio file
    # changed since is embedded again. null: embeddings live only as long as the run.
    embedding_cache: str | None = None


    def __post_init__(self):
        if not self.layers or 0 in self.layers:
            raise ValueError(f"finetune.layers: blocks are counted from 1 (or -1 from the end), got {self.layers}")
        if self.probe_folds < 2 or not self.probe_grid:
            raise ValueError("finetune.probe_folds must be at least 2 and finetune.probe_grid not empty")


@dataclass
class FinetuneConfig:
    output_dir: str = "runs/finetune"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    # Clips are fed whole, cut or zero-padded to model.num_frames as AST. The normalisation stats default
    # to AudioSet's; left so, an init checkpoint's own stats are adopted (other front-end settings must
    # agree with it).
    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: ModeConfig = field(default_factory=ModeConfig)

    def __post_init__(self):
        if not self.data.train:
            raise ValueError("data.train is required: a folder, a .json manifest or a .csv of labelled clips")
        if self.data.fsdd_split and (self.data.val or self.data.test or self.data.cv):
            raise ValueError("data.fsdd_split makes the val and test sets itself: leave data.val, data.test "
                             "and data.cv unset")
        if self.data.folds and not self.data.cv:
            raise ValueError("data.folds chooses the folds of a cross-validation: set data.cv=true too")
        if self.data.cv and self.data.val:
            raise ValueError("data.cv holds out each fold of data.train as validation: leave data.val unset")
