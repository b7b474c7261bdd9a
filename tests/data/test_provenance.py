"""d3hf.data.provenance: the refusal to test on rows an artifact was distilled from."""

from dataclasses import replace

import pytest

from d3hf.data.provenance import SplitOverlapError, check_test_split_disjoint, train_rows_record

# ----------------------------------------------------------------------------- overlap refusal


def _with_test(data, test):
    return replace(data, test=test, _test_labels=None)


def test_disjoint_test_split_is_accepted(digits):
    verdict = check_test_split_disjoint(train_rows_record(digits), digits)
    assert "verified disjoint" in verdict and "1437" in verdict


def test_test_split_overlapping_the_distillation_rows_is_refused(digits):
    import datasets

    leaky = _with_test(digits, datasets.concatenate_datasets([digits.test, digits.train.select(range(7))]))
    with pytest.raises(SplitOverlapError, match="7 of the 367 test rows"):
        check_test_split_disjoint(train_rows_record(digits), leaky)


def test_overlap_by_pixels_without_source_row(digits):
    import datasets

    train = digits.train.remove_columns("source_row")
    plain = replace(digits, train=train, test=digits.test.remove_columns("source_row"), _test_labels=None)
    record = train_rows_record(plain)
    assert record["train_rows_key"] == "image_sha1"
    assert "pixel hashes" in check_test_split_disjoint(record, plain)
    leaky = _with_test(plain, datasets.concatenate_datasets([plain.test, train.select([3, 9])]))
    with pytest.raises(SplitOverlapError, match="identical"):
        check_test_split_disjoint(record, leaky)


def test_unidentifiable_distillation_rows_are_refused_unless_allowed(digits):
    record = train_rows_record(digits.subset(range(5)))  # distilled from other rows than digits' train split
    with pytest.raises(SplitOverlapError, match="Cannot verify"):
        check_test_split_disjoint(record, digits)
    assert "NOT verified" in check_test_split_disjoint(record, digits, allow_unverified=True)


def test_artifact_source_without_row_digest_uses_the_fingerprint(digits):
    from d3hf.distill.runner import build_config
    from tests.helpers import tiny_args

    source = build_config(tiny_args(), digits).source
    assert source["train_rows_key"] == "source_row"  # new artifacts record their rows
    assert "verified disjoint" in check_test_split_disjoint(source, digits)
    source = {k: v for k, v in source.items() if k not in ("train_rows_key", "train_rows_digest")}  # older ones
    assert "verified disjoint" in check_test_split_disjoint(source, digits)
    with pytest.raises(SplitOverlapError):
        check_test_split_disjoint({**source, "train_fingerprint": "0" * 16}, digits)


@pytest.mark.slow
def test_peer_images_split_is_mnist5k_and_disjoint_from_its_test_split():
    import datasets

    from d3hf import load_image_classification
    from d3hf.evaluation.image_sets import peer_mnist5k_source

    mnist = load_image_classification("mnist5k")
    source = peer_mnist5k_source()
    assert source["num_train_rows"] == 4000
    assert "4000 distillation rows" in check_test_split_disjoint(source, mnist)
    leaky = _with_test(mnist, datasets.concatenate_datasets([mnist.test, mnist.train.select([0])]))
    with pytest.raises(SplitOverlapError):
        check_test_split_disjoint(source, leaky)
