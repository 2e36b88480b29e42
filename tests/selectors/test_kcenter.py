"""k-center greedy equals the reference's naive loop: same picks, same order, same radii."""

import numpy as np
import pytest

from tamis.selectors.kcenter import k_center_greedy


def naive_distances(points: np.ndarray, centers: np.ndarray, metric: str) -> np.ndarray:
    """(N, K) float64 distances, written out the plain way."""
    x = points.astype(np.float64)[:, None, :]
    c = points.astype(np.float64)[centers][None, :, :]
    if metric == "euclidean":
        return np.sqrt(((x - c) ** 2).sum(axis=-1))
    return 1.0 - (x * c).sum(axis=-1)


def naive_k_center(points, budget, labeled=(), metric="euclidean", excluded=(), first=None):
    """The reference's loop: every step recomputes all distances to all centers, takes the
    min per point and the first argmax among points not yet taken."""
    points = points.astype(np.float32)
    centers = list(labeled)
    taken = np.zeros(len(points), dtype=bool)
    taken[list(labeled) + list(excluded)] = True
    picks, radii = [], []
    for step in range(budget):
        if centers:
            nearest = naive_distances(points, np.asarray(centers), metric).min(axis=1)
        else:
            nearest = np.full(len(points), np.inf)
        nearest[taken] = -np.inf
        pick = first if (step == 0 and not centers and first is not None) else nearest.argmax()
        picks.append(int(pick))
        radii.append(nearest[pick])
        taken[pick] = True
        centers.append(int(pick))
    return np.asarray(picks), np.asarray(radii)


def random_case(rng, kind: str, n: int, dim: int) -> np.ndarray:
    if kind == "simplex":
        points = rng.dirichlet(np.full(dim, 0.3), n)
    else:
        points = rng.standard_normal((n, dim))
        points /= np.linalg.norm(points, axis=1, keepdims=True)
    points = points.astype(np.float32)
    # Ties: exact duplicates, and coarse values that make equal distances common.
    points[rng.integers(0, n, n // 5)] = points[rng.integers(0, n, n // 5)]
    return points


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("n_labeled", [0, 1, 7])
@pytest.mark.parametrize("seed", range(4))
def test_equals_the_naive_reference(metric, n_labeled, seed):
    rng = np.random.default_rng(seed)
    n, dim = int(rng.integers(60, 300)), int(rng.integers(2, 24))
    points = random_case(rng, "simplex" if metric == "euclidean" else "sphere", n, dim)
    labeled = rng.choice(n, n_labeled, replace=False)
    excluded = np.setdiff1d(rng.choice(n, 3, replace=False), labeled) if seed % 2 else ()
    budget = int(rng.integers(1, n // 3))
    lookahead = int(rng.integers(1, 70))  # speed only: must not change a pick
    got = k_center_greedy(
        points, budget, labeled, metric, excluded=np.asarray(excluded, int), lookahead=lookahead
    )
    picks, radii = naive_k_center(points, budget, labeled, metric, excluded)
    np.testing.assert_array_equal(got.index, picks)
    np.testing.assert_array_equal(got.radius, radii)  # bitwise: the same float64 formula


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_ties_go_to_the_lowest_position(metric):
    # A grid: many points share distances exactly; duplicates are farthest together.
    grid = np.array([[i, j] for i in range(6) for j in range(6)], dtype=np.float32) / 5
    if metric == "cosine":
        grid = grid + 0.1
        grid /= np.linalg.norm(grid, axis=1, keepdims=True)
    points = np.concatenate([grid, grid[::-1]])  # every point twice
    for labeled in ([], [0], [5, 30]):
        got = k_center_greedy(points, 20, labeled, metric)
        picks, radii = naive_k_center(points, 20, labeled, metric)
        np.testing.assert_array_equal(got.index, picks)
        np.testing.assert_array_equal(got.radius, radii)


def test_no_labelled_set_starts_at_position_zero_or_the_given_first():
    points = np.random.default_rng(0).dirichlet(np.ones(5), 50).astype(np.float32)
    got = k_center_greedy(points, 5)
    assert got.index[0] == 0 and got.radius[0] == np.inf
    np.testing.assert_array_equal(got.index, naive_k_center(points, 5)[0])
    chosen = k_center_greedy(points, 5, first=17)
    np.testing.assert_array_equal(chosen.index, naive_k_center(points, 5, first=17)[0])
    excluded = k_center_greedy(points, 3, excluded=np.array([0, 1]))
    assert excluded.index[0] == 2


def test_coverage_radius_never_grows_and_picks_are_distinct():
    rng = np.random.default_rng(3)
    points = rng.dirichlet(np.full(10, 0.5), 3000).astype(np.float32)
    labeled = rng.choice(3000, 10, replace=False)
    got = k_center_greedy(points, 300, labeled)
    assert np.all(np.diff(got.radius) <= 0)
    assert got.final_radius <= got.radius[-1]
    assert len(set(got.index.tolist())) == 300 and not set(got.index) & set(labeled)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_larger_pool_equals_a_running_minimum_over_every_point(metric):
    """Enough points and picks for the look-ahead and screening paths to matter; the
    reference here keeps a running minimum over all points (exact, as the naive loop)."""
    rng = np.random.default_rng(11)
    n, dim = 20_000, 16
    points = random_case(rng, "simplex" if metric == "euclidean" else "sphere", n, dim)
    labeled = rng.choice(n, 25, replace=False)
    budget = 150
    got = k_center_greedy(points, budget, labeled, metric)
    x = points.astype(np.float64)
    nearest = naive_distances(points, labeled, metric).min(axis=1)
    nearest[labeled] = -np.inf
    for step in range(budget):
        pick = int(nearest.argmax())
        assert got.index[step] == pick, f"step {step}"
        assert got.radius[step] == nearest[pick]
        if metric == "euclidean":
            distance = np.sqrt(((x - x[pick]) ** 2).sum(axis=1))
        else:
            distance = 1.0 - (x * x[pick]).sum(axis=1)
        nearest = np.minimum(nearest, distance)
        nearest[pick] = -np.inf
    assert got.exact_distances < n * (budget + 25) / 5  # screening skipped most pairs


def test_bad_arguments_fail_clearly():
    points = np.random.default_rng(0).random((10, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="budget 9 is larger than the 8 points"):
        k_center_greedy(points, 9, [0, 1])
    with pytest.raises(ValueError, match="metric must be one of"):
        k_center_greedy(points, 2, metric="manhattan")
    with pytest.raises(ValueError, match="center positions must be in"):
        k_center_greedy(points, 2, [10])
    with pytest.raises(ValueError, match="first pick 3 is not a point that can be picked"):
        k_center_greedy(points, 2, excluded=np.array([3]), first=3)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_labelled_centers_closer_than_float32_can_tell(metric):
    """Pairs of labelled points one ulp apart: float32 products cannot say which of a pair
    is nearer, the exact float64 distances can; radii must still equal the naive loop's."""
    rng = np.random.default_rng(5)
    points = random_case(rng, "simplex" if metric == "euclidean" else "sphere", 600, 8)
    originals = np.arange(10)
    points[10:20] = np.nextafter(points[:10], np.float32(np.inf))
    labeled = np.concatenate([originals, originals + 10])
    got = k_center_greedy(points, 60, labeled, metric)
    picks, radii = naive_k_center(points, 60, labeled, metric)
    np.testing.assert_array_equal(got.index, picks)
    np.testing.assert_array_equal(got.radius, radii)


def test_torch_screening_gemm_gives_the_same_picks():
    """device: torch runs the screening GEMM through torch (the GPU code path, on the CPU):
    any float32 GEMM is within the screening bound, so no pick or radius may change."""
    rng = np.random.default_rng(4)
    points = random_case(rng, "simplex", 3000, 12)
    labeled = rng.choice(3000, 5, replace=False)
    numpy_picks = k_center_greedy(points, 80, labeled, device="cpu")
    torch_picks = k_center_greedy(points, 80, labeled, device="torch")
    np.testing.assert_array_equal(torch_picks.index, numpy_picks.index)
    np.testing.assert_array_equal(torch_picks.radius, numpy_picks.radius)


@pytest.mark.gpu
def test_cuda_screening_gives_the_same_picks():
    rng = np.random.default_rng(6)
    points = random_case(rng, "sphere", 50_000, 64)
    labeled = rng.choice(50_000, 20, replace=False)
    cpu = k_center_greedy(points, 200, labeled, "cosine", device="cpu")
    gpu = k_center_greedy(points, 200, labeled, "cosine", device="cuda")
    np.testing.assert_array_equal(gpu.index, cpu.index)
    np.testing.assert_array_equal(gpu.radius, cpu.radius)


@pytest.mark.parametrize("name", ["coreset", "pcoreset"])
def test_a_bad_device_name_is_a_config_error_before_any_work(name):
    from tamis.config import ConfigError
    from tamis.selectors import make_selector

    with pytest.raises(ConfigError, match=r"^selection\.params\.device: device 'gpu': expected"):
        make_selector(name, {"device": "gpu"}).validate()
    make_selector(name, {"device": "cuda:1"}).validate()  # a valid name; the GPU is checked later
