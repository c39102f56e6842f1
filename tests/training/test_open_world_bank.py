"""The KNN bank's k: one neighbour per 1,000 training images, at most 5, fewer over a share."""

from training.open_world import IMAGES_PER_NEIGHBOUR, K, neighbours


def test_k_grows_with_the_training_set_and_scales_with_the_share_the_bank_holds():
    assert (K, IMAGES_PER_NEIGHBOUR) == (5, 1000)
    assert neighbours(1149, 1149) == 1  # the digits: every image in the bank, a small set
    assert neighbours(2400, 2400) == 2  # the real-object composites
    assert neighbours(5000, 5000) == 5
    assert neighbours(5000, 100_000) == 1  # the shipped model: a twentieth of its images
    assert neighbours(5000, 6000) == 4
    assert neighbours(512, 100) == 1  # never fewer than 1
    assert neighbours(1, 10**9) == 1
