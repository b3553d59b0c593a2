"""On a CUDA machine, every method gives the CPU's answer for a model that lives on the GPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import precedents as pc

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("make", [
    lambda m: pc.RepresenterL2(m, progress=False),
    lambda m: pc.RepresenterLJE(m, progress=False),
    lambda m: pc.InfluenceFunction(m, damping=1e-2, progress=False),
    lambda m: pc.InfluenceFunction(m, params="all", solver="cg", damping=1e-2, progress=False),
])
def test_gpu_model_matches_cpu(make, digits, digits_mlp):
    Xtr, ytr, Xte, yte = digits
    gpu_model = copy.deepcopy(digits_mlp).cuda()
    cpu = make(digits_mlp).fit(Xtr, ytr)
    gpu = make(gpu_model).fit(Xtr.cuda(), ytr.cuda())
    is_loss = isinstance(cpu, pc.InfluenceFunction)
    a = cpu.attribute(Xte, yte).scores if is_loss else cpu.attribute(Xte).scores
    b = gpu.attribute(Xte.cuda(), yte.cuda()).scores if is_loss else gpu.attribute(Xte.cuda()).scores
    np.testing.assert_allclose(b.cpu().numpy(), a.numpy(), atol=1e-4 * float(a.abs().max()))
