"""SenseVoiceEncoderSmall with queries.language per_line: each row's own language query (FunASR's SenseVoiceSmall
training reads its line's text_language, "auto" with probability 0.2), against one fixed language, and against
FunASR's own `SenseVoiceSmall.encode` where funasr is importable."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from llmasr.config_io import ConfigError
from llmasr.models.sensevoice import LANGUAGES, SenseVoiceEncoderSmall

CONF = dict(input_size=24, output_size=16, attention_heads=2, linear_units=32, num_blocks=2, tp_blocks=1)


def _encoder(queries: dict, seed: int = 0) -> SenseVoiceEncoderSmall:
    torch.manual_seed(seed)
    return SenseVoiceEncoderSmall(**CONF, queries=queries).eval()


def test_each_row_gets_its_lines_language_query():
    per_line = _encoder({"language": "per_line"})
    xs, lens = torch.randn(3, 9, 24), torch.tensor([9, 7, 5])
    with torch.no_grad():
        got = per_line(xs, lens, ["zh", "en", None])[0]
        for row, language in enumerate(("zh", "en", "auto")):
            fixed = _encoder({"language": language})
            want = fixed(xs, lens)[0]
            n = int(lens[row])
            torch.testing.assert_close(got[row, :n], want[row, :n], rtol=0, atol=1e-6)
            others = [r for r in range(3) if r != row and r < 2]  # rows of another language differ from this run
            for r in others:
                assert not torch.allclose(got[r, : int(lens[r])], want[r, : int(lens[r])])


def test_unknown_languages_get_auto_and_training_drops_to_auto():
    enc = _encoder({"language": "per_line"})
    assert enc._language_ids(["de", "yue", "nospeech", None], 4).flatten().tolist() == [0, 7, 13, 0]
    torch.manual_seed(0)
    drawn = enc.training_languages(["zh"] * 4000)
    assert set(drawn) == {None, "zh"} and abs(drawn.count(None) / 4000 - 0.2) < 0.03
    never = _encoder({"language": "per_line", "auto_rate": 0.0})
    assert never.training_languages(["zh", None, "en"]) == ["zh", None, "en"]


@pytest.mark.parametrize(
    "queries, named",
    [
        ({"language": "zh", "auto_rate": 0.1}, r"queries.auto_rate 0.1 is for language 'per_line'.*language is 'zh'"),
        ({"language": "per_line", "auto_rate": 2}, r"queries.auto_rate must be a number in \[0, 1\], got 2"),
        ({"language": "perline"}, r"queries.language 'perline' is not one of .* or 'per_line'"),
    ],
)
def test_bad_per_line_settings_are_named(queries, named):
    with pytest.raises(ConfigError, match=named):
        SenseVoiceEncoderSmall(**CONF, queries=queries)


def test_rows_count_must_match():
    with pytest.raises(ValueError, match="1 languages for a batch of 2 rows"):
        _encoder({"language": "per_line"})(torch.randn(2, 5, 24), torch.tensor([5, 5]), ["zh"])


_funasr = pytest.mark.skipif(importlib.util.find_spec("funasr") is None, reason="funasr not importable")


@_funasr
def test_per_line_queries_equal_funasr_encode_with_text_language(monkeypatch):
    """FunASR's SenseVoiceSmall.encode reads each row's language token (text[:, 0]) and text-norm token
    (text[:, 3]); with its draw kept above 0.2 every row gets its own language, as llmasr's eval forward does."""
    from funasr.models.sense_voice.model import SenseVoiceSmall

    torch.manual_seed(3)
    conf = {k: v for k, v in CONF.items() if k != "input_size"}
    ref = SenseVoiceSmall(encoder="SenseVoiceEncoderSmall", encoder_conf=conf, input_size=24, vocab_size=8).eval()
    enc = SenseVoiceEncoderSmall(**CONF, queries={"language": "per_line", "itn": True}).eval()
    state = {k.removeprefix("encoder."): v for k, v in ref.state_dict().items() if k.startswith("encoder.")}
    enc.load_state_dict({**state, "query_embed.weight": ref.embed.weight}, strict=True)
    token = {v: k for k, v in ref.lid_int_dict.items()}  # query row -> its token id, as FunASR's data gives it
    languages = ["zh", "en", "ja", None]
    text = torch.tensor([[token.get(LANGUAGES.get(lang), 24993), 0, 0, 25016, 5] for lang in languages])
    xs, lens = torch.randn(4, 11, 24), torch.tensor([11, 8, 6, 3])
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.ones(*a))  # FunASR's draw: the line's language
    with torch.no_grad():
        want, want_lens = ref.encode(xs.clone(), lens.clone(), text)
    monkeypatch.setattr(torch, "rand", real_rand)
    with torch.no_grad():
        got, got_lens = enc(xs, lens, languages)
    assert torch.equal(want_lens - 4, got_lens)
    for row, n in enumerate(lens.tolist()):
        torch.testing.assert_close(got[row, :n], want[row, 4 : 4 + n], rtol=0, atol=1e-5)


def test_a_frozen_encoder_still_gets_auto_in_training_steps(tmp_path, monkeypatch):
    """A frozen encoder runs in eval mode inside a training model: the draw of "auto" follows the model's mode, so
    the adaptor and LLM still learn the encoder's "auto" output (decoding's for lines without a language)."""
    from llmasr.config_io import from_dict
    from llmasr.models.builder import build_model
    from llmasr.models.config import ModelConfig
    from llmasr.testing.tiny_funasr import tiny_sensevoice_conf, write_funasr_dir
    from llmasr.testing.tiny_llm import write_tiny_llm_dir
    from llmasr.testing.tiny_recipe import random_batch, tiny_model_section

    enc_dir = write_funasr_dir(tmp_path / "sv", model="SenseVoiceSmall", encoder_conf=tiny_sensevoice_conf())
    section = tiny_model_section(write_tiny_llm_dir(tmp_path / "llm"), encoder_dir=enc_dir, freeze_encoder=True)
    section["encoder"] |= {"type": "sensevoice", "conf": {"queries": {"language": "per_line", "auto_rate": 0.5}}}
    model = build_model(from_dict(ModelConfig, section, "model")).train()
    assert model.frozen_branches()[:1] == ["encoder"] and not model.encoder.training
    seen, forward = [], SenseVoiceEncoderSmall.forward
    monkeypatch.setattr(SenseVoiceEncoderSmall, "forward", lambda self, xs, lens, langs=None: seen.append(langs) or
                        forward(self, xs, lens, langs))  # fmt: skip
    batch = random_batch(model, ["a b"] * 40)
    batch.languages = ["zh"] * 40
    torch.manual_seed(0)
    model(batch)
    assert 8 < seen[-1].count(None) < 32 and set(seen[-1]) == {None, "zh"}
    model.eval()(batch)  # validation and decoding: each line's own
    assert seen[-1] == ["zh"] * 40
