"""llmasr.data.frontend.FrontendConfig: a setting of the other kind is refused by its key."""

import numpy as np
import pytest

from llmasr.config_io import ConfigError, from_dict
from llmasr.data.features import FeatureExtractor
from llmasr.data.frontend import FrontendConfig


@pytest.mark.parametrize("key", ["n_fft", "chunk_seconds"])
def test_a_whisper_setting_on_an_fbank_frontend_is_refused(key):
    """An fbank frontend's FFT is its window rounded up to a power of two and it takes audio of any length: Whisper's
    n_fft and chunk_seconds had been accepted there and left its features as they were."""
    wave = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1
    plain = FeatureExtractor(FrontendConfig(dither=0.0))(wave, train=False)
    assert np.array_equal(plain, FeatureExtractor(FrontendConfig(dither=0.0, **{key: 2}))(wave, train=False))
    with pytest.raises(ConfigError, match=f"frontend.{key}: a whisper frontend's setting; an fbank frontend does"):
        from_dict(FrontendConfig, {key: 2}, "frontend")
    assert from_dict(FrontendConfig, {"kind": "whisper", key: 2}, "frontend").kind == "whisper"
