import sys

from asit.config import command_line

from .config import PretrainConfig
from .train import pretrain


def main(argv: list[str] | None = None) -> int:
    return command_line(
        PretrainConfig, pretrain, argv, prog="python -m pretrain",
        description="ASiT self-supervised pretraining. Resumes from OUTPUT_DIR/checkpoint.pt if present "
                    "(from checkpoint.prev.pt, the one before it, if that cannot be read).",
        example="configs/pretrain/tiny.yaml",
    )


if __name__ == "__main__":
    sys.exit(main())
