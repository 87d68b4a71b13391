"""`llmasr data cmvn [MANIFEST...] --out am.mvn (--recipe R | --n-mels N --lfr-m M --lfr-n N)`: global CMVN."""

from __future__ import annotations

import argparse
import sys

from llmasr.config_io import ConfigError, from_dict
from llmasr.data.cmvn import CMVNError, compute_global_cmvn
from llmasr.data.frontend import FrontendConfig
from llmasr.models.builder import encoder_frontend
from llmasr.recipe import load_recipe


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmasr data cmvn", description="global CMVN statistics, written as am.mvn")
    p.add_argument("manifests", nargs="*", help="manifests (default: the recipe's data.train)")
    p.add_argument("--out", required=True, help="am.mvn to write")
    p.add_argument("--recipe", help="take the frontend (fbank, LFR) from the recipe's encoder")
    p.add_argument("--n-mels", type=int, default=80)
    p.add_argument("--lfr-m", type=int, default=1)
    p.add_argument("--lfr-n", type=int, default=1)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--max-utts", type=int, help="read at most this many utterances, spread over the manifests")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        manifests = list(args.manifests)
        if args.recipe:
            recipe = load_recipe(args.recipe)
            frontend = encoder_frontend(recipe.model.encoder)
            manifests = manifests or [s.path for s in recipe.data.train_manifests]
        else:
            frontend = from_dict(
                FrontendConfig,
                {"n_mels": args.n_mels, "lfr_m": args.lfr_m, "lfr_n": args.lfr_n, "sample_rate": args.sample_rate},
                "frontend",
            )
        if not manifests:
            p.error("no manifests: name them, or give --recipe with data.train")
        shift, _ = compute_global_cmvn(manifests, frontend, args.out, max_utts=args.max_utts)
    except (ConfigError, CMVNError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {shift.size} dims (n_mels {frontend.n_mels} x lfr_m {frontend.lfr_m})")
    return 0
