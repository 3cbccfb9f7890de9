"""``torch.compile(model, fullgraph=True)`` works across sequence lengths: one dynamic graph, eager's numbers."""

from __future__ import annotations

import pytest
import torch

import llmdual

# Inductor fuses and reorders float32 ops, so compiled logits differ from eager by a few ulps of their magnitude.
ATOL = 1e-5


@pytest.mark.parametrize("task", ["lm", "classifier"])
def test_fullgraph_compile_across_sequence_lengths(task):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = llmdual.build(llmdual.Config.preset("tiny"), "torch", task).eval()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        for T in (8, 12, 17, 30):
            ids = torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(T))
            mask = torch.ones_like(ids)
            mask[1, T // 2:] = 0  # a padded row too: the mask path must stay dynamic as well
            for args in ((ids,), (ids, mask)):
                torch.testing.assert_close(compiled(*args), model(*args), atol=ATOL, rtol=0)
    # One static graph for the first length, then one dynamic graph per call signature covers the rest.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 4
