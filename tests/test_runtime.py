"""train.compile: torch.compile computes the same function, and a part that cannot compile runs eagerly."""

import torch
import torch._inductor.config as inductor_config

from asit.runtime import compiled


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))


def test_compiled_module_computes_the_same_function():
    torch._dynamo.reset()
    net, x = small_net(), torch.randn(3, 8)
    assert torch.allclose(compiled(net)(x), net(x), atol=1e-6)


def test_without_a_cxx_compiler_the_module_runs_eagerly(monkeypatch):
    # A machine without a working C++ compiler: inductor fails, and the run goes on uncompiled.
    torch._dynamo.reset()
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/g++",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # no kernels from an earlier compile
    net, x = small_net(), torch.randn(3, 8)
    assert torch.equal(compiled(net)(x), net(x))
