"""A mixer's forward continues from a non-empty state: a sequence fed in pieces equals the sequence fed
whole (outputs and the state left behind), and a forward after steps continues the steps."""

import pytest
import torch

from mambakit.layers import Mamba2Block, MambaBlock


def _blocks():
    torch.manual_seed(0)
    yield "mamba", MambaBlock(16, d_state=4, d_conv=4, expand=2, dtype=torch.float64)
    yield "mamba2", Mamba2Block(16, d_state=8, d_conv=4, expand=2, headdim=8, chunk_size=4,
                                dtype=torch.float64)


@pytest.mark.parametrize("name, block", list(_blocks()), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("cuts", [(1,), (2, 3), (5,), (3, 4, 9)])  # pieces shorter and longer than d_conv
def test_forward_in_pieces_equals_forward_whole(name, block, cuts):
    torch.manual_seed(1)
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    whole_state = block.allocate_state(2)
    whole = block(x, state=whole_state)
    assert torch.allclose(whole, block(x), atol=1e-12)          # a zero state is a fresh prompt
    state = block.allocate_state(2)
    bounds = [0, *cuts, x.shape[1]]
    pieces = [block(x[:, a:b], state=state) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-10)
    for key in whole_state:
        assert torch.allclose(state[key], whole_state[key], atol=1e-10), key


@pytest.mark.parametrize("name, block", list(_blocks()), ids=lambda v: v if isinstance(v, str) else "")
def test_forward_after_steps_continues_them(name, block):
    torch.manual_seed(2)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    whole = block(x)
    state = block.allocate_state(2)
    stepped = [block.step(x[:, t], state) for t in range(3)]
    rest = block(x[:, 3:], state=state)
    assert torch.allclose(torch.cat([torch.stack(stepped, dim=1), rest], dim=1), whole, atol=1e-10)


def test_float32_pieces_match_whole():
    torch.manual_seed(3)
    block = MambaBlock(16, d_state=4)
    x = torch.randn(1, 40, 16)
    state = block.allocate_state(1)
    pieces = torch.cat([block(x[:, :17], state=state), block(x[:, 17:], state=state)], dim=1)
    assert torch.allclose(pieces, block(x), atol=1e-5, rtol=1e-5)
