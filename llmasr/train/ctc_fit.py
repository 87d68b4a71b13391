"""Start-up word on the lines a CTC branch has no path for (llmasr.data.ctc_frames): their labels, counted in the
start-up screen's pass, against the encoder frames their durations give. `llmasr train` logs it before the first
update and `llmasr check` prints it; a warning, not a refusal (see unaligned_text)."""

from __future__ import annotations

from llmasr.data.ctc_frames import heard_lines, unaligned_text
from llmasr.data.screen import where
from llmasr.models.context import encoder_frames


def ctc_frames_warnings(model, recipe, loaders) -> list[str]:
    """The warnings of unaligned_text for data.train and data.valid (`loaders`: the run plan's (train loader,
    sampler, valid loader)) when the recipe trains a CTC branch (model.ctc.weight > 0); `model`: the SpeechLLM or its
    builder.AudioSide. Training's lines are counted at speed 1 and at speed perturbation's fastest factor apart."""
    if recipe.model.ctc.weight <= 0:
        return []
    said = []
    for name, loader in (("data.train", loaders[0]), ("data.valid", loaders[2])):
        need = getattr(loader, "ctc_need", None)
        if need is None:
            continue
        manifest = loader.dataset.manifest
        lines, seconds = heard_lines(loader.batch_sampler)
        text = unaligned_text(
            need, lines, seconds, lambda s: encoder_frames(model, s),
            lambda i, m=manifest: "{}:{}".format(*where(m, i)),
            name=name, squeeze=recipe.data.augment.squeeze if name == "data.train" else 1.0,
            vocab_kind=recipe.model.ctc.vocab_kind,
        )  # fmt: skip
        if text:
            said.append(text)
    return said
