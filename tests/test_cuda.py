"""The CUDA paths, run by benchmarks/gpu_check.sh on a GPU machine (`pytest -m cuda`); skipped elsewhere.

Their logic (precision choice, attention choice, the fbank) is tested on CPU in the other files; these
check that the GPU computes what the CPU does.
"""

import pytest
import torch

from pretrain.train import Pretrainer
from test_pretrain import config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)")]


def two_steps(tmp_path, device: str, precision: str) -> list[dict]:
    trainer = Pretrainer(config(f"output_dir={tmp_path / (device + precision)}", f"train.device={device}",
                                f"train.precision={precision}", "data.synthetic_clips=8", "train.batch_size=4",
                                "model.drop_path=0"))
    return [trainer.train_step(batch, step)[0] for step, batch in zip(range(2), trainer.loader())]


def test_a_cuda_step_computes_what_the_cpu_step_computes(tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides
    for cpu, gpu in zip(two_steps(tmp_path, "cpu", "fp32"), two_steps(tmp_path, "cuda", "fp32")):
        for key in ("rec", "local", "global"):
            assert gpu[key].item() == pytest.approx(cpu[key].item(), rel=1e-3), key


@pytest.mark.parametrize("precision", ["bf16", "fp16"])  # fp16 runs with the grad scaler
def test_reduced_precision_on_cuda_stays_close_to_fp32(tmp_path, precision):
    for ref, low in zip(two_steps(tmp_path, "cuda", "fp32"), two_steps(tmp_path, "cuda", precision)):
        for key in ("rec", "local", "global"):
            assert low[key].item() == pytest.approx(ref[key].item(), rel=2e-2), key
