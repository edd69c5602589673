import argparse
import sys

from asit.config import ConfigError, load_config

from .config import FinetuneConfig
from .run import finetune


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetune",
        description="AST fine-tuning (finetune.mode=full) or frozen evaluation (linear, knn) of a backbone. "
                    "A full fine-tune resumes from OUTPUT_DIR/last.pt if present.",
    )
    parser.add_argument("--config", help="YAML config, e.g. configs/finetune/tiny_fsdd.yaml")
    parser.add_argument("overrides", nargs="*",
                        help="dotted key=value, e.g. model.init=runs/pretrain-tiny/teacher_backbone.pt "
                             "finetune.mode=knn")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(FinetuneConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    finetune(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
