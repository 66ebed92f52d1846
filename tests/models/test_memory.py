"""Memory read / separateness and the Behavior-Scene Matching Memory against hand-computed values."""
import math

import numpy as np
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


# ---------------------------------------------------------------- written memories (stage 4)
def test_farthest_points_and_spherical_kmeans_find_the_clusters():
    from mgnet.models.memory import farthest_points, kmeans
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3)
    x = torch.nn.functional.normalize(centres.repeat_interleave(20, 0) + 0.05 * torch.randn(60, 3, generator=g), dim=1)
    idx = farthest_points(x, 3)
    assert sorted(int(i) // 20 for i in idx) == [0, 1, 2]                  # one seed per cluster
    assert len(farthest_points(torch.ones(4, 2) / math.sqrt(2), 3)) == 1     # duplicates: stops early
    c = kmeans(x, 3, spherical=True)
    got = sorted(c.argmax(1).tolist())
    assert got == [0, 1, 2] and torch.allclose(c.norm(dim=1), torch.ones(3))
    for j in range(3):                                                     # centroid = normalised cluster mean
        k = int(c[:, j].argmax())
        torch.testing.assert_close(c[k], torch.nn.functional.normalize(x[20 * j:20 * j + 20].mean(0), dim=0))


def test_euclidean_kmeans_centroids_are_cluster_means():
    from mgnet.models.memory import kmeans
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 2.0]])
    c = kmeans(x, 2)
    got = sorted(c.tolist())
    assert got == [[0.0, 0.5], [10.0, 1.0]]


def test_pose_memory_weights_by_hand():
    from mgnet.models.memory import PoseMemory
    pm = PoseMemory(2, joints=1, temperature=0.5)                      # 2 coordinates per frame
    with pytest.raises(RuntimeError, match="pose memory is empty"):
        pm(torch.zeros(1, 2, 3, 1))
    # frames (x, y): two clusters around (1, 0) and (-1, 0) after removing the mean (0, 0)
    frames = torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]])
    pm.fit(frames)
    assert pm.is_fitted and pm._filled == 2
    torch.testing.assert_close(pm.mean, torch.zeros(2))
    assert sorted(pm.slots[:, 0].tolist()) == pytest.approx([-1.0, 1.0])
    pose = torch.tensor([[[3.0, 0.0]], [[0.0, 1.0]]]).view(1, 2, 2, 1)    # (B=1, 2, T=2, V=1): frames (3, 0), (0, 1)
    w = pm(pose)
    right = int(pm.slots[:, 0].argmax())
    # frame 1: cos 1 / -1 -> softmax(+-1 / 0.5); frame 2: cos 0 / 0 -> uniform
    p = math.exp(2) / (math.exp(2) + math.exp(-2))
    want = torch.zeros(1, 2)
    want[0, right], want[0, 1 - right] = (p + 0.5) / 2, (1 - p + 0.5) / 2
    torch.testing.assert_close(w, want)
    # state_dict round trip keeps the host mirror
    other = PoseMemory(2, joints=1, temperature=0.5)
    other.load_state_dict(pm.state_dict())
    torch.testing.assert_close(other(pose), w)


def test_pose_memory_with_fewer_frames_than_slots_pads_weights():
    from mgnet.models.memory import PoseMemory
    pm = PoseMemory(5, joints=1)
    pm.fit(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    assert pm._filled == 2
    w = pm(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    assert w.shape == (1, 5) and torch.equal(w[0, 2:], torch.zeros(3))
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))


def test_appearance_memory_descriptors_distances_and_score():
    from mgnet.models.memory import AppearanceMemory
    am = AppearanceMemory(2, grid=(1, 2, 2), topk=0.25)                  # 4 cubes of 2 x 8 x 8
    rgb = torch.zeros(1, 3, 2, 16, 16)                                   # float frames in [0, 1]
    rgb[:, :, :, :8, :8] = 1.0                                           # cube 0 white, others black
    d = am.descriptors(rgb)
    mean = torch.tensor([0.485, 0.456, 0.406]); std = torch.tensor([0.229, 0.224, 0.225])
    assert d.shape == (1, 4, 6)
    torch.testing.assert_close(d[0, 0], torch.cat([(1 - mean) / std, torch.zeros(3)]))
    torch.testing.assert_close(d[0, 1], torch.cat([-mean / std, torch.zeros(3)]))
    u8 = (rgb * 255).to(torch.uint8)
    torch.testing.assert_close(am.descriptors(u8), d)                    # uint8 is scaled by 1/255
    with pytest.raises(RuntimeError, match="appearance memory is empty"):
        am(rgb)
    am.fit(d[0, 1:])                                                     # only black cubes are normal
    assert am._filled == 1                                               # three identical rows: one slot
    dist = am.distances(d)
    torch.testing.assert_close(dist[0, 1:], torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(dist[0, 0], (1 / std).norm(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(am(rgb), dist[0, :1].mean().view(1))     # top 25% of 4 cubes = the white one


def test_bsmm_fit_seeds_farthest_and_temperature_normalised_score():
    bs = BehaviorSceneMatching(2, 2, 2, temperature=0.5, normalize=True)
    w_r = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.1, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    sep = bs.fit(w_r)
    assert bs.num_filled == 2 and sep >= 0
    # seeds: row 0 and the farthest from it (row 2); row 1 then moves slot 0 (eq. 9)
    assert bs.slots[0, 0] > 0.6 and bs.slots[0, 1] > 0 and bs.slots[1, 1] > 0.6
    c_b, c_s = bs.read(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[0.0, 1.0]]))
    m = bs.slots
    nrm = torch.nn.functional.normalize
    want_b = torch.softmax(torch.tensor([[1.0, 0.0]]) @ nrm(m[:, :2], dim=1).T / 0.5, 1)
    want_s = torch.softmax(torch.tensor([[0.0, 1.0]]) @ nrm(m[:, 2:], dim=1).T / 0.5, 1)
    torch.testing.assert_close(c_b, want_b)
    torch.testing.assert_close(c_s, want_s)
    torch.testing.assert_close(bs.score(c_b, c_s), (nrm(want_b, dim=1) - nrm(want_s, dim=1)).norm(dim=1))
    with pytest.raises(ValueError, match="no queries"):
        bs.fit(torch.zeros(0, 4))


def test_pose_memory_and_bsmm_flag_a_behavior_unseen_in_its_scene():
    """The mechanism behind S_mm (bsmm_behavior=pose): scene A shows behaviors 'up' and 'down',
    scene B only 'up'. 'down' in scene B must score above 'down' in A and 'up' in either."""
    from mgnet.models.memory import PoseMemory
    g = torch.Generator().manual_seed(0)
    V, T = 18, 4

    def clips(kind, n):
        base = torch.zeros(2, T, V)
        base[1, :, :9] = 1.0 if kind == "up" else -1.0               # 9 joints above / below
        base[0, :, 9:] = 0.5 if kind == "up" else -0.5
        return base + 0.05 * torch.randn(n, 2, T, V, generator=g)

    scene = {"A": torch.tensor([1.0, 0.0]), "B": torch.tensor([0.0, 1.0])}
    train = [(clips("up", 30), "A"), (clips("down", 10), "A"), (clips("up", 30), "B")]
    poses = torch.cat([p for p, _ in train])
    w_s = torch.cat([scene[s].expand(len(p), -1) for p, s in train])
    pm = PoseMemory(4, V, temperature=0.05)
    pm.fit(PoseMemory.frames(poses).reshape(-1, 2 * V))
    bs = BehaviorSceneMatching(6, 4, 2, temperature=0.05, normalize=True)
    bs.fit(bs.queries(pm(poses), w_s))

    def s_mm(kind, s):
        p = clips(kind, 5)
        c_b, c_s = bs.read(pm(p), scene[s].expand(5, -1))
        return bs.score(c_b, c_s).mean().item()

    odd = s_mm("down", "B")
    normal = [s_mm("down", "A"), s_mm("up", "A"), s_mm("up", "B")]
    assert odd > max(normal) + 0.3, (odd, normal)


def test_memories_fit_a_seeded_subset_of_large_inputs():
    from mgnet.models.memory import AppearanceMemory, PoseMemory
    g = torch.Generator().manual_seed(0)
    am = AppearanceMemory(3, grid=(1, 1, 1))
    desc = torch.cat([torch.zeros(500, 6), torch.full((500, 6), 5.0)]) + 0.01 * torch.randn(1000, 6, generator=g)
    am.fit(desc, max_cubes=50)
    b = AppearanceMemory(3, grid=(1, 1, 1))
    b.fit(desc, max_cubes=50)
    torch.testing.assert_close(am.slots, b.slots)                        # same seeded subset
    assert am.distances(torch.tensor([[[0.0] * 6, [5.0] * 6]])).max() < 0.1   # both modes covered
    pm = PoseMemory(2, joints=1)
    pm.fit(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]).repeat(100, 1), max_frames=20)
    assert sorted(pm.slots[:, 0].tolist()) == pytest.approx([-1.0, 1.0], abs=0.2)


def test_segment_memory_knn_by_hand_and_own_track_left_out():
    from mgnet.models.memory import SegmentMemory
    # 1 x 2 x 2 "poses" (D = 4): three normal segments, two of them from track 7
    mem = SegmentMemory(slots=8, dim=4, k=1)
    segs = torch.tensor([[0., 0, 0, 0], [3., 0, 0, 0], [0., 0, 4, 0]])
    mem.fit(segs, torch.tensor([7, 7, 9]))
    assert mem.is_fitted and mem._filled == 3
    q = torch.tensor([[1., 0, 0, 0], [0., 0, 0, 0], [3., 0, 4, 0]]).view(3, 1, 2, 2)
    # distances to segs 0, 1, 2: q0 (1, 2, sqrt 17); q1 (0, 3, 4); q2 (5, 4, 3)
    np.testing.assert_allclose(mem(q).numpy(), [1.0, 0.0, 3.0])
    mem2 = SegmentMemory(slots=8, dim=4, k=2)
    mem2.fit(segs, torch.tensor([7, 7, 9]))
    np.testing.assert_allclose(mem2(q).numpy(), [(1 + 2) / 2, (0 + 3) / 2, (3 + 4) / 2])
    # leave-own-track-out: q1 belongs to track 7, so only seg 2 (distance 4) remains; q0 and q2 to
    # track 9: q0 keeps seg 0 (1), q2 loses seg 2 (3 -> 4); a track that is the whole memory falls back to all
    mem.exclude_own_track = True
    got = mem(q, torch.tensor([9, 7, 9]))
    np.testing.assert_allclose(got.numpy(), [1.0, 4.0, 4.0])
    only = SegmentMemory(slots=2, dim=4)
    only.fit(segs[:2], torch.tensor([5, 5]))
    only.exclude_own_track = True
    np.testing.assert_allclose(only(q[:1], torch.tensor([5])).numpy(), [1.0])
    # chunked search over the memory gives the same k nearest
    np.testing.assert_allclose(mem2(q, chunk=1).numpy(), mem2(q).numpy())
    # more segments than slots: a seeded subset
    big = SegmentMemory(slots=2, dim=4)
    big.fit(segs, torch.tensor([1, 2, 3]))
    assert big._filled == 2 and all(any(torch.equal(r, s) for s in segs) for r in big.slots)


def test_segment_memory_asymmetric_distance_by_hand():
    from mgnet.models.memory import SegmentMemory
    # occupancy-like maps (D = 4): a walker's map and a bigger one; w = 0.25 weighs what the map
    # has and the query lacks
    segs = torch.tensor([[1., 1, 0, 0], [1., 1, 1, 1]])
    mem = SegmentMemory(slots=4, dim=4, missing_weight=0.25)
    mem.fit(segs, torch.tensor([1, 2]))
    q = torch.tensor([[1., 0, 0, 0],       # half hidden walker: lacks 1 of seg 0 -> sqrt(0.25 * 1) = 0.5
                      [1., 1, 1, 0],       # walker + object: adds 1 to seg 0 (1.0); lacks 1 of seg 1 (0.5) -> 0.5
                      [2., 1, 0, 0]])      # adds 1 to seg 0 -> 1; to seg 1: adds 1, lacks 2 -> sqrt(1 + 0.5)
    np.testing.assert_allclose(mem(q.view(3, 1, 2, 2)).numpy(), [0.5, 0.5, 1.0], rtol=1e-6)
    # w = 1 is the Euclidean distance: q0 -> 1 (seg 0), q1 -> 1 (either), q2 -> 1 (seg 0)
    euc = SegmentMemory(slots=4, dim=4)
    euc.fit(segs, torch.tensor([1, 2]))
    np.testing.assert_allclose(euc(q.view(3, 1, 2, 2)).numpy(), [1.0, 1.0, 1.0], rtol=1e-6)
    # against an exhaustive search: with a memory no larger than ASYM_CANDIDATES the re-ranking is exact
    g = torch.Generator().manual_seed(0)
    rows, qs = torch.rand(50, 16, generator=g), torch.rand(7, 16, generator=g)
    m2 = SegmentMemory(slots=64, dim=16, k=2, missing_weight=0.1)
    m2.fit(rows, torch.arange(50))
    diff = qs[:, None] - rows[None]
    d = (diff.clamp_min(0) ** 2).sum(-1) + 0.1 * (diff.clamp_max(0) ** 2).sum(-1)
    want = d.sqrt().topk(2, dim=1, largest=False).values.mean(1)
    np.testing.assert_allclose(m2(qs).numpy(), want.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="missing_weight"):
        SegmentMemory(slots=4, dim=4, missing_weight=1.5)


def test_segment_memory_asymmetric_ranks_a_carried_object_above_an_occluded_walker():
    """The reason for model.fg_missing_weight: on 8 x 8 occupancy maps, a walker whose lower half is
    hidden and a walker pushing a cart differ from the normal walker by the same number of cells,
    so the Euclidean distance ties them; the asymmetric one ranks the cart far above."""
    from mgnet.models.memory import SegmentMemory
    walker = torch.zeros(8, 8)
    walker[1:8, 3:5] = 1.0                       # a body two cells wide, head to feet
    occluded = walker.clone()
    occluded[5:8] = 0.0                          # legs behind a hedge: 6 cells fewer
    cart = walker.clone()
    cart[5:8, 5:7] = 1.0                         # a cart beside the legs: 6 cells more
    q = torch.stack([occluded, cart]).view(2, 1, 8, 8)
    for w, ratio in ((1.0, 1.0), (0.25, 2.0)):  # d(cart) / d(occluded) = 1 / sqrt(w)
        mem = SegmentMemory(slots=4, dim=64, missing_weight=w)
        mem.fit(walker.view(1, 64), torch.tensor([0]))
        d = mem(q)
        assert d[1].item() == pytest.approx(6 ** 0.5) and d[1] / d[0] == pytest.approx(ratio)


def test_appearance_descriptors_clip_norm_cancel_a_channel_gain():
    from mgnet.models.memory import AppearanceMemory
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 4, 16, 16, generator=g) * 120 + 60).round().to(torch.uint8)   # uint8 crops
    mem = AppearanceMemory(4, (2, 2, 2), norm="clip")
    d = mem.descriptors(x)
    # by hand for cube 0 of clip 0, channel 0: pixels [0:2, 0:8, 0:8]
    c = x[0, 0, :2, :8, :8].double()
    mu = float(x[0, 0].double().mean()) + 1.0           # the cubes tile the clip: their means average to its mean
    assert d[0, 0, 0].item() == pytest.approx(float(c.mean()) / mu, rel=1e-5)
    assert d[0, 0, 3].item() == pytest.approx(float(c.std()) / mu, rel=1e-4)
    # a white-balance / exposure change (per-channel gain) moves the plain statistics, not these
    gain = torch.tensor([0.8, 1.0, 1.25]).view(1, 3, 1, 1, 1)
    y = (x.double() * gain).round().to(torch.uint8)
    plain = AppearanceMemory(4, (2, 2, 2))
    assert (plain.descriptors(y) - plain.descriptors(x)).abs().max() > 0.1
    np.testing.assert_allclose(mem.descriptors(y).numpy(), d.numpy(), atol=0.02)
    with pytest.raises(ValueError, match="norm"):
        AppearanceMemory(4, (2, 2, 2), norm="scene")


def test_appearance_memory_held_out_folds_for_training_statistics():
    from mgnet.models.memory import AppearanceMemory
    # videos 0, 2 (parity 0) hold colour A, videos 1, 3 (parity 1) colour B: a clip of an even
    # video measured against the memory fitted on odd videos lies at the distance A-B
    g = torch.Generator().manual_seed(0)
    mem = AppearanceMemory(2, (2, 2, 2), topk=1.0)
    a = torch.tensor([0.0, 0, 0, 0.1, 0.1, 0.1])
    b = torch.tensor([3.0, 0, 4, 0.1, 0.1, 0.1])
    rows = torch.cat([a.repeat(10, 1), b.repeat(10, 1)]) + 1e-3 * torch.randn(20, 6, generator=g)
    groups = torch.tensor([0, 2] * 5 + [1, 3] * 5)
    mem.fit(rows, groups=groups)
    assert mem._fold_filled == (2, 2)
    x = torch.full((2, 3, 4, 16, 16), 0.5)            # any clip: its descriptors, then fold by video
    d = mem.descriptors(x)
    near = torch.cdist(d.reshape(-1, 6), mem.slots[:mem._filled]).min(1).values.view(2, -1).mean(1)
    np.testing.assert_allclose(mem(x).numpy(), near.numpy(), rtol=1e-5)     # not excluding: the full memory
    mem.exclude_own_track = True
    got = mem(x, torch.tensor([0, 1]))
    for i, f in ((0, 0), (1, 1)):
        want = torch.cdist(d[i], mem.fold_slots[f, :mem._fold_filled[f]]).min(1).values.mean()
        assert got[i].item() == pytest.approx(want.item(), rel=1e-5)
    # fold 0 (for even videos) was fitted on odd videos only: its slots sit at colour B
    assert torch.allclose(mem.fold_slots[0, :2], b.expand(2, 6), atol=0.01)
    assert torch.allclose(mem.fold_slots[1, :2], a.expand(2, 6), atol=0.01)
    # one parity only (or unknown videos): no folds, the full memory is used
    mem.fit(rows, groups=torch.zeros(20, dtype=torch.long))
    assert mem._fold_filled == (0, 0)
    full = torch.cdist(d.reshape(-1, 6), mem.slots[:mem._filled]).min(1).values.view(2, -1).mean(1)
    np.testing.assert_allclose(mem(x, torch.tensor([0, 1])).numpy(), full.numpy(), rtol=1e-5)


def test_segment_memory_by_scene_places_a_clip_by_its_view():
    from mgnet.models.memory import SegmentMemory
    from mgnet.models.scene import view_descriptor
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    view_a = torch.stack([xx, xx ** 2, 1 - xx])[None]                  # (1, 3, 32, 32) two camera views
    view_b = torch.stack([yy, 1 - yy, yy ** 3])[None]
    # the same view on another day (gain and offset per channel) keeps its descriptor; the other view does not
    relit = view_a * torch.tensor([0.7, 0.9, 1.2]).view(1, 3, 1, 1) + 0.05
    da, db, dr = view_descriptor(view_a), view_descriptor(view_b), view_descriptor(relit)
    assert float(da @ dr.T) > 0.999 and float(da @ db.T) < 0.5
    mem = SegmentMemory(slots=8, dim=4, k=1, by_scene=True)
    segs = torch.tensor([[0., 0, 0, 0], [3., 0, 0, 0], [0., 0, 4, 0]])
    mem.fit(segs, torch.tensor([1, 1, 2]), scene=torch.tensor([10, 10, 20]))
    # training videos 0 and 1 film view a (scene 10), video 2 films view b (scene 20)
    mem.fit_views(torch.cat([da, da, db]), torch.tensor([0, 1, 2]), torch.tensor([10, 10, 20]))
    assert mem.num_views == 3
    assert mem.scene_of(torch.cat([dr, db])).tolist() == [10, 20]
    q = torch.tensor([[3., 0, 4, 0], [3., 0, 4, 0], [0., 0, 0, 0]]).view(3, 1, 2, 2)
    # distances to segs 0, 1, 2: q0 = q1 (5, 4, 3), q2 (0, 3, 4); scene 10 holds segs 0-1, scene 20 seg 2
    np.testing.assert_allclose(mem(q, view=torch.cat([dr, db, db])).numpy(), [4.0, 3.0, 4.0])
    mem.by_scene = False
    np.testing.assert_allclose(mem(q, view=torch.cat([dr, db, db])).numpy(), [3.0, 3.0, 0.0])
    # a scene whose segments were all left out of the memory: measured against every segment
    lone = SegmentMemory(slots=8, dim=4, by_scene=True)
    lone.fit(segs[:2], torch.tensor([1, 1]), scene=torch.tensor([10, 10]))
    lone.fit_views(torch.cat([da, db]), torch.tensor([0, 2]), torch.tensor([10, 20]))
    np.testing.assert_allclose(lone(q[:1], view=db).numpy(), [4.0])
