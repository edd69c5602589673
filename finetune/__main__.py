import sys

from asit.config import command_line

from .config import FinetuneConfig
from .run import finetune


def main(argv: list[str] | None = None) -> int:
    return command_line(
        FinetuneConfig, finetune, argv, prog="python -m finetune",
        description="AST fine-tuning (finetune.mode=full) or frozen evaluation (linear, knn) of a backbone. "
                    "A full fine-tune resumes from OUTPUT_DIR/last.pt if present.",
        example="configs/finetune/tiny_fsdd.yaml",
    )


if __name__ == "__main__":
    sys.exit(main())
