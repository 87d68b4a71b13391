"""bench/gpu_suite.py's summary.md: the training runs' table, decoding, features and the profile, each step with its
status and, where it did not run or failed, why."""

from __future__ import annotations


def fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def status_text(step: dict) -> str:
    """ok; skipped: the reason; failed or timed out: the line of its output that names the error."""
    if step["status"] == "skipped":
        return f"skipped: {step['reason']}"
    if step.get("error"):
        return f"{step['status']}: {step['error']}".replace("|", "/")  # a table cell
    return step["status"]


def decode_line(d: dict) -> str:
    """The decoding sentence: RTF with and without the first batch, and how many utterances ran to the length cap
    (the repetition stop is off, so that random weights decode to it: the upper bound the figure stands for)."""
    steady = fmt(d.get("rtf_after_first_batch"), ".4f")
    to_cap = (d.get("truncated_by_guard") or {}).get("max_tokens")
    return (
        f"Decoding ({status_text(d)}): RTF {fmt(d.get('rtf'), '.4f')} ({steady} after the first batch, which took "
        f"{fmt(d.get('first_batch_seconds'))} s), {fmt(d.get('utts_per_second'))} utt/s, "
        f"{fmt(d.get('audio_seconds'), '.0f')} s of audio, {d.get('mode')}, length cap {d.get('max_new_tokens')} "
        f"tokens: {fmt(to_cap, '.0f')} of {fmt(d.get('utterances'), '.0f')} utterances ran to it (random weights, "
        "repetition stop off)."
    )


def markdown(res: dict) -> list[str]:
    p = res["prepare"]
    lines = [
        f"# GPU suite on {res['device']} ({'CPU smoke run, numbers mean nothing' if res['smoke'] else 'real shapes'})",
        "",
        f"Model: {p.get('encoder_conf')} + {p.get('llm_conf')}, random weights, recipe "
        "recipes/paraformer-large_qwen2.5-1.5b_lora_zero2.yaml (LoRA r16 on every projection, gradient checkpointing).",
        f"{res['updates']} updates for the shipped recipe's run, half (at least 3) for the others; "
        "medians of the train.log lines after the first; "
        "peak memory: "
        "the device's (torch.cuda.max_memory_allocated), the process's resident peak on CPU. Suite wall time "
        f"{res['wall_s']:.0f} s (prepare {p.get('wall_s', 0):.0f} s).",
        "",
        "| run | status | wall s | updates | LLM tok/s | audio s/s | MFU | TFLOP/s | peak GiB | pad audio | pad LLM | "
        "data wait | loss first -> last |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in res["train"].items():
        mfu = r.get("mfu")
        mfu = f"{100 * mfu:.1f}%" if isinstance(mfu, (int, float)) else "n/a"
        loss = f"{fmt(r.get('loss_first'), '.3f')} -> {fmt(r.get('loss_last'), '.3f')}" if "loss_first" in r else "-"
        lines.append(
            f"| {name} | {status_text(r)} | {fmt(r.get('wall_s'), '.0f')} | {fmt(r.get('updates'), '.0f')} | "
            f"{fmt(r.get('tok/s'), ',.0f')} | {fmt(r.get('audio_s/s'), ',.0f')} | {mfu} | {fmt(r.get('tflops'))} | "
            f"{fmt(r.get('mem/device_peak_gb') or r.get('mem/host_peak_gb'), '.1f')} | "
            f"{fmt(r.get('pad_audio'), '.2f')} | "
            f"{fmt(r.get('pad_llm'), '.2f')} | {fmt(r.get('data_wait'), '.2f')} | {loss} |"
        )
    lines += ["", decode_line(res["decode"])]
    f = res["features"]
    lines += ["", f"Features ({status_text(f)}), audio s/s and multiple of a step's need:", ""]
    for r in f.get("paths", []):  # the GPU path has no thread count
        where = f"{r['device']} x{r['threads']}" if r["threads"] else r["device"]
        lines.append(f"- {r['path']} on {where}: {fmt(r['audio_s_per_s'], ',.0f')} ({fmt(r['x_step'], '.2f')}x)")
    pr = res["profile"]
    lines += [
        "",
        f"Profile ({status_text(pr)}): where an update's time goes, device and host, in "
        f"{pr.get('file') or 'no file'} beside this summary.",
    ]
    lines += ["", f"Reproduce: `{res['command']}` at commit {res['commit']}"]
    return lines
