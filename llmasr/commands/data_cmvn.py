"""`llmasr data cmvn [MANIFEST...] [key=value...] --out am.mvn (--recipe R | --n-mels N --lfr-m M --lfr-n N)`:
global CMVN."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmasr.config_io import ConfigError, from_dict
from llmasr.config_overrides import split_overrides
from llmasr.config_paths import input_paths, output_file_problem
from llmasr.data.cmvn import CMVNError, compute_global_cmvn
from llmasr.data.frontend import FrontendConfig
from llmasr.models.encoder_spec import encoder_frontend
from llmasr.models.funasr_dir import funasr_encoder_spec
from llmasr.recipe import load_recipe


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def fraction(text: str) -> float:
    """An argparse type: a share in [0, 1] (a --max-bad-fraction)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


FRONTEND_FLAGS = {"n_mels": 80, "lfr_m": 1, "lfr_n": 1, "sample_rate": 16000}  # without --recipe


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmasr data cmvn", description="global CMVN statistics, written as am.mvn")
    p.add_argument(
        "manifests", nargs="*",
        help="manifests (default: the recipe's data.train), and recipe overrides (key.path=value) as train takes",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="am.mvn to write")
    p.add_argument("--recipe", help="take the frontend (fbank, LFR) from the recipe's encoder")
    p.add_argument("--n-mels", type=int, help=f"without --recipe (default {FRONTEND_FLAGS['n_mels']})")
    p.add_argument("--lfr-m", type=int, help=f"without --recipe (default {FRONTEND_FLAGS['lfr_m']})")
    p.add_argument("--lfr-n", type=int, help=f"without --recipe (default {FRONTEND_FLAGS['lfr_n']})")
    p.add_argument("--sample-rate", type=int, help=f"without --recipe (default {FRONTEND_FLAGS['sample_rate']})")
    p.add_argument(
        "--max-bad-fraction",
        type=fraction,
        help="unusable utterances allowed (default: the recipe's data.max_bad_fraction, else 0.05)",
    )
    p.add_argument("--max-utts", type=at_least_one, help="read at most this many utterances, spread over the manifests")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_intermixed_args(argv)  # overrides may come before and after the options
    named, overrides = split_overrides(args.manifests)
    if overrides and not args.recipe:
        p.error(f"{overrides[0]}: a recipe override needs --recipe")
    given = {k: getattr(args, k) for k in FRONTEND_FLAGS if getattr(args, k) is not None}
    if args.recipe and given:  # they had been ignored: the recipe's encoder decides the frontend
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        p.error(f"{flags}: the frontend comes from --recipe's encoder; give one or the other")
    # refused now, not after a pass over the whole corpus
    if unwritable := output_file_problem(Path(args.out), named):
        return _refuse_out(args.out, unwritable)
    try:
        manifests, max_bad, weights = named, args.max_bad_fraction, None
        if args.recipe:
            # The am.mvn the recipe names is often the one this writes (an encoder trained from scratch); the
            # statistics never read it.
            recipe = load_recipe(args.recipe, [*overrides, "model.encoder.frontend.cmvn_file=null"])
            frontend = encoder_frontend(recipe.model.encoder)
            if unwritable := output_file_problem(Path(args.out), _recipe_inputs(recipe)):
                return _refuse_out(args.out, unwritable)
            if not manifests:  # data.train's mix, weighted as training draws it
                specs = recipe.data.train_manifests
                manifests, weights = [s.path for s in specs], [s.weight for s in specs]
            max_bad = recipe.data.max_bad_fraction if max_bad is None else max_bad
        else:
            frontend = from_dict(FrontendConfig, {**FRONTEND_FLAGS, **given}, "frontend")
        if not manifests:
            p.error("no manifests: name them, or give --recipe with data.train")
        limit = {} if max_bad is None else {"max_bad_fraction": max_bad}
        shift, _ = compute_global_cmvn(manifests, frontend, args.out, max_utts=args.max_utts, weights=weights, **limit)
    except (ConfigError, CMVNError, ValueError) as err:
        print(f"llmasr data cmvn: error: {err}", file=sys.stderr)
        return 2
    mix = (
        f"; data.train's manifests weighted {', '.join(f'{w:g}' for w in weights)}"
        if weights and len(weights) > 1
        else ""
    )
    print(f"wrote {args.out}: {shift.size} dims (n_mels {frontend.n_mels} x lfr_m {frontend.lfr_m}){mix}")
    return 0


def _refuse_out(out: str, why: str) -> int:
    print(f"llmasr data cmvn: error: --out {out}: {why}", file=sys.stderr)
    return 2


def _recipe_inputs(recipe) -> list[str]:
    """The files the recipe reads (its manifests, noise lists, ...) and a pretrained encoder's own CMVN: an --out
    naming one would destroy it (a training manifest, or the am.mvn the encoder's weights were trained with)."""
    inputs = [path for _, path in input_paths(recipe)]
    encoder = recipe.model.encoder
    if encoder.path is not None and encoder.type != "whisper":
        inputs += [cmvn] if (cmvn := funasr_encoder_spec(encoder.path)[2].cmvn_file) else []
    return inputs
