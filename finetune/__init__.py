"""AST fine-tuning and frozen evaluation: `python -m finetune --config configs/finetune/esc50.yaml [key=value ...]`."""
