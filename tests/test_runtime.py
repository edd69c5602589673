"""train.compile: torch.compile computes the same function, and a part that cannot compile runs eagerly."""

import torch
import torch._inductor.config as inductor_config
from torch._dynamo.utils import counters

from asit.runtime import compiled


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))


def test_compiled_module_computes_the_same_function():
    torch._dynamo.reset()
    counters.clear()
    net, x = small_net(), torch.randn(3, 8)
    assert torch.allclose(compiled(net)(x), net(x), atol=1e-6)
    assert counters["frames"]["ok"] == 1  # the forward was compiled, not run eagerly after a failure


def test_without_a_cxx_compiler_the_module_runs_eagerly(monkeypatch):
    # A machine without a working C++ compiler: inductor fails, and the run goes on uncompiled.
    torch._dynamo.reset()
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/g++",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # no kernels from an earlier compile
    counters.clear()
    net, x = small_net(), torch.randn(3, 8)
    assert torch.equal(compiled(net)(x), net(x))
    assert counters["frames"]["total"] == 1 and counters["frames"]["ok"] == 0  # tried, then ran eagerly


def test_auto_precision_is_bf16_only_on_cpus_with_native_bf16_matmuls():
    from asit.runtime import cpu_flags, resolve_precision

    cpu = torch.device("cpu")
    amd = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512vl\n"  # a 2-core AMD EPYC (Zen 4)
    xeon = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    laptop = "flags\t\t: fpu sse2 avx2 fma\n"  # AVX2 only: bf16 would be emulated
    assert cpu_flags(amd) == {"avx2", "avx512f", "avx512_bf16"}
    assert resolve_precision("auto", cpu, cpu_flags(amd)) == torch.bfloat16
    assert resolve_precision("auto", cpu, cpu_flags(xeon)) == torch.bfloat16
    assert resolve_precision("auto", cpu, cpu_flags(laptop)) is None
    assert resolve_precision("auto", cpu, cpu_flags("no flags line here")) is None
    # An explicit choice is never overridden.
    assert resolve_precision("bf16", cpu, cpu_flags(laptop)) == torch.bfloat16
    assert resolve_precision("fp32", cpu, cpu_flags(xeon)) is None
