"""Ablation runner: `python -m ablation`; see __main__.py."""
