"""The KNN bank's k: the 5th neighbour over a whole training set, fewer over a share of one."""

from training.open_world import K, neighbours


def test_k_scales_with_the_share_of_the_training_images_the_bank_holds():
    assert K == 5
    assert neighbours(1149, 1149) == 5  # the digits: every image in the bank
    assert neighbours(5000, 100_000) == 1  # the shipped model: a twentieth of its images
    assert neighbours(5000, 6000) == 4
    assert neighbours(512, 100) == 5  # never more than K, never fewer than 1
    assert neighbours(1, 10**9) == 1
