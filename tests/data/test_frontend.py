"""llmasr.data.frontend.FrontendConfig: a setting of the other kind is refused by its key."""

import numpy as np
import pytest

from llmasr.config_io import ConfigError, from_dict
from llmasr.data.features import FeatureExtractor
from llmasr.data.frontend import FrontendConfig, read_kaldi_cmvn, write_kaldi_cmvn


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


def test_a_cmvn_file_that_is_not_text_or_holds_no_number_is_named(tmp_path):
    """A binary (or GBK) am.mvn raised a bare UnicodeDecodeError, a word among the numbers numpy's ValueError, each
    naming neither the file nor the block, as the recipe's model.encoder.frontend.cmvn_file was checked."""
    good = tmp_path / "am.mvn"
    write_kaldi_cmvn(good, np.zeros(4), np.ones(4))
    text = good.read_text(encoding="utf-8")
    binary = tmp_path / "binary.mvn"
    binary.write_bytes(b"\x00B<Nnet> \xff\xfe" + bytes(32))
    with pytest.raises(ConfigError, match=f"{binary}: not UTF-8 text"):
        read_kaldi_cmvn(binary)
    word = tmp_path / "word.mvn"
    word.write_text(text.replace("[ 1 1", "[ 1 one", 1), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{word}: <Rescale> holds a value that is not a number"):
        read_kaldi_cmvn(word)
    with pytest.raises(ConfigError, match=r"frontend.cmvn_file: .*word.mvn: <Rescale> holds a value"):
        from_dict(FrontendConfig, {"cmvn_file": str(word)}, "frontend")
