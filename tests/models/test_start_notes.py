"""The start-up notes of a model section (llmasr.models.start_notes): settings that train but do not do what they
seem to. Their path through `llmasr check` and train.log: tests/train (test_check_command_report, test_chunk_draws,
test_whisper_dither)."""

from llmasr.models.config import EncoderConfig, LoraConfig
from llmasr.models.ctc_config import CTCConfig
from llmasr.models.start_notes import ctc_off_note, frozen_full_context_note
from llmasr.testing.tiny_funasr import tiny_sanm_conf, tiny_streaming_conf, write_funasr_dir


def test_ctc_settings_beside_weight_0_are_named_each():
    assert ctc_off_note(CTCConfig()) is None  # the default section: no head, nothing set
    assert ctc_off_note(CTCConfig(weight=0.3, vocab="units.txt", label_smoothing=0.1)) is None
    one = ctc_off_note(CTCConfig(vocab="units.txt"))
    assert one.startswith("model.ctc.weight is 0, so no CTC head is built and model.ctc.vocab is not read;")
    two = ctc_off_note(CTCConfig(init_from="head.safetensors", init_prefix="ctc.", detach_encoder=True))
    assert "model.ctc.detach_encoder, model.ctc.init_from, model.ctc.init_prefix are not read" in two


def test_full_context_is_named_over_a_frozen_streaming_encoder_only(tmp_path):
    streaming = str(write_funasr_dir(tmp_path / "s", model="ParaformerStreaming", encoder_conf=tiny_streaming_conf()))
    offline = str(write_funasr_dir(tmp_path / "o", encoder_conf=tiny_sanm_conf()))
    note = frozen_full_context_note(EncoderConfig(path=streaming, conf={"context": "full"}))
    assert note.startswith(
        f"model.encoder.conf.context is full over the frozen Paraformer-streaming encoder of {streaming}"
    )
    assert frozen_full_context_note(EncoderConfig(path=streaming)) is None  # chunked, as FunASR runs it
    assert frozen_full_context_note(EncoderConfig(path=streaming, conf={"context": "full"}, freeze=False)) is None
    lora = EncoderConfig(path=streaming, conf={"context": "full"}, lora=LoraConfig())
    assert frozen_full_context_note(lora) is None  # LoRA on the encoder adapts it
    assert frozen_full_context_note(EncoderConfig(path=offline, conf={"context": "full"})) is None
