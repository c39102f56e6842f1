"""app.scoring on hand-made arrays: temperature, ECE, the KNN score, AUROC, and the OOD file's checks."""

from __future__ import annotations

import numpy as np
import pytest

from app import scoring


def test_softmax_rows_sum_to_one_and_temperature_flattens():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    p = scoring.softmax(logits)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(p[1], 1 / 3)
    assert scoring.softmax(logits, 4.0)[0, 0] < p[0, 0] < scoring.softmax(logits, 0.5)[0, 0]


def test_the_fitted_temperature_recovers_the_one_the_labels_were_drawn_at():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(6000, 5))
    true_t = 2.5  # labels drawn from softmax(logits / 2.5): the logits are overconfident by 2.5x
    labels = np.array([rng.choice(5, p=p) for p in scoring.softmax(logits, true_t)])
    t = scoring.fit_temperature(logits, labels)
    assert abs(t - true_t) < 0.25
    before, after = scoring.ece(scoring.softmax(logits), labels), scoring.ece(scoring.softmax(logits, t), labels)
    assert before > 0.1 and after < 0.03
    assert scoring.nll(logits, labels, t) < scoring.nll(logits, labels)


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy():
    probs = np.array([[0.9, 0.1]] * 10)
    labels = np.array([0] * 6 + [1] * 4)  # 90% confident, 60% right
    assert scoring.ece(probs, labels) == pytest.approx(0.3)
    bins = scoring.reliability(probs, labels)
    full = [b for b in bins if b["count"]]
    assert len(full) == 1 and full[0]["count"] == 10 and full[0]["accuracy"] == pytest.approx(0.6)


def test_chance_ece_is_what_a_calibrated_model_reads_on_so_few_images():
    rng = np.random.default_rng(2)
    few, many = rng.uniform(0.5, 1.0, 300), rng.uniform(0.5, 1.0, 30_000)
    # answers right exactly as often as their scores say: the ECE measured is luck, and chance_ece says how much
    measured = [scoring.top_score_ece(few, rng.random(300) < few) for _ in range(100)]
    assert scoring.chance_ece(few) == pytest.approx(np.mean(measured), rel=0.2)
    assert scoring.chance_ece(few) > 0.03 and scoring.chance_ece(many) < 0.01  # ~0.051 and ~0.005
    assert scoring.chance_ece(np.ones(50)) == 0.0  # sure and right every time: no luck in it


def test_knn_distance_is_one_minus_the_cosine_of_the_kth_neighbour():
    bank = scoring.l2_normalised(np.array([[1.0, 0, 0], [0, 1.0, 0], [0.6, 0.8, 0]]))
    queries = np.array([[5.0, 0, 0], [0, 0, 2.0], [-1.0, 0, 0]])
    np.testing.assert_allclose(scoring.knn_distance(queries, bank, 1), [0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(scoring.knn_distance(queries, bank, 2), [0.4, 1.0, 1.6], atol=1e-6)
    assert scoring.knn_distance(queries, bank, 10).shape == (3,)  # k past the bank's size: its farthest


def test_auroc_counts_pairs_and_ties_half():
    assert scoring.auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert scoring.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert scoring.auroc(np.array([1.0]), np.array([1.0])) == 0.5
    rng = np.random.default_rng(1)
    known, unknown = rng.normal(0, 1, 500), rng.normal(1, 1, 400)
    pairs = (unknown[:, None] > known[None, :]).mean() + 0.5 * (unknown[:, None] == known[None, :]).mean()
    assert scoring.auroc(known, unknown) == pytest.approx(pairs)


def test_fpr_at_95_is_the_share_of_unknowns_below_the_threshold():
    known = np.arange(100.0)  # the 95% quantile: 94.05
    assert scoring.fpr_at_tpr(known, np.array([10.0, 94.0, 95.0, 200.0])) == 0.5


def test_the_tolerance_threshold_leaves_fewer_validation_images_above_than_the_plain_quantile():
    known = np.arange(1000.0)
    threshold, above = scoring.tolerance_threshold(known, tpr=0.95, confidence=0.95)
    # P(Binomial(1000, 0.05) <= 38) = 0.043 <= 0.05 < P(<= 39) = 0.060
    assert above == 38 and threshold == 961.0 and (known > threshold).sum() == 38
    assert scoring.tolerance_threshold(known, tpr=0.95, confidence=0.5)[1] == 49  # about the plain quantile's 50
    assert scoring.tolerance_threshold(known[::-1], tpr=0.95, confidence=0.95) == (961.0, 38)  # order is no matter


def test_too_few_validation_images_for_the_bound_take_the_largest_score():
    # 0.95 ** 58 = 0.051 > 0.05: with 58 images even none above is not rare enough; 59 suffice for none
    assert scoring.tolerance_threshold(np.arange(58.0)) == (57.0, 0)
    assert scoring.tolerance_threshold(np.arange(59.0)) == (58.0, 0)
    assert scoring.tolerance_threshold(np.arange(3.0)) == (2.0, 0)


def test_the_tolerance_threshold_keeps_its_promise_on_new_draws():
    # on 400 draws of 1,000 validation scores, the share of new scores above the threshold exceeds
    # 5% in about 5% of draws (the plain quantile: about half of them)
    rng = np.random.default_rng(0)
    new = np.sort(rng.normal(size=200_000))
    def over(threshold: float) -> bool:
        return 1 - np.searchsorted(new, threshold, side="right") / len(new) > 0.05
    bound = [over(scoring.tolerance_threshold(rng.normal(size=1000))[0]) for _ in range(400)]
    plain = [over(float(np.quantile(rng.normal(size=1000), 0.95))) for _ in range(400)]
    assert np.mean(bound) < 0.1 and np.mean(plain) > 0.35


def spec_for(blob: bytes, threshold: float = 0.3) -> scoring.OodSpec:
    return scoring.OodSpec("knn", 1, scoring.OOD_FILE, scoring.file_digest(blob), len(blob), threshold)


def test_a_scorer_calls_unknown_above_its_threshold(tmp_path):
    bank = scoring.l2_normalised(np.eye(4)[:2])
    blob = scoring.bank_bytes(bank)
    (tmp_path / scoring.OOD_FILE).write_bytes(blob)
    scorer = scoring.Scorer.load(tmp_path, 2.0, spec_for(blob))
    logits = np.array([[4.0, 0.0], [0.0, 4.0]])
    near, far = scorer.verdicts(logits, np.array([[1.0, 0.1, 0, 0], [0, 0, 1.0, 0]]))
    assert near.unknown is False and far.unknown is True and far.ood_score == pytest.approx(1.0)
    assert near.predicted == 0 and near.probs[0] < near.raw[0]  # T = 2 softens the score
    assert scorer.calibrated and scorer.method.startswith("knn")


def test_a_scorer_without_open_world_files_says_it_cannot_tell():
    scorer = scoring.Scorer()
    v = scorer.verdict(np.array([3.0, 1.0]))
    assert v.unknown is None and not scorer.calibrated and scorer.method == "energy"
    np.testing.assert_allclose(v.probs, v.raw)
    assert v.ood_score == pytest.approx(float(scoring.energy(np.array([[3.0, 1.0]]))[0]))


@pytest.mark.parametrize("damage", ["missing", "truncated", "other bytes", "not a bank"])
def test_a_damaged_ood_file_is_refused_with_what_is_wrong(tmp_path, damage):
    blob = scoring.bank_bytes(scoring.l2_normalised(np.eye(3)))
    spec = spec_for(blob)
    path = tmp_path / scoring.OOD_FILE
    if damage == "truncated":
        path.write_bytes(blob[:100])
    elif damage == "other bytes":
        path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    elif damage == "not a bank":
        blob = b"x" * 64
        path.write_bytes(blob)
        spec = spec_for(blob)
    with pytest.raises(scoring.OpenWorldError, match="OOD file ood.npz"):
        scoring.Scorer.load(tmp_path, 1.0, spec)


def test_an_image_nearer_a_made_up_outlier_than_the_training_images_scores_that_much_higher(tmp_path):
    bank = scoring.l2_normalised(np.eye(4)[:2])
    outliers = scoring.l2_normalised(np.array([[0.0, 0.0, 1.0, 0.0]]))
    blob = scoring.bank_bytes(bank, outliers)
    (tmp_path / scoring.OOD_FILE).write_bytes(blob)
    spec = scoring.OodSpec("knn", 1, scoring.OOD_FILE, scoring.file_digest(blob), len(blob), 0.3, outliers=1)
    scorer = scoring.Scorer.load(tmp_path, None, spec)
    plain = scoring.Scorer(None, spec, bank)
    features = np.array([[1.0, 0.1, 0, 0], [0, 0, 1.0, 0.2], [0, 0, 0, 1.0]])  # a training image, an outlier, neither
    with_outliers, without = scorer.ood_scores(None, features), plain.ood_scores(None, features)
    to_outlier = 1 - 1 / np.hypot(1.0, 0.2)
    np.testing.assert_allclose(with_outliers, [without[0], 2 * without[1] - to_outlier, without[2]], atol=1e-3)
    assert with_outliers[1] > without[1] + 0.9  # 1.0 from the bank, ~0.02 from the outlier
    assert "1 made-up outliers" in scorer.method and "outliers" not in plain.method


def test_outliers_that_do_not_match_the_card_are_refused(tmp_path):
    bank = scoring.l2_normalised(np.eye(3))
    blob = scoring.bank_bytes(bank, bank[:2])
    (tmp_path / scoring.OOD_FILE).write_bytes(blob)
    spec = scoring.OodSpec("knn", 1, scoring.OOD_FILE, scoring.file_digest(blob), len(blob), 0.3, outliers=5)
    with pytest.raises(scoring.OpenWorldError, match=r"outliers of \(2, 3\), not the card's \(5, 3\)"):
        scoring.Scorer.load(tmp_path, 1.0, spec)
    no_outliers = scoring.bank_bytes(bank)
    (tmp_path / scoring.OOD_FILE).write_bytes(no_outliers)
    spec = scoring.OodSpec("knn", 1, scoring.OOD_FILE, scoring.file_digest(no_outliers), len(no_outliers), 0.3,
                           outliers=2)
    with pytest.raises(scoring.OpenWorldError, match="not a feature bank"):
        scoring.Scorer.load(tmp_path, 1.0, spec)
