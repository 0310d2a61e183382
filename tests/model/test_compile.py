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


def test_discriminator_no_recompiles_across_phases():
    """D compiled once per phase (G step: heads frozen, image grad; D step: heads trainable)."""
    from model.discriminator import ProjectedDiscriminator

    torch._dynamo.reset()
    d = ProjectedDiscriminator(("tf_efficientnet_lite0",), c_dim=5, weights="random")
    compiled = torch.compile(d, backend="aot_eager", fullgraph=True)
    c = torch.nn.functional.one_hot(torch.tensor([0, 4]), 5).float()

    def g_phase():
        d.requires_grad_(False)
        img = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
        (-compiled(img, c)).mean().backward()
        assert img.grad is not None and all(p.grad is None for p in d.parameters())

    def d_phase():
        d.requires_grad_(True)
        compiled(torch.rand(2, 3, 32, 32) * 2 - 1, c).relu().mean().backward()
        assert all(p.grad is not None for p in d.discriminators.parameters())
        d.zero_grad(set_to_none=True)

    g_phase()
    d_phase()
    with torch.compiler.set_stance("fail_on_recompile"):
        for _ in range(2):
            g_phase()
            d_phase()
