"""mixlora.profiling.saved_activations against hand-counted autograd saves."""

import torch
from torch import nn

from mixlora.profiling import saved_activations


def test_counts_inputs_saved_for_backward_but_not_parameters():
    lin = nn.Linear(8, 3, bias=False)
    x = torch.randn(4, 8)
    with saved_activations(lin) as saved:
        y = lin(x)  # saves x [4, 8] for the weight gradient and the weight (a parameter: not counted)
    y.sum().backward()
    assert sum(saved.values()) == 4 * 8 * 4


def test_one_storage_is_counted_once():
    x = torch.randn(6, 5, requires_grad=True)
    with saved_activations(nn.Identity()) as saved:
        y = x * x + x.view(5, 6).t().t().view(6, 5) * x  # every save is a view of x's storage
    y.sum().backward()
    assert sum(saved.values()) == 6 * 5 * 4
