"""The training FLOP count against a count by hand from the tiny model's dimensions."""

import dataclasses

import pytest
import torch

from llmasr.models.builder import build_model
from llmasr.testing.tiny_recipe import random_batch, tiny_model_section, wave_batch
from llmasr.train.flops import FlopCounter


def counted(model, batch):
    counter = FlopCounter(model)
    model.train()
    with counter.measure(batch):  # the forward only, as TrainEngine.micro_step measures it
        out = model(batch)
    out.loss.backward()
    counter.remove()
    return counter.take()


def tiny_hand_count(frames: int, text_len: int, labelled: int, vocab: int) -> float:
    return sum(tiny_hand_parts(frames, text_len, labelled, vocab).values())


def tiny_hand_parts(frames: int, text_len: int, labelled: int, vocab: int) -> dict[str, float]:
    """The tiny model of tiny_model_section(freeze_encoder=True): a frozen 2-block SAN-M (560 -> 32, 4 heads, FFN
    64, FSMN kernel 11), a trained linear adaptor (stack 2, 64 -> 64 -> 64) and a 2-layer Qwen2 (hidden 64, 4 heads
    of 16, 2 KV heads, MLP 128) with LoRA r=4 on q_proj and v_proj. fwd = 2 * weights * rows; a backward GEMM is the
    same again for the input gradient (when one flows in) and for the weight gradient (when the weight trains)."""
    t, n = frames, frames // 2
    # Encoder, frozen and fed features that need no gradient: forward only.
    block0 = 560 * 96 + 32 * 32 + 32 * 11 + 32 * 64 + 64 * 32  # q|k|v, out, depthwise FSMN, FFN
    block1 = 32 * 96 + 32 * 32 + 32 * 11 + 32 * 64 + 64 * 32
    encoder = 2 * t * (block0 + block1) + 2 * (2 * 2 * 32 * t * t)  # + scores and weighted sum, T^2 pairs
    # Adaptor: linear1's input needs no gradient (fwd + weight grad), linear2's does (fwd + both).
    adaptor = 2 * n * (64 * 64) * 2 + 2 * n * (64 * 64) * 3
    # LLM over N = text + audio tokens: frozen base weights get input gradients only, LoRA A/B both.
    tokens = text_len + n
    base = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128  # q, k, v, o, gate, up, down
    lora = (64 * 4 + 4 * 64) + (64 * 4 + 4 * 32)  # q: A, B; v: A, B
    llm = 2 * (2 * tokens * base * 2 + 2 * tokens * lora * 3)
    attention = 2 * (2 * 2 * 64 * tokens * (tokens + 1) / 2) * 3  # causal pairs, forward + 2x backward
    head = 2 * labelled * 64 * vocab * 2  # labelled positions only; frozen head: input gradient only
    lora_llm = 2 * 2 * tokens * lora * 3
    return {"encoder": encoder, "adaptor": adaptor, "llm_base": llm - lora_llm, "lora": lora_llm,
            "attention": attention, "head": head}  # fmt: skip


def test_flops_match_the_hand_count_of_the_tiny_model(tiny_llm_dir):
    torch.manual_seed(0)
    model = build_model(tiny_model_section(tiny_llm_dir, freeze_encoder=True))
    batch = random_batch(model, ["hello world"], frames=[24])
    count = counted(model, batch)
    vocab = model.llm.get_base_model().config.vocab_size
    text_len = int(batch.text_lens[0])
    expected = tiny_hand_count(24, text_len, batch.labelled_tokens, vocab)
    assert count.flops == pytest.approx(expected, rel=1e-9)
    assert count.llm_tokens == count.llm_slots == text_len + 12
    assert count.audio_frames == count.audio_slots == 24


def test_flops_are_counted_by_the_dtype_they_run_in(tiny_llm_dir):
    """model.llm.dtype bfloat16 beside an fp32 encoder (train.precision fp32 keeps each weight's dtype): the LLM's
    base matmuls, its attention and the head run in bf16, LoRA (peft keeps it in fp32) and the audio side in fp32.
    MFU weighs each part by its own peak; the count had held one figure, taken at the fp32 peak."""
    torch.manual_seed(0)
    section = tiny_model_section(tiny_llm_dir, freeze_encoder=True)
    section["llm"]["dtype"] = "bfloat16"
    model = build_model(section)
    batch = random_batch(model, ["hello world"], frames=[24])
    count = counted(model, batch)
    vocab = model.llm.get_base_model().config.vocab_size
    parts = tiny_hand_parts(24, int(batch.text_lens[0]), batch.labelled_tokens, vocab)
    assert count.flops == pytest.approx(sum(parts.values()), rel=1e-9)
    assert count.bf16_flops == pytest.approx(parts["llm_base"] + parts["attention"] + parts["head"], rel=1e-9)
    assert count.fp16_flops == 0


def test_trained_encoder_adds_its_backward(tiny_llm_dir):
    """The same batch with the encoder trained: its GEMMs add weight and input gradients (block 0's q|k|v too: it
    reads the output of a trained LayerNorm), its attention a backward, and the adaptor's linear1 an input
    gradient; the rest is unchanged."""
    torch.manual_seed(0)
    frozen = build_model(tiny_model_section(tiny_llm_dir, freeze_encoder=True))
    trained = build_model(tiny_model_section(tiny_llm_dir, freeze_encoder=False))
    batch = random_batch(frozen, ["hello world"], frames=[24])
    t = 24
    block0 = 560 * 96 + 32 * 32 + 32 * 11 + 32 * 64 + 64 * 32
    block1 = 32 * 96 + 32 * 32 + 32 * 11 + 32 * 64 + 64 * 32
    extra_weight_grads = 2 * t * (block0 + block1)
    extra_input_grads = 2 * t * (block0 + block1)
    extra_attention = 2 * (2 * 2 * 32 * t * t) * 2
    extra_adaptor = 2 * (t // 2) * (64 * 64)  # linear1's input now needs a gradient
    more = counted(trained, batch).flops - counted(frozen, batch).flops
    assert more == pytest.approx(extra_weight_grads + extra_input_grads + extra_attention + extra_adaptor, rel=1e-9)


def test_activation_checkpointing_recomputation_is_not_model_flops(tiny_llm_dir):
    """Recomputing checkpointed activations in the backward changes hardware FLOPs, not the model's."""
    torch.manual_seed(0)
    section = tiny_model_section(tiny_llm_dir, freeze_encoder=True)
    plain = build_model(section)
    section["llm"]["gradient_checkpointing"] = True
    section["encoder"]["gradient_checkpointing"] = True
    checkpointed = build_model(section)
    batch = random_batch(plain, ["hello world", "the quick brown fox jumps"], frames=[24, 40])
    assert counted(checkpointed, batch) == counted(plain, batch)


def test_padding_is_left_out(tiny_llm_dir):
    """Two rows of different lengths: LLM tokens count the real positions of each row, slots the padded ones."""
    torch.manual_seed(0)
    model = build_model(tiny_model_section(tiny_llm_dir, freeze_encoder=True))
    batch = random_batch(model, ["hello world", "the quick brown fox jumps"], frames=[24, 40])
    count = counted(model, batch)
    rows = [counted(model, batch.select([i])) for i in range(2)]
    assert count.llm_tokens == sum(r.llm_tokens for r in rows)
    assert count.llm_slots == 2 * max(r.llm_tokens for r in rows)
    assert count.audio_frames == 64 and count.audio_slots == 80
    # The LLM side is exact per row; the audio branches' padded count is scaled by the real frame share (matmuls)
    # and by the share of squares (the encoder's attention), which is exact for frame-wise SAN-M and a linear adaptor.
    assert count.flops == pytest.approx(sum(r.flops for r in rows), rel=1e-9)


@pytest.mark.parametrize("kind", ["conformer", "transformer", "qformer"])
def test_attention_over_padded_frames_costs_what_the_clips_cost_apart(tiny_llm_dir, kind):
    """A long and a short clip in one batch: the short one's attention is over its own frames (T^2), not the long
    one's (T * Tmax). The count had scaled the padded attention by the real frame share, 1-3 % over here; now it is
    within the rounding of lengths between frame rates (the Q-Former's windows, the conformer's 2T - 1 positions)."""
    from llmasr.testing.tiny_whisper import tiny_conformer_conf

    section = tiny_model_section(tiny_llm_dir, adaptor="linear" if kind == "conformer" else kind)
    if kind == "conformer":
        section["encoder"] = {"type": "conformer", "freeze": False, "conf": tiny_conformer_conf(80),
                              "frontend": {"n_mels": 80, "lfr_m": 1, "lfr_n": 1}}  # fmt: skip
    torch.manual_seed(0)
    model = build_model(section)
    frames = [400, 100] if kind == "conformer" else [200, 50]
    batch = random_batch(model, ["hello world", "the quick brown fox"], frames=frames)
    together = counted(model, batch)
    apart = [counted(model, batch.select([i])) for i in range(2)]
    assert together.flops == pytest.approx(sum(c.flops for c in apart), rel=2e-3)


def test_features_computed_on_the_device_count_as_the_workers_do(tiny_llm_dir):
    """data.features_on: device: the batch carries waveforms and an empty `feats`; the count is the one of the
    same features computed by the workers (the audio share had been the frame total over zero slots)."""
    torch.manual_seed(0)
    model = build_model(tiny_model_section(tiny_llm_dir, freeze_encoder=True))
    on_device = wave_batch(model, ["hello world", "the quick brown fox jumps"], [0.9, 0.5])
    feats, lens = model.batch_features(on_device)
    by_workers = dataclasses.replace(on_device, feats=feats, wave=on_device.wave[:, :0])
    assert on_device.has_waves and not by_workers.has_waves and on_device.feat_slots == feats.shape[0] * feats.shape[1]
    device_count, worker_count = counted(model, on_device), counted(model, by_workers)
    assert device_count == worker_count and device_count.audio_slots == feats.shape[0] * feats.shape[1]


def test_whisper_encoder_counts_its_convolutions_and_attention(tiny_llm_dir, tmp_path):
    """Hugging Face's Whisper encoder: two convolutions at 10 and 20 ms, then blocks over the whole window of
    max_source_positions (100) positions, whatever the clip's length; frozen, so forward only."""
    from llmasr.testing.tiny_whisper import write_tiny_whisper_dir

    section = tiny_model_section(tiny_llm_dir, encoder_dir=write_tiny_whisper_dir(tmp_path / "w"), freeze_encoder=True)
    section["encoder"].update(type="whisper", conf={})
    model = build_model(section)
    batch = random_batch(model, ["hello world"], frames=[120])
    counter = FlopCounter(model)
    with counter.measure(batch):
        model(batch)
    d, positions = 32, 100
    convs = 2 * (80 * d * 3) * 200 + 2 * (d * d * 3) * positions
    block = 2 * (4 * d * d + 2 * d * 2 * d) * positions + 2 * 2 * d * positions * positions
    assert counter.padded["encoder"] + counter.quadratic["encoder"] == convs + 2 * block


@pytest.mark.parametrize("rel_pos", ["latest", "legacy"])
def test_conformer_position_scores_are_counted(tiny_llm_dir, rel_pos):
    """A frozen conformer over one utterance, forward only: the count equals torch's own FlopCounterMode over the same
    forward, the relative-position scores q.p^T included (against 2T - 1 positions, the legacy table's T); the
    count had left that third attention product out."""
    from torch.utils.flop_counter import FlopCounterMode

    from llmasr.testing.tiny_whisper import tiny_conformer_conf

    conf = tiny_conformer_conf(80)
    if rel_pos == "legacy":
        conf.update(rel_pos_type="legacy", pos_enc_layer_type="legacy_rel_pos",
                    selfattention_layer_type="legacy_rel_selfattn")  # fmt: skip
    section = tiny_model_section(tiny_llm_dir)
    section["encoder"] = {"type": "conformer", "freeze": True, "conf": conf, "frontend": {"n_mels": 80, "lfr_m": 1,
                                                                                          "lfr_n": 1}}  # fmt: skip
    torch.manual_seed(0)
    model = build_model(section).eval()
    batch = random_batch(model, ["zero one"], frames=[200])
    counter = FlopCounter(model)
    with torch.no_grad(), FlopCounterMode(display=False) as reference, counter.measure(batch):
        model.encoder(batch.feats, batch.feat_lens)
    assert counter.take().flops == reference.get_total_flops()


def test_whisper_encoder_costs_a_whole_window_however_the_clips_are_batched(tiny_llm_dir, tmp_path):
    """Whisper's encoder runs over its whole window for every clip, padded in a batch or alone: two clips of
    unequal length cost in one batch what they cost apart (the encoder's count had been scaled by the batch's real
    frame share, so the same clips cost a fifth less batched together)."""
    from llmasr.testing.tiny_whisper import write_tiny_whisper_dir

    section = tiny_model_section(tiny_llm_dir, encoder_dir=write_tiny_whisper_dir(tmp_path / "w"))
    section["encoder"].update(type="whisper", conf={})
    torch.manual_seed(0)
    model = build_model(section)
    batch = random_batch(model, ["hello world", "the quick brown fox"], frames=[180, 40])
    together = counted(model, batch)
    apart = [counted(model, batch.select([i])) for i in range(2)]
    assert together.flops == pytest.approx(sum(c.flops for c in apart), rel=1e-6)
    # so its padding (train.log's pad_audio) is the window's rest, as `llmasr check` counts it; the batch's own
    # padding (40 of 180 frames) had read 0.39 batched and 0 alone
    from llmasr.models.whisper import WhisperAudioEncoder

    window = next(m.n_frames for m in model.encoder.modules() if isinstance(m, WhisperAudioEncoder))
    assert together.audio_frames == 220 and together.audio_slots == 2 * window
    assert [c.audio_slots for c in apart] == [window, window]


def test_lora_on_the_attention_output_alone_adds_no_backward_through_the_scores(tiny_llm_dir, tmp_path):
    """A frozen Whisper encoder with LoRA on out_proj only: the first block's scores see no gradient (its input and
    q/k/v need none), later blocks' do (their input comes from a trained LoRA). The forward and backward count equals
    torch's FlopCounterMode over the same step; the count had added a backward through the first block's scores,
    because the attention's output needs a gradient for the LoRA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from llmasr.testing.tiny_whisper import write_tiny_whisper_dir

    section = tiny_model_section(tiny_llm_dir, encoder_dir=write_tiny_whisper_dir(tmp_path / "w"), freeze_encoder=True)
    section["encoder"].update(type="whisper", conf={})
    section["encoder"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["out_proj"]}
    torch.manual_seed(0)
    model = build_model(section).train()
    batch = random_batch(model, ["zero one"], frames=[120])
    counter = FlopCounter(model)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as reference:  # the scores as plain matmuls
        with counter.measure(batch):
            enc, _ = model.encoder(batch.feats, batch.feat_lens)
        enc.square().sum().backward()
    assert counter.take().flops == reference.get_total_flops()


@pytest.mark.parametrize(
    "targets",
    [["q_proj", "v_proj"], ["layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"], ["lm_head"]],
    ids=["lora_q_v", "lora_on_layer_1_only", "lora_on_the_head_only"],
)
def test_llm_attention_counts_the_backward_products_autograd_runs(tiny_llm_dir, targets):
    """A frozen encoder and adaptor: the first LLM layer's input needs no gradient, so its attention computes no key
    gradient without a trained k projection (LoRA on q/v), none at all where nothing in it trains (LoRA on layer 1
    only: layer 1 then computes no dK either), and no layer any with only the head trained. The count had taken a
    full backward through every layer's scores whenever anything in the LLM trained (over by the first layer's dK,
    by 5 products, and by 8). It equals torch's FlopCounterMode over the same step, the scores as plain matmuls: the
    math kernel multiplies all T^2 query-key pairs of causal attention, of which the count takes T(T+1)/2."""

    section = tiny_model_section(tiny_llm_dir, freeze_encoder=True)
    section["adaptor"]["freeze"] = True
    section["llm"]["lora"]["target_modules"] = targets
    torch.manual_seed(0)
    model = build_model(section).train()
    count, expected = _count_against_torch(model)
    assert count.llm_tokens == count.llm_slots
    assert count.flops == pytest.approx(expected, rel=1e-12)


def _count_against_torch(model):
    """(FlopCounter's count of one training step of `model`, torch's FlopCounterMode over the same step with the
    LLM's causal scores taken as the T(T+1)/2 query-key pairs the count takes; the math kernel multiplies all T^2)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    batch = random_batch(model, ["hello world"], frames=[24])
    counter = FlopCounter(model)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as reference:
        with counter.measure(batch):
            out = model(batch)
        out.loss.backward()
    count = counter.take()
    ops = reference.get_flop_counts()
    bmm = [sum(v for op, v in ops[m].items() if "bmm" in str(op)) for m in ("Global", "SpeechLLM.encoder")]
    llm_scores = bmm[0] - bmm[1]  # the LLM's attention products (the encoder's are its only other batched matmuls)
    t = count.llm_tokens
    assert llm_scores > 0
    return count, reference.get_total_flops() - llm_scores + llm_scores * (t + 1) / (2 * t)


def test_an_llm_of_conv1d_projections_counts_them(tmp_path):
    """GPT-2's projections are transformers' Conv1D (a linear layer with its weight stored transposed), which LoRA
    may target as it targets nn.Linear: their matmuls count as a Linear's. The count had left every one of them out
    (the LLM's whole base and LoRA on c_attn), and MFU read that much lower. It equals torch's FlopCounterMode over
    the same step, as test_llm_attention_counts_the_backward_products_autograd_runs reads it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmasr.testing.tiny_llm import DEFAULT_CORPUS, train_bpe_tokenizer, write_tiny_llm_dir

    tok = train_bpe_tokenizer(DEFAULT_CORPUS, 300)
    torch.manual_seed(0)
    ends = {"bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"), "eos_token_id": tok.eos_token_id}
    gpt2 = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=512, **ends)
    llm_dir = write_tiny_llm_dir(tmp_path / "gpt2", tokenizer=tok, model=GPT2LMHeadModel(gpt2))
    section = tiny_model_section(llm_dir, freeze_encoder=True)
    section["adaptor"]["freeze"] = True
    section["llm"]["lora"]["target_modules"] = ["c_attn"]
    model = build_model(section).train()
    count, expected = _count_against_torch(model)
    assert count.flops == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen2_moe"])
def test_an_moe_llm_counts_its_top_k_experts_and_router(tmp_path, arch):
    """A Mixture-of-Experts LLM (transformers' fused experts: 3-D parameters run by indexing, not nn.Linear layers;
    the router a weight of its own): each token costs its top-k experts' matmuls and the router's, not all experts'
    and not none. The count had left the experts and the router out, the bulk of an MoE layer's work."""
    from llmasr.testing.tiny_llm import MOE_SHAPES, write_tiny_llm_dir

    shape = MOE_SHAPES[arch]
    torch.manual_seed(0)
    model = build_model(tiny_model_section(write_tiny_llm_dir(tmp_path / arch, arch=arch), freeze_encoder=True))
    batch = random_batch(model, ["hello world"], frames=[24])
    count = counted(model, batch)
    vocab = model.llm.get_base_model().config.vocab_size
    tokens = int(batch.text_lens[0]) + 12
    dense_mlp = 3 * 64 * 128  # the hand count's Qwen2 MLP (gate, up, down), in place of which an MoE layer runs:
    experts = shape["num_experts_per_tok"] * 3 * 64 * shape["moe_intermediate_size"]
    router = shape["num_experts"] * 64
    shared = 3 * 64 * shape.get("shared_expert_intermediate_size", 0) + (64 if arch == "qwen2_moe" else 0)
    # frozen weights after a trained adaptor: forward and the input gradient, in each of the 2 layers
    moe = 2 * (2 * tokens * (experts + router + shared - dense_mlp) * 2)
    expected = tiny_hand_count(24, int(batch.text_lens[0]), batch.labelled_tokens, vocab) + moe
    assert count.flops == pytest.approx(expected, rel=1e-9)
    two = random_batch(model, ["hello world", "the quick brown fox jumps"], frames=[24, 40])
    rows = [counted(model, two.select([i])) for i in range(2)]
    assert counted(model, two).flops == pytest.approx(sum(r.flops for r in rows), rel=1e-9)  # padding left out
