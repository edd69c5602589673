"""ASiT pretraining: `python -m pretrain --config configs/pretrain/tiny.yaml [key=value ...]`."""
