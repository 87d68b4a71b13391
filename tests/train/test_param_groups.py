import re

import pytest
import torch
from torch import nn

from llmasr.config_io import ConfigError, from_dict
from llmasr.train.config import OptimConfig
from llmasr.train.param_groups import build_param_groups, describe_param_groups, idle_branch_settings


def _cfg(**branches):
    return from_dict(OptimConfig, {"branches": branches, "weight_decay": 0.05}, "optim")


def _names_by_group(model, groups):
    ids = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: sorted(ids[id(p)] for p in g["params"]) for g in groups}


def test_groups_per_branch_with_settings(make_model):
    model = make_model()
    groups = build_param_groups(model, _cfg(encoder={"lr": 1e-3, "betas": [0.8, 0.9]}, llm={"lr": 1e-4, "eps": 1e-6}))
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == [
        "encoder",
        "encoder_no_decay",
        "adaptor",
        "adaptor_no_decay",
        "ctc",
        "ctc_no_decay",
        "llm",
        "llm_no_decay",
    ]
    assert by_name["encoder"]["lr"] == by_name["encoder_no_decay"]["lr"] == 1e-3
    assert by_name["encoder"]["betas"] == (0.8, 0.9)
    assert by_name["llm"]["lr"] == 1e-4 and by_name["llm"]["eps"] == 1e-6
    assert by_name["adaptor"]["lr"] == 1e-4  # DEFAULT_LRS
    assert by_name["llm"]["weight_decay"] == 0.05
    assert all(by_name[n]["weight_decay"] == 0.0 for n in by_name if n.endswith("_no_decay"))
    assert all(g["branch"] == g["name"].removesuffix("_no_decay") for g in groups)
    # every trainable parameter in exactly one group
    flat = [id(p) for g in groups for p in g["params"]]
    assert sorted(flat) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    # torch takes the groups as they are
    torch.optim.AdamW(groups)


def test_no_decay_on_biases_norms_and_pos_biases(make_model):
    model = make_model()
    names = _names_by_group(model, build_param_groups(model, _cfg()))
    assert names["encoder"] == ["encoder.0.weight", "encoder.1.linear_q.weight"]
    assert names["encoder_no_decay"] == [
        "encoder.0.bias",
        "encoder.1.linear_q.bias",
        "encoder.1.pos_bias_u",
        "encoder.1.pos_bias_v",
        "encoder.2.bias",
        "encoder.2.weight",
    ]
    assert names["llm_no_decay"] == ["llm.norm.weight", "llm.proj.bias"]
    assert "llm.embed.weight" in names["llm"]


def test_frozen_branch_gets_no_group_and_no_empty_groups(make_model):
    model = make_model(freeze_encoder=True, freeze_llm=True)
    groups = build_param_groups(model, _cfg())
    assert [g["name"] for g in groups] == ["adaptor", "adaptor_no_decay", "ctc", "ctc_no_decay"]
    assert all(g["params"] for g in groups)
    # a branch with only decayed tensors gets no empty no-decay group
    model = make_model(freeze_encoder=True, freeze_llm=True, ctc=False)
    for p in model.adaptor.parameters():
        p.requires_grad_(p.ndim >= 2)
    assert [g["name"] for g in build_param_groups(model, _cfg())] == ["adaptor"]


def test_no_trainable_parameters_lists_branch_states(make_model):
    model = make_model(freeze_encoder=True, freeze_llm=True, ctc=False)
    for p in model.adaptor.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError) as err:
        build_param_groups(model, _cfg())
    msg = str(err.value)
    assert "no trainable parameters" in msg
    assert "encoder: frozen" in msg and "adaptor: frozen" in msg and "llm: frozen" in msg and "ctc: absent" in msg


def test_trainable_parameter_outside_branches_is_named(make_model):
    model = make_model()
    model.extra = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match=r"extra\.weight"):
        build_param_groups(model, _cfg())
    for p in model.extra.parameters():
        p.requires_grad_(False)
    build_param_groups(model, _cfg())  # frozen strays are fine


def test_unknown_branch_in_config():
    with pytest.raises(ConfigError, match=r"optim.branches.decoder: unknown branch; the branches are"):
        _cfg(decoder={"lr": 1e-4})


def test_describe_param_groups(make_model):
    model = make_model(freeze_encoder=True)
    table = describe_param_groups(build_param_groups(model, _cfg(adaptor={"lr": 3e-4})))
    lines = table.splitlines()
    assert lines[0].split() == ["group", "tensors", "params", "lr", "weight_decay"]
    adaptor = next(line for line in lines if line.startswith("adaptor "))
    assert adaptor.split() == ["adaptor", "2", "128", "0.0003", "0.05"]
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lines[-1].split()[:3] == ["total", str(sum(1 for p in model.parameters() if p.requires_grad)), f"{total:,}"]


def test_zero3_partitioned_weights_still_decay(make_model):
    """ZeRO-3 builds the LLM partitioned: each weight's data is an empty 1-D tensor and its shape is in ds_shape (as
    deepspeed.zero.Init leaves it). A matrix is still a matrix: it decays (every LLM weight had gone to no-decay)."""
    model = make_model()
    whole = describe_param_groups(build_param_groups(model, _cfg()))
    for p in model.llm.parameters():
        p.ds_shape, p.ds_numel = p.shape, p.numel()
        p.data = torch.empty(0)
    groups = build_param_groups(model, _cfg())
    names = _names_by_group(model, groups)
    assert names["llm_no_decay"] == ["llm.norm.weight", "llm.proj.bias"]
    assert "llm.embed.weight" in names["llm"] and "llm.proj.weight" in names["llm"]
    assert describe_param_groups(groups) == whole  # the table counts whole weights (it had counted the LLM as 0)


def test_settings_for_a_branch_that_trains_nothing_are_named_in_a_warning(make_model):
    """A recipe raising a frozen encoder's lr, or giving a CTC head the model does not have its own schedule, had
    its setting dropped without a word: the run trained as if it were not there. `llmasr check` and train.log now
    say so (a warning: freezing a branch with one override leaves the recipe's settings for it in place)."""
    model = make_model(freeze_encoder=True)
    cfg = _cfg(encoder={"lr": 1e-3, "weight_decay": 0.0}, llm={"lr": 1e-4})
    [warning] = idle_branch_settings(model, cfg)
    assert re.match(r"optim.branches.encoder: sets lr, weight_decay, but the encoder branch trains nothing \(frozen "
                    r"\(0 of [\d,]+ parameters trainable\)\): the settings change nothing \(to train it: "
                    r"model.encoder.freeze: false, or model.encoder.lora\)$", warning)  # fmt: skip
    assert [g["name"] for g in build_param_groups(model, cfg)][0] != "encoder"  # the run still builds
    model = make_model(ctc=False)
    [warning] = idle_branch_settings(model, _cfg(ctc={"scheduler": {"type": "constant"}}))
    assert warning.startswith("optim.branches.ctc: sets scheduler, but") and "(absent)" in warning
    assert "model.ctc.weight > 0" in warning
    # a branch section that sets nothing, and settings of branches that train, say nothing
    assert idle_branch_settings(model, _cfg(ctc={}, encoder={"lr": 1e-3}, llm={"lr": 1e-4})) == []
