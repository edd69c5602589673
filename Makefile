# `make install pretrain` sets up and runs the main job; `make test` runs the tests (CI: .ci/run).
PYTHON ?= python
# torch, torchvision and torchaudio that import together here (timm needs a torchvision that matches
# torch; torchaudio 2.9 is the last one needed). Installed only when missing, so no re-download.
TORCH := torch==2.9.1 torchvision==0.24.1
AUDIO := torch==2.9.1 torchaudio==2.9.1
CONFIG ?= configs/pretrain/tiny.yaml

.PHONY: install pretrain test bench clean ablations ablations-quick quality

install:
	@$(PYTHON) -c "import torch, torchvision, torchaudio; assert torch.__version__.startswith('2.9.1')" 2>/dev/null \
		|| ($(PYTHON) -m pip install $(TORCH) && $(PYTHON) -m pip install $(AUDIO))
	$(PYTHON) -m pip install -q -e ".[dev]"

pretrain:
	$(PYTHON) -m pretrain --config $(CONFIG) $(ARGS)

test:
	$(PYTHON) -m pytest -q

bench:
	$(PYTHON) benchmarks/bench.py $(ARGS)

# ASiT's Table II in miniature (see ablation/__main__.py). DATA=/path/to/shared/data to point elsewhere.
# JOBS rows run side by side, each on cores / JOBS threads (ViT-tiny uses 2 cores poorly: side by side is sooner).
JOBS ?= 2
ablation-%:
	$(PYTHON) -m ablation run $* $(ARGS)

ablations:
	$(PYTHON) -m ablation all --seeds 0 1 2 --jobs $(JOBS) $(ARGS)

# One at a time: the quick rows are short, and evaluation uses both cores well (about 25 min; no faster with JOBS=2).
ablations-quick:
	$(PYTHON) -m ablation all --quick $(ARGS)

# Learning quality (quality/): pretrain the laptop recipe on ../shared/data, probe its teacher on three
# speaker-disjoint tasks against a random backbone and fbank statistics; writes results/quality.md.
# One seed by default (about 35 min on 2 cores); SEEDS="0 1" for two.
SEEDS ?= 0
quality:
	$(PYTHON) -m quality run --seeds $(SEEDS) $(ARGS)

clean:
	rm -rf runs build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
