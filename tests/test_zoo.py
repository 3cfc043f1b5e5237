"""The benchmark models (dscore.zoo) load through dscore in both forms and score alike."""

from __future__ import annotations

import numpy as np
import pytest

from dscore import ModelSpec, zoo
from dscore.demo import FIELDS
from dscore.model import Model

from .helpers import padded_indices

SIZES = [52, 5002, 2002, 702]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return zoo.export(str(tmp_path_factory.mktemp("zoo")), SIZES, seed=3)


@pytest.fixture(scope="module")
def arrays():
    """Index matrices as encoding gives them: right-padded with 0, some rows all padding."""
    return padded_indices(SIZES)


def scores(keys: dict, arrays) -> np.ndarray:
    return Model.load(ModelSpec(**keys), FIELDS).predict(arrays, batch_size=256)


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_torchscript_and_eager_forms_score_alike(exported, arrays, name):
    script, eager = (scores(exported[name][form], arrays) for form in ("torchscript", "eager"))
    assert script.shape == (700, 2 if name == "two_output" else 1)
    assert np.abs(script.astype(np.float64) - eager).max() <= 1e-6
    assert script.std() > 1e-4  # scores that vary: not a saturated sigmoid, where any two models agree


def test_export_is_deterministic(exported, arrays, tmp_path):
    again = zoo.export(str(tmp_path), SIZES, seed=3, names=["dlrm"])
    other = zoo.export(str(tmp_path / "other"), SIZES, seed=4, names=["dlrm"])
    first = scores(exported["dlrm"]["torchscript"], arrays)
    np.testing.assert_array_equal(scores(again["dlrm"]["torchscript"], arrays), first)
    assert np.abs(scores(other["dlrm"]["torchscript"], arrays) - first).max() > 1e-4


def test_embedding_bag_equals_masked_mean_with_the_same_weights(exported, arrays):
    bag = exported["embedding_bag"]
    got = scores(bag["torchscript"], arrays)
    # The EmbeddingBag model's weights, loaded into the masked-mean formulation.
    masked = scores({**bag["eager"], "factory": "dscore.zoo:masked_mean"}, arrays)
    assert np.abs(got.astype(np.float64) - masked).max() <= 1e-6
    assert (arrays["campaigns"] == 0).all(axis=1).any()  # rows with nothing to average are covered
