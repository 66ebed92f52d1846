"""Memory read / separateness and the Behavior-Scene Matching Memory against hand-computed values."""
import math

import pytest
import torch

from mgnet.models.memory import BehaviorSceneMatching, Memory

E = math.exp


def _softmax(xs):
    z = sum(E(x) for x in xs)
    return [E(x) / z for x in xs]


def _memory3():
    m = Memory(3, 2, margin=1.0)
    with torch.no_grad():
        m.slots.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    return m


def test_memory_read_three_slots():
    m = _memory3()
    q = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.6, 0.8]])
    w, r, top2 = m(q)
    s = 1 / math.sqrt(2)
    exp_w = [_softmax([1, 0, -1]), _softmax([s, s, -s]), _softmax([0.6, 0.8, -0.6])]
    torch.testing.assert_close(w, torch.tensor(exp_w))
    # read = w @ slots = (w0 - w2, w1)
    torch.testing.assert_close(r, torch.tensor([[a - c, b] for a, b, c in exp_w]))
    assert top2.tolist() == [[0, 1], [0, 1], [1, 0]]       # tie in row 1 goes to the lower slot


def test_separateness_three_slots():
    m = _memory3()
    q = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.6, 0.8]], requires_grad=True)
    _, _, top2 = m(q)
    loss = m.separateness(q, top2)
    s = 1 / math.sqrt(2)
    d = lambda a, b: math.dist(a, b)  # noqa: E731
    terms = [max(0.0, d((1, 0), (1, 0)) - d((1, 0), (0, 1)) + 1),                  # 0
             max(0.0, d((s, s), (1, 0)) - d((s, s), (0, 1)) + 1),                  # 1
             max(0.0, d((0.6, 0.8), (0, 1)) - d((0.6, 0.8), (1, 0)) + 1)]          # 0.738
    torch.testing.assert_close(loss, torch.tensor(sum(terms) / 3))
    loss.backward()
    assert torch.isfinite(q.grad).all() and m.slots.grad.abs().sum() > 0


def test_bsmm_seed_update_read_three_slots():
    bs = BehaviorSceneMatching(3, 2, 2)
    W_b = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])     # (B=3, P=1, N_b=2)
    W_s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert bs.write(bs.queries(W_b, W_s)) is None                      # seeds the 3 slots
    s = 1 / math.sqrt(2)
    seeds = torch.tensor([[s, 0, s, 0], [0, s, 0, s], [s, 0, 0, s]])
    torch.testing.assert_close(bs.slots, seeds)
    assert bs.num_filled == 3

    v = [2.0, 0.0, 1.0, 0.0]                                           # eq. (9) update with one query
    sep = bs.write(torch.tensor([v]))
    vn = [x / math.sqrt(5) for x in v]
    cos = [sum(a * b for a, b in zip(vn, row)) for row in seeds.tolist()]   # 0.949, 0, 0.632
    w0 = _softmax(cos)[0]
    new0 = [a + w0 * b for a, b in zip(seeds[0].tolist(), v)]
    n0 = math.sqrt(sum(x * x for x in new0))
    torch.testing.assert_close(bs.slots[0], torch.tensor([x / n0 for x in new0]))
    torch.testing.assert_close(bs.slots[1:], seeds[1:])               # only the nearest slot moves
    assert sep is not None and sep >= 0

    # eq. (10) read with W_b = (1, 0), W_s = (0, 1)
    c_b, c_s = bs.read(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[0.0, 1.0]]))
    slots = bs.slots.tolist()
    cosn = lambda q, m: sum(a * b for a, b in zip(q, m)) / math.sqrt(sum(x * x for x in m))  # noqa: E731
    exp_b = _softmax([cosn((1, 0), r[:2]) for r in slots])
    exp_s = _softmax([cosn((0, 1), r[2:]) for r in slots])
    torch.testing.assert_close(c_b, torch.tensor([exp_b]))
    torch.testing.assert_close(c_s, torch.tensor([exp_s]))
    want = math.sqrt(sum((a - b) ** 2 for a, b in zip(exp_b, exp_s)))
    torch.testing.assert_close(bs.score(c_b, c_s), torch.tensor([want]))


def test_bsmm_empty_read_and_bad_shapes():
    bs = BehaviorSceneMatching(3, 4, 2)
    with pytest.raises(RuntimeError, match="empty"):
        bs.read(torch.rand(1, 2, 2), torch.rand(1, 2))
    with pytest.raises(ValueError, match="W_b with 4 entries"):
        bs.queries(torch.rand(1, 3, 2), torch.rand(1, 2))
    bs.write(torch.rand(5, 6))
    assert bs.num_filled == 3 and "filled" in bs.state_dict()
