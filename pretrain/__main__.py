import argparse
import sys

from asit.config import ConfigError, load_config

from .config import PretrainConfig
from .train import pretrain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain",
        description="ASiT self-supervised pretraining. Resumes from OUTPUT_DIR/checkpoint.pt if present.",
    )
    parser.add_argument("--config", action="append", default=[],
                        help="YAML config, e.g. configs/pretrain/tiny.yaml; repeat to layer configs (later wins)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.epochs=3 data.train=DIR")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    pretrain(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
