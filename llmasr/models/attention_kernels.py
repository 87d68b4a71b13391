"""Which fused kernels torch's scaled_dot_product_attention may choose on CUDA, for the whole process.

Every attention in llmasr's models and in the Hugging Face LLMs goes through scaled_dot_product_attention. On recent
GPUs torch prefers cuDNN's fused attention wherever a mask rules flash attention out, which is every padded speech
batch. cuDNN builds an execution graph for each new input shape, on the host, before its kernel runs; speech batches
change shape from batch to batch (length buckets, the last batch of a bucket, a key-value cache growing one step at
a time while decoding), so that build ran on nearly every call and the GPU waited for it (bench/gpu_profile.py shows
the split of host and device time). llmasr leaves cuDNN's kernel out unless a recipe asks for it
(train.cudnn_attention: worth trying only where shapes repeat, e.g. every clip padded to one window), and keeps
torch's flash and memory-efficient kernels, whose host cost does not depend on the shape.
"""

from __future__ import annotations

import torch


def choose_attention_kernels(*, cudnn: bool = False) -> None:
    """Allow (cudnn=True) or rule out cuDNN's fused attention for every scaled_dot_product_attention call this process
    makes from now on, training and decoding alike; the other kernels stay as torch has them. A no-op for CPU work."""
    torch.backends.cuda.enable_cudnn_sdp(cudnn)


def cudnn_attention_allowed() -> bool:
    return torch.backends.cuda.cudnn_sdp_enabled()


def key_padding_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The attn_mask [B, 1, 1, T] for every scaled_dot_product_attention call of one forward over keys `valid`
    [B, T] (bool, True = attend), made once: sdpa turns a bool mask into this additive one (0 / -inf in the query's
    dtype) at each call, and the memory-efficient kernel copies a mask whose rows are not a multiple of 8 elements
    apart into aligned rows at each call, so the bias is made with aligned rows. Under cuDNN attention (CUDA) the
    bool mask itself: sdpa converts it for cuDNN its own way."""
    if valid.is_cuda and cudnn_attention_allowed():
        return valid[:, None, None, :]
    b, t = valid.shape
    bias = torch.full((b, 1, 1, -(-t // 8) * 8), float("-inf"), dtype=dtype, device=valid.device)[..., :t]
    return bias.masked_fill_(valid[:, None, None, :], 0.0)
