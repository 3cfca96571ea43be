"""One probabilities-to-mask rule: strictly above the threshold, resized bilinearly first."""

import numpy as np
import pytest

from covidedge.runtime.postprocess import probabilities_to_mask


def test_threshold_is_strict_and_the_same_at_every_size():
    p = np.array([[0.2, 0.5], [0.50001, 0.9]], dtype=np.float32)
    assert probabilities_to_mask(p, 0.5).tolist() == [[False, False], [True, True]]
    # batched maps (evaluation) follow the same rule
    batch = np.stack([p, p])[:, None]
    assert np.array_equal(probabilities_to_mask(batch, 0.5)[1, 0], probabilities_to_mask(p, 0.5))
    # at the image's own size the map is resized first; at the model's size nothing changes
    assert np.array_equal(probabilities_to_mask(p, 0.5, (2, 2)), probabilities_to_mask(p, 0.5))
    big = probabilities_to_mask(p, 0.5, (20, 20))
    assert big.shape == (20, 20) and big[-1, -1] and not big[0, 0]
    with pytest.raises(ValueError, match="one h x w map"):
        probabilities_to_mask(batch, 0.5, (4, 4))
