import torch

from compress.pruning.masks import Layout, threshold_ste, topk_mask, topk_ste
from compress.pruning.schedule import cubic


def test_topk_mask_keeps_exact_fraction():
    s = torch.randn(10, 20)
    m = topk_mask(s, 0.3)
    assert int(m.sum()) == 60
    assert s[m.bool()].min() >= s[~m.bool()].max()


def test_ste_gradients_pass_through():
    s = torch.randn(8, requires_grad=True)
    (topk_ste(s, 0.5) * torch.arange(8.0)).sum().backward()
    assert torch.equal(s.grad, torch.arange(8.0))
    s2 = torch.zeros(4, requires_grad=True)
    m = threshold_ste(s2, 0.6)  # sigmoid(0) = 0.5 < 0.6: all pruned, gradient still flows
    assert m.sum() == 0
    (m * 2).sum().backward()
    assert torch.equal(s2.grad, torch.full((4,), 2.0))


def test_layouts_expand_to_weight_shape():
    shape = torch.Size([6, 8])
    blk = Layout("block", 4, 4)
    assert blk.score_shape(shape) == (2, 2)
    m = blk.expand(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), shape)
    assert m.shape == shape and m[0, 0] == 1 and m[0, 4] == 0 and m[5, 7] == 1
    rows = Layout("rows", rows=2)
    assert rows.expand(torch.tensor([1.0, 0.0, 1.0]), shape).expand(shape)[2:4].sum() == 0
    cols = Layout("cols", cols=4)
    assert cols.expand(torch.tensor([0.0, 1.0]), shape).expand(shape)[:, :4].sum() == 0


def test_cubic_schedule_shape():
    kw = dict(total=100, warmup=10, initial_warmup=1, final_warmup=2, initial=1.0, final=0.2)
    assert cubic(0, **kw) == 1.0 and cubic(9, **kw) == 1.0
    assert cubic(80, **kw) == 0.2 and cubic(99, **kw) == 0.2
    mid = [cubic(s, **kw) for s in range(10, 80)]
    assert all(a >= b for a, b in zip(mid, mid[1:]))  # monotone
    assert cubic(45, **kw) < 0.2 + 0.8 * 0.5  # cubic drops fast early
