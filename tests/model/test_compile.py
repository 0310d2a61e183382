"""torch.compile(fullgraph=True) of the generator: agreement with eager and no recompiles.

Inductor on CPU with the reference kernels (the Triton paths compile on GPU only: the CPU
interpreter cannot run on fake tensors). One graph per phase: G-main (no w_avg update) and the
D step's fake pass (w_avg update); per-step values (psi) are tensors.
"""

from __future__ import annotations

import pytest
import torch

from model.generator import build_generator
from tests.conftest import assert_close


@pytest.fixture
def generator():
    torch._dynamo.reset()
    g = build_generator("tiny", 16, 5)
    g.mapping.w_avg.normal_()
    return g


def test_compiled_generator_matches_eager(generator):
    z, c = torch.randn(2, 64), torch.tensor([1, 3])
    compiled = torch.compile(generator, fullgraph=True)
    a = compiled(z, c, psi=torch.tensor(0.7))
    b = generator(z, c, psi=torch.tensor(0.7))
    assert_close(a, b, scale=10)
    ga = torch.autograd.grad(a.square().sum(), list(generator.synthesis.layers.values())[0].weight)[0]
    gb = torch.autograd.grad(b.square().sum(), list(generator.synthesis.layers.values())[0].weight)[0]
    assert_close(ga, gb, scale=float(gb.abs().max()) * 10)


def test_no_recompiles_across_steps(generator):
    compiled = torch.compile(generator, fullgraph=True)
    z, c = torch.randn(2, 64), torch.tensor([1, 3])
    compiled(z, c, psi=torch.tensor(1.0))  # G-main graph
    with torch.no_grad():
        compiled(z, c, psi=torch.tensor(1.0), update_w_avg=True)  # D-step fake-pass graph
    before = generator.mapping.w_avg.clone()
    with torch.compiler.set_stance("fail_on_recompile"):
        for step, psi in enumerate((0.9, 0.5, 0.3)):
            z, c = torch.randn(2, 64), torch.randint(0, 5, (2,))
            compiled(z, c, psi=torch.tensor(psi)).mean().backward()
            with torch.no_grad():
                compiled(z, c, psi=torch.tensor(psi), update_w_avg=True)
    assert not torch.equal(before, generator.mapping.w_avg)  # the buffer update ran inside the graph
