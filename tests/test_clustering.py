"""The numpy clustering math, on cases small enough to check by hand."""

import numpy as np
import pytest

from tff_research.algorithms import clustering


def test_dissimilarities_by_hand():
  v = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
  np.testing.assert_allclose(
      clustering.cosine_similarity(v),
      [[1, 0, -1], [0, 1, 0], [-1, 0, 1]], atol=1e-12)
  np.testing.assert_allclose(
      clustering.dissimilarity(v, 'cosine'),
      [[0, 1, 2], [1, 0, 1], [2, 1, 0]], atol=1e-12)
  np.testing.assert_allclose(
      clustering.dissimilarity(v, 'l2'),
      [[0, np.sqrt(5), 4], [np.sqrt(5), 0, np.sqrt(13)],
       [4, np.sqrt(13), 0]], atol=1e-12)
  # A zero update is similar to nothing but itself.
  z = clustering.cosine_similarity(np.array([[0.0, 0.0], [1.0, 1.0]]))
  np.testing.assert_allclose(z, [[1, 0], [0, 1]])
  with pytest.raises(ValueError, match="'manhattan' is not valid"):
    clustering.dissimilarity(v, 'manhattan')


def test_separation_gap_by_hand():
  d = np.array([[0, 1, 5, 6],
                [1, 0, 4, 7],
                [5, 4, 0, 2],
                [6, 7, 2, 0]], float)
  # min cross = 4, max within = 2.
  assert clustering.separation_gap(d, np.array([0, 0, 1, 1])) == 2.0
  # A bad grouping: min cross = 1 (0-1), max within = 6 (0-3).
  assert clustering.separation_gap(d, np.array([0, 1, 1, 0])) == -5.0


def test_bipartition_finds_the_separated_groups():
  d = np.array([[0, 1, 5, 6],
                [1, 0, 4, 7],
                [5, 4, 0, 2],
                [6, 7, 2, 0]], float)
  b = clustering.bipartition(d)
  assert b.first.tolist() == [0, 1] and b.second.tolist() == [2, 3]
  assert b.gap == 2.0
  assert b.normalized_gap == pytest.approx(2.0 / 7.0)
  assert clustering.bipartition(np.zeros((3, 3))) is None
  assert clustering.bipartition(np.zeros((1, 1))) is None


def _opposed_groups(rng, n_per_group=4, dim=50, noise=0.3):
  """Two groups pulling in opposite directions (incongruent)."""
  direction = rng.standard_normal(dim)
  a = direction + noise * rng.standard_normal((n_per_group, dim))
  b = -direction + noise * rng.standard_normal((n_per_group, dim))
  return np.concatenate([a, b])


def test_cosine_splits_opposed_updates_and_labels_the_heavier_side_parent():
  v = _opposed_groups(np.random.default_rng(0))
  d = clustering.dissimilarity(v, 'cosine')
  weights = [1, 1, 1, 1, 5, 5, 5, 5]  # the second group carries more data
  clusters, splits, gap = clustering.divisive_clustering(
      d, [0] * 8, weights, num_clusters=1, max_clusters=2)
  assert clusters.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
  assert len(splits) == 1
  assert (splits[0].parent, splits[0].child) == (0, 1)
  assert splits[0].stayed.tolist() == [4, 5, 6, 7]
  assert splits[0].moved.tolist() == [0, 1, 2, 3]
  assert gap > 0.5


def test_cosine_does_not_split_aligned_updates_of_different_sizes_but_l2_does():
  # Congruent clients: the same direction, different magnitudes (e.g. more
  # or fewer local steps). Their cosine similarity is 1, so cosine sees one
  # group; L2 sees two well-separated groups of magnitudes and splits them:
  # the failure of L2 the module docstring describes.
  direction = np.array([1.0, 2.0, 2.0])
  v = np.array([1.0, 1.1, 1.2, 3.0, 3.1, 3.2])[:, None] * direction
  for metric, expected in (('cosine', [0] * 6), ('l2', [0, 0, 0, 1, 1, 1])):
    d = clustering.dissimilarity(v, metric)
    clusters, splits, _ = clustering.divisive_clustering(
        d, [0] * 6, [1] * 6, num_clusters=1, max_clusters=4)
    assert clusters.tolist() == expected, metric
    assert len(splits) == (metric == 'l2')


def test_splitting_respects_min_size_and_the_cluster_cap():
  rng = np.random.default_rng(1)
  # One outlier opposed to 5 aligned clients: a positive gap, but a
  # singleton side, so no split with min_size=2.
  v = np.concatenate([np.ones((5, 20)) + 0.1 * rng.standard_normal((5, 20)),
                      -np.ones((1, 20))])
  d = clustering.dissimilarity(v, 'cosine')
  assert clustering.bipartition(d).gap > 0
  clusters, splits, _ = clustering.divisive_clustering(
      d, [0] * 6, [1] * 6, num_clusters=1, max_clusters=4, min_size=2)
  assert splits == [] and clusters.tolist() == [0] * 6
  clusters, splits, _ = clustering.divisive_clustering(
      d, [0] * 6, [1] * 6, num_clusters=1, max_clusters=2, min_size=1)
  assert clusters.tolist() == [0, 0, 0, 0, 0, 1]
  # Four pairs in a two-level hierarchy: (3, +-1) against (-3, +-1), then
  # +1 against -1 within each half. Up to 3 splits, never more than the cap.
  centres = np.array([[3.0, 1.0], [3.0, -1.0], [-3.0, 1.0], [-3.0, -1.0]])
  v = np.repeat(centres, 2, axis=0) + 0.001 * rng.standard_normal((8, 2))
  d = clustering.dissimilarity(v, 'cosine')
  for cap, expected in ((1, 1), (2, 2), (4, 4), (8, 4)):
    clusters, splits, _ = clustering.divisive_clustering(
        d, [0] * 8, [1] * 8, num_clusters=1, max_clusters=cap)
    assert len(np.unique(clusters)) == expected, cap
    assert len(splits) == expected - 1
  # With 4 clusters, every pair is together and alone.
  pairs = clusters.reshape(4, 2)
  assert (pairs[:, 0] == pairs[:, 1]).all()
  assert len(np.unique(pairs[:, 0])) == 4
  # The first split is the coarse one (largest gap first).
  _, splits, _ = clustering.divisive_clustering(
      d, [0] * 8, [1] * 8, num_clusters=1, max_clusters=2)
  assert sorted([splits[0].stayed.tolist(), splits[0].moved.tolist()]) == [
      [0, 1, 2, 3], [4, 5, 6, 7]]


def test_equally_separated_groups_have_no_positive_gap():
  # Four mutually orthogonal groups: every bipartition puts two orthogonal
  # groups together (d = 1) and two apart (d = 1), so the gap is ~0 and
  # nothing splits. The criterion only splits clear two-way structure.
  for seed in range(5):
    rng = np.random.default_rng(seed)
    v = np.repeat(np.eye(4), 2, axis=0) + 0.01 * rng.standard_normal((8, 4))
    d = clustering.dissimilarity(v, 'cosine')
    assert -0.05 < clustering.bipartition(d).gap < 0
    clusters, _, _ = clustering.divisive_clustering(
        d, [0] * 8, [1] * 8, num_clusters=1, max_clusters=8)
    assert clusters.tolist() == [0] * 8


def test_only_clients_of_the_same_cluster_are_compared():
  # Clients 0-3 are in cluster 0, 4-7 in cluster 1. Across clusters the
  # dissimilarities are garbage (updates from different models) and must
  # not matter; within cluster 1 two groups separate.
  d = np.full((8, 8), 9.0)
  d[:4, :4] = 0.1
  d[4:, 4:] = [[0, .1, 2, 2], [.1, 0, 2, 2], [2, 2, 0, .1], [2, 2, .1, 0]]
  np.fill_diagonal(d, 0)
  clusters, splits, _ = clustering.divisive_clustering(
      d, [0, 0, 0, 0, 1, 1, 1, 1], [1] * 8, num_clusters=2, max_clusters=3)
  assert clusters.tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
  assert (splits[0].parent, splits[0].child) == (1, 2)


def test_prefers_second_by_hand():
  first, second = np.array([1.0, 0.0]), np.array([0.0, 10.0])
  u = np.array([0.2, 1.0])
  # Cosine: u points mostly along `second`.
  assert clustering.prefers_second(u, first, second, 'cosine')
  # L2: u is 0.82 from `first` and 9.0 from `second`.
  assert not clustering.prefers_second(u, first, second, 'l2')
  # Ties keep the first.
  assert not clustering.prefers_second(np.array([1.0, 1.0]), first,
                                       np.array([0.0, 1.0]), 'cosine')


def test_purity_by_hand():
  assert clustering.purity([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
  assert clustering.purity([0, 0, 1, 1], [5, 7, 7, 7]) == 0.75
  assert clustering.purity([0, 0, 0, 0], [5, 7, 7, 7]) == 0.75
  with pytest.raises(ValueError, match='equally long'):
    clustering.purity([0], [0, 1])


def test_similarity_image_colours_and_masks():
  v = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
  d = clustering.dissimilarity(v, 'cosine')
  comparable = np.ones((3, 3), bool)
  comparable[0, 2] = comparable[2, 0] = False
  image = clustering.similarity_image(d, 'cosine', [0, 1, 2], comparable,
                                      cell=2)
  assert image.shape == (6, 6, 3) and image.dtype == np.uint8
  np.testing.assert_array_equal(image[0, 4], [128, 128, 128])  # masked
  # RdBu: similarity +1 is blue, -1 is red.
  assert image[0, 2, 2] > image[0, 2, 0]  # (0, 1): +1
  assert image[2, 2, 2] > image[2, 2, 0]  # (1, 1) diagonal: +1
  assert image[4, 2, 0] > image[4, 2, 2]  # (2, 1): -1
  assert image[2, 4, 0] > image[2, 4, 2]  # (1, 2): -1


# --- Sattler et al.'s rule --------------------------------------------------


def test_gamma_bound_by_hand():
  # Two groups at 90 degrees: alpha = 0, gamma_bound = sqrt(1/2).
  v = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
  first, second = np.array([0, 1]), np.array([2, 3])
  for statistic in ('group_mean', 'pairwise_max'):
    assert clustering.gamma_bound(v, first, second, 'cosine',
                                  statistic=statistic) == pytest.approx(
                                      np.sqrt(0.5))
  # l2, relative distance: cross pairs |(1,0)-(0,1)| / 2 = 0.7071 is the min
  # (= the cosine value for unit vectors); of the means (1.5,0), (0,2):
  # 2.5 / 3.5.
  assert clustering.gamma_bound(v, first, second, 'l2',
                                statistic='pairwise_max') == pytest.approx(
                                    np.sqrt(2) / 2)
  assert clustering.gamma_bound(v, first, second, 'l2') == pytest.approx(
      2.5 / 3.5)
  # Opposed groups: alpha = -1, gamma_bound = 1.
  w = np.array([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]])
  alpha_max, alpha_mean = clustering.cross_similarities(w, first, second)
  assert alpha_mean == pytest.approx(-1.0)
  assert alpha_max == pytest.approx((-1 + 0.01) / 1.01)
  assert clustering.gamma_bound(w, first, second, 'cosine') == pytest.approx(
      1.0)
  with pytest.raises(ValueError, match="'median' is not valid"):
    clustering.gamma_bound(w, first, second, 'cosine', statistic='median')


def _noisy_groups(rng, n, dim, shared, opposed, noise):
  """n clients: common direction `shared`, +-`opposed` along a second
  direction for the two halves (incongruent if opposed > 0), and noise."""
  u, v = np.linalg.qr(rng.standard_normal((dim, 2)))[0].T
  sign = np.repeat([1.0, -1.0], n // 2)
  return (shared * u + opposed * sign[:, None] * v
          + noise * rng.standard_normal((n, dim)) / np.sqrt(dim)), sign > 0


def test_group_mean_criterion_separates_noisy_incongruent_clients():
  # Noise-dominated updates (pairwise cosines ~0.1, as real writers'): the
  # pairwise max-cross statistic cannot tell the federations apart, the
  # group-mean statistic can (the reason it is the default).
  rng = np.random.default_rng(0)
  results = {}
  for name, opposed in (('incongruent', 0.5), ('congruent', 0.0)):
    v, truth = _noisy_groups(rng, 100, 2000, 0.3, opposed, 1.0)
    dec = clustering.split_decision(v, np.ones(100), metric='cosine')
    results[name] = dec
  inc, con = results['incongruent'], results['congruent']
  assert inc.split and inc.reason == 'split'
  assert inc.alpha_mean_cross < -0.2
  assert clustering.purity(
      np.isin(np.arange(100), inc.bipartition.first),
      np.repeat([1, 0], 50)) == 1.0
  assert con.code == clustering.NOT_SEPARATED
  assert con.gamma_bound < 0.775 < inc.gamma_bound
  # The paper's pairwise statistic: both bounds below the default gamma_max.
  for dec in (inc, con):
    assert np.sqrt((1 - dec.alpha_max_cross) / 2) < 0.775


def test_split_decision_conditions_in_order():
  rng = np.random.default_rng(1)
  v, _ = _noisy_groups(rng, 20, 500, 0.0, 1.0, 0.2)
  w = np.ones(20)
  dec = clustering.split_decision(v, w, metric='cosine')
  assert dec.split and dec.num_clients == 20
  mean = v.mean(axis=0)
  assert dec.mean_norm == pytest.approx(np.linalg.norm(mean))
  assert dec.max_norm == pytest.approx(np.linalg.norm(v, axis=1).max())
  assert dec.margin == pytest.approx(dec.gamma_bound - 0.775)
  cases = [
      (dict(min_size=11), clustering.TOO_FEW_CLIENTS),
      (dict(mean_norm_max=dec.mean_norm), clustering.NOT_STATIONARY),
      (dict(max_norm_min=dec.max_norm), clustering.SMALL_UPDATES),
      (dict(gamma_max=dec.gamma_bound), clustering.NOT_SEPARATED),
      (dict(can_split=False), clustering.CLUSTER_CAP),
  ]
  for kwargs, code in cases:
    assert clustering.split_decision(v, w, metric='cosine',
                                     **kwargs).code == code, kwargs
  # An opposed singleton: separated, but one side too small.
  v1 = np.concatenate([np.ones((5, 20)), -np.ones((1, 20))])
  v1 += 0.01 * rng.standard_normal(v1.shape)
  assert clustering.split_decision(v1, np.ones(6), metric='cosine').code == (
      clustering.SMALL_SIDE)
  # The 'gap' rule ignores the norm thresholds.
  assert clustering.split_decision(v, w, metric='cosine', rule='gap',
                                   mean_norm_max=1e-9).split
  assert not clustering.split_decision(v[:1], w[:1], metric='cosine').split
  assert clustering.split_decision(v[:0], w[:0], metric='l2').code == (
      clustering.TOO_FEW_CLIENTS)
  with pytest.raises(ValueError, match="split rule 'x' is not valid"):
    clustering.split_decision(v, w, metric='cosine', rule='x')


def test_l2_rule_splits_aligned_updates_of_different_sizes_cosine_does_not():
  # The L2 failure mode of the module docstring, under the Sattler rule:
  # magnitudes ~1 and ~10.5 give a relative distance of the group means
  # 9.4 / 11.6 = 0.81 > gamma_max; the cosine is 1.
  direction = np.array([1.0, 2.0, 2.0])
  v = np.array([1.0, 1.1, 1.2, 10.0, 10.5, 11.0])[:, None] * direction
  assert clustering.split_decision(v, np.ones(6), metric='l2').split
  assert not clustering.split_decision(v, np.ones(6), metric='cosine').split


def test_sketch_is_linear_preserves_cosines_and_matches_tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  dim, size = 1024, 50_000
  x = rng.standard_normal(size)
  y = 0.5 * x + rng.standard_normal(size)
  sx, sy = (clustering.sketch(v, dim, seed=3) for v in (x, y))
  assert sx.shape == (dim,)
  np.testing.assert_allclose(clustering.sketch(2 * x - y, dim, 3),
                             2 * sx - sy, atol=1e-9)
  exact = clustering.cosine_similarity(np.stack([x, y]))[0, 1]
  approx = clustering.cosine_similarity(np.stack([sx, sy]))[0, 1]
  assert abs(exact - approx) < 4 / np.sqrt(dim)
  assert np.linalg.norm(sx) == pytest.approx(np.linalg.norm(x), rel=0.15)
  # The TF version (what clients compute) equals the numpy twin.
  tf_sx = clustering.sketch_tf(tf.constant(x, tf.float32), dim, 3).numpy()
  np.testing.assert_allclose(tf_sx, sx, rtol=1e-4, atol=1e-3)
  # Another seed, another projection; small vectors are kept exactly.
  assert not np.allclose(clustering.sketch(x, dim, 4), sx)
  np.testing.assert_array_equal(clustering.sketch(x[:10], dim, 3), x[:10])
  assert clustering.sketch_dim(size, 0) == size
  assert clustering.sketch_dim(size, dim) == dim
  with pytest.raises(ValueError, match='must be >= 0'):
    clustering.sketch_dim(size, -1)
