"""The assembled SparseOccVLA: stages, losses (eq. 12), predict, checkpoints, paper shapes, learning sanity."""

from __future__ import annotations

import time

import pytest
import torch
from model_fixtures import make_batch, tiny_tokenizer

from sparseoccvla_core import PredictOutput, SparseOccVLA, SparseOccVLAConfig
from sparseoccvla_core.model import LOSS_NAMES, STAGE_LOSSES, loss_weights
from sparseoccvla_core.planner import inference_timesteps


@pytest.fixture(scope="module")
def cfg() -> SparseOccVLAConfig:
    return SparseOccVLAConfig.tiny()


@pytest.fixture(scope="module")
def tokenizer(cfg):
    return tiny_tokenizer(cfg)


@pytest.fixture
def model(cfg, tokenizer) -> SparseOccVLA:
    torch.manual_seed(0)
    return SparseOccVLA(cfg, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def batch(cfg, tokenizer):
    return make_batch(cfg, 2, seed=0, tokenizer=tokenizer)


def _trainable(module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def _all_trainable(module) -> bool:
    return all(p.requires_grad for p in module.parameters())


def _none_trainable(module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def test_stage_1_trains_encoder_and_connector_only(model, batch):
    model.set_stage(1)
    for name in ("backbone", "occupancy_encoder", "connector"):
        assert _all_trainable(getattr(model, name)), name
    for name in ("global_queries", "ego_token", "llm", "forecaster", "planner"):
        assert _none_trainable(getattr(model, name)), name
    assert _none_trainable(model.distillation.teacher)
    assert _all_trainable(model.distillation.norm_student) and _all_trainable(model.distillation.norm_teacher)
    losses = model(batch, stage=1)
    assert set(losses) == set(STAGE_LOSSES[1]) | {"loss"}
    losses["loss"].backward()
    assert model.occupancy_encoder.query_embed.weight.grad is not None
    assert all(p.grad is None for p in model.llm.parameters())


def test_stage_2_freezes_the_encoder(model, batch):
    model.set_stage(2)
    model.train()
    for name in ("backbone", "occupancy_encoder", "llm"):
        assert _none_trainable(getattr(model, name)), name
        assert not getattr(model, name).training, f"{name} must stay in eval mode while frozen"
    for name in ("connector", "global_queries", "ego_token", "forecaster", "planner"):
        assert _all_trainable(getattr(model, name)), name
        assert getattr(model, name).training
    losses = model(batch, stage=2)
    assert set(losses) == set(STAGE_LOSSES[2]) | {"loss"}
    losses["loss"].backward()
    assert all(p.grad is None for p in model.occupancy_encoder.parameters())
    # the LM loss reaches the connector and global queries through the frozen LLM
    assert model.global_queries.queries.grad.abs().sum() > 0
    assert model.connector.mlp[0].weight.grad.abs().sum() > 0


def test_train_llm_base_only_for_a_random_llm_in_stage_3(model, batch):
    """The explicit flag trains the whole (random) LLM in stage 3; elsewhere, or with a pretrained LLM, it is refused."""
    model.set_stage(3, train_llm_base=True)
    assert _all_trainable(model.llm)
    with pytest.raises(ValueError, match="train_llm_base"):
        model.set_stage(2, train_llm_base=True)
    model.cfg.llm_path = "/some/pretrained/llm"
    try:
        with pytest.raises(ValueError, match="pretrained"):
            model.set_stage(3, train_llm_base=True)
    finally:
        model.cfg.llm_path = None
    model.set_stage(3)
    assert all("lora_" in n for n in _trainable(model.llm))


def test_lm_loss_is_the_sum_of_per_stream_means(model, batch):
    """Eq. 5 per stream (QA and reasoning), each averaged over its own answer tokens, then summed."""
    from sparseoccvla_core.batch import IGNORE_INDEX

    model.eval()
    model.set_stage(2)
    with torch.no_grad():
        losses = model(batch, stage=2)
        enc = model.encode_scene(batch)
        prefix = model.scene_prefix(model.scene_tokens(enc), batch.ego_state, batch.command)
        parts = []
        for ids, mask, labels in (
            (batch.qa_input_ids, batch.qa_attention_mask, batch.qa_labels),
            (batch.plan_input_ids, batch.plan_attention_mask, batch.plan_labels),
        ):
            logits = model.llm.lm_head(model.llm.run_text(prefix, ids, mask))[:, :-1]
            parts.append(
                torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
                )
            )
    assert batch.qa_input_ids is not None
    assert torch.allclose(losses["lm"], parts[0] + parts[1], rtol=1e-4)


def test_stage_3_only_lora_inside_the_llm(model, batch):
    model.set_stage(3)
    llm_trainable = _trainable(model.llm)
    assert llm_trainable and all("lora_" in n for n in llm_trainable)
    assert llm_trainable == {n for n, _ in model.llm.named_parameters() if "lora_" in n}
    for name in ("backbone", "occupancy_encoder", "connector", "global_queries", "ego_token", "forecaster", "planner"):
        assert _all_trainable(getattr(model, name)), name
    assert _none_trainable(model.distillation.teacher)
    losses = model(batch, stage=3)
    assert set(losses) == set(STAGE_LOSSES[3]) | {"loss"}
    assert list(losses) == [*LOSS_NAMES, "loss"]  # the order losses.csv logs them in
    cfg = model.cfg
    assert loss_weights(cfg) == {
        "occ_cd": 1.0,
        "occ_focal": cfg.lambda_focal,
        "distill": cfg.distill_weight,
        "lm": 1.0,
        "fore_cd": 1.0,
        "fore_focal": cfg.lambda_focal,
        "plan_cls": cfg.plan_cls_weight,
        "plan_l1": cfg.plan_reg_weight,
    }
    expect = (
        losses["occ_cd"]
        + cfg.lambda_focal * losses["occ_focal"]
        + cfg.distill_weight * losses["distill"]
        + losses["lm"]
        + losses["fore_cd"]
        + cfg.lambda_focal * losses["fore_focal"]
        + cfg.plan_cls_weight * losses["plan_cls"]
        + cfg.plan_reg_weight * losses["plan_l1"]
    )
    assert torch.allclose(losses["loss"], expect)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    lora_grads = [p.grad for n, p in model.llm.named_parameters() if "lora_B" in n]
    assert all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    with pytest.raises(ValueError, match="stage must be"):
        model.set_stage(4)


def test_missing_batch_fields_are_named(model, batch):
    from dataclasses import replace

    with pytest.raises(ValueError, match="plan_input_ids"):
        model(replace(batch, plan_input_ids=None), stage=2)
    with pytest.raises(ValueError, match="occ_points"):
        model(replace(batch, occ_points=None, occ_labels=None, occ_mask=None), stage=1)


def test_predict_outputs(model, batch, cfg):
    calls = []
    handle = model.planner.decoder.register_forward_hook(lambda m, a, o: calls.append(1))
    out = model.predict(
        batch,
        generate_text=True,
        question="Is there a traffic light ahead?",
        generator=torch.Generator().manual_seed(0),
        score_threshold=0.0,
    )
    handle.remove()
    assert isinstance(out, PredictOutput)
    b, k = 2, cfg.num_anchors
    assert len(calls) == len(inference_timesteps(cfg.diffusion_infer_start_timestep, cfg.denoise_steps))
    assert out.plan.shape == (b, cfg.plan_horizon, 2)
    assert out.anchor_trajectories.shape == (b, k, cfg.plan_horizon, 2)
    assert out.anchor_scores.shape == (b, k) and out.chosen_anchor.shape == (b,)
    assert torch.equal(out.chosen_anchor, out.anchor_scores.argmax(1))
    assert len(out.occupancy_points) == b
    for pts, cls, sc in zip(out.occupancy_points, out.occupancy_classes, out.occupancy_scores):
        assert pts.shape[1] == 3 and pts.shape[0] == cls.shape[0] == sc.shape[0] > 0  # threshold 0 keeps points
        assert (cls >= 0).all() and (cls < cfg.num_classes - 1).all()
    assert len(out.forecast_points) == b and all(len(f) == cfg.forecast_frames for f in out.forecast_points)
    assert (
        isinstance(out.reasoning, list) and len(out.reasoning) == b and all(isinstance(t, str) for t in out.reasoning)
    )
    assert isinstance(out.answer, list) and len(out.answer) == b
    quiet = model.predict(batch, generator=torch.Generator().manual_seed(0))
    assert quiet.reasoning is None and quiet.answer is None
    # inputs only (no GT, no text): the default planning question drives the reasoning
    from dataclasses import replace

    bare = replace(
        batch,
        **{
            f: None
            for f in (
                "occ_points",
                "occ_labels",
                "occ_mask",
                "future_points",
                "future_labels",
                "future_mask",
                "qa_input_ids",
                "qa_attention_mask",
                "qa_labels",
                "plan_input_ids",
                "plan_attention_mask",
                "plan_labels",
                "gt_trajectory",
                "gt_trajectory_mask",
            )
        },
    )
    plain = model.predict(bare, generate_text=True, generator=torch.Generator().manual_seed(0))
    assert plain.plan.shape == out.plan.shape and len(plain.reasoning) == b
    assert model.training  # predict restores the mode


def test_save_load_round_trip_is_bit_identical(model, batch, cfg, tmp_path):
    anchors = torch.randn(cfg.num_anchors, cfg.plan_horizon, 2) * 5
    model.planner.set_anchors(anchors)
    # train a couple of steps so every weight (LoRA included) differs from its init
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(batch, stage=3)["loss"].backward()
        opt.step()
    before = model.predict(
        batch, generate_text=True, question="How many cars are there?", generator=torch.Generator().manual_seed(7)
    )
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {"model.safetensors", "config.yaml", "tokenizer"}
    assert not list((tmp_path / "ckpt").rglob("*.bin")) and not list((tmp_path / "ckpt").rglob("*.pt"))
    loaded = SparseOccVLA.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded.planner.anchors, anchors) and bool(loaded.planner.anchors_from_data)
    after = loaded.predict(
        batch, generate_text=True, question="How many cars are there?", generator=torch.Generator().manual_seed(7)
    )
    for field in ("plan", "anchor_trajectories", "anchor_scores", "chosen_anchor"):
        assert torch.equal(getattr(before, field), getattr(after, field)), field
    for a, b in zip(before.occupancy_points + before.occupancy_scores, after.occupancy_points + after.occupancy_scores):
        assert torch.equal(a, b)
    assert before.reasoning == after.reasoning and before.answer == after.answer
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    # the same config (paths may differ) loads; a different architecture is refused with the fields listed
    SparseOccVLA.from_pretrained(tmp_path / "ckpt", config=SparseOccVLAConfig.tiny(backbone_weights=None))
    with pytest.raises(ValueError, match=r"num_queries: checkpoint=48, given=32(.|\n)*lora_r"):
        SparseOccVLA.from_pretrained(tmp_path / "ckpt", config=SparseOccVLAConfig.tiny(num_queries=32, lora_r=4))
    with pytest.raises(FileNotFoundError, match="not a SparseOccVLA checkpoint"):
        SparseOccVLA.from_pretrained(tmp_path / "missing")


def test_paper_preset_on_meta_device_has_paper_shapes():
    cfg = SparseOccVLAConfig.paper()
    with torch.device("meta"):
        model = SparseOccVLA(cfg)
    assert model.tokenizer is None  # shape-only build: no local Vicuna tokenizer configured
    enc = model.occupancy_encoder
    assert enc.query_embed.weight.shape == (600, 1024)
    llm_cfg = model.llm.base_model.config
    assert (llm_cfg.num_hidden_layers, llm_cfg.hidden_size, llm_cfg.num_attention_heads) == (32, 4096, 32)
    assert (llm_cfg.intermediate_size, llm_cfg.vocab_size) == (11008, 32000)
    assert model.global_queries.queries.shape == (12, 4096)
    assert model.planner.anchors.shape == (18, 6, 2)
    assert model.forecaster.token_proj.weight.shape == (1024, 4096)
    assert model.planner.decoder.layers[0].occupancy_attn.num_heads == 32
    table = model.parameter_table()
    assert list(table) == [
        "backbone",
        "occupancy encoder",
        "distillation teacher (frozen CLIP)",
        "distillation projection + norms",
        "connector + ego token",
        "global queries",
        "LLM base",
        "LoRA",
        "forecaster",
        "planner",
    ]
    assert table["LLM base"] == 6_738_415_616  # Vicuna-7B / Llama-2-7B parameter count
    # LoRA r=128 on q, k, v, o of 32 layers (OmniDrive's targets): r * (in + out) per wrapped matrix
    assert cfg.lora_target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    per_layer = 4 * 128 * (4096 + 4096)
    assert table["LoRA"] == 32 * per_layer
    assert all(v > 0 for v in table.values())
    assert next(model.parameters()).device.type == "meta"


def test_info_command_prints_table(capsys):
    from sparseoccvla_core.cli import main

    assert main(["info", "--preset", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "| part | parameters |" in text and "| LoRA |" in text and "**total**" in text


def test_learning_sanity_stage3_loss_halves(cfg, tokenizer):
    """The tiny model fits one fixed batch: the total stage-3 loss drops below half within 200 AdamW steps."""
    torch.manual_seed(0)
    model = SparseOccVLA(cfg, tokenizer=tokenizer)
    batch = make_batch(cfg, 1, seed=3, tokenizer=tokenizer)
    model.set_stage(3)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    start = time.perf_counter()
    first = None
    for step in range(200):
        losses = model(batch, stage=3)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        value = {k: float(v.detach()) for k, v in losses.items()}
        first = first or value
        if value["loss"] < 0.5 * first["loss"] and step >= 10:
            break
    assert value["loss"] < 0.5 * first["loss"], (first, value)
    for term in ("occ_cd", "lm", "fore_cd", "plan_cls"):
        assert value[term] < first[term], term
    assert time.perf_counter() - start < 120


def test_checkpoint_with_local_llm_keeps_only_what_it_cannot_reload(tmp_path, tokenizer):
    """With llm_path, the frozen base LLM is not duplicated, but LoRA and the resized embeddings are saved."""
    from safetensors import safe_open

    from sparseoccvla_core.llm import build_causal_lm

    small = SparseOccVLAConfig.tiny()
    build_causal_lm(small, len(tokenizer) - 10, tokenizer).save_pretrained(tmp_path / "llm")  # 10 rows short
    cfg = SparseOccVLAConfig.tiny(llm_path=str(tmp_path / "llm"))
    torch.manual_seed(0)
    model = SparseOccVLA(cfg, tokenizer=tokenizer)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.save_pretrained(tmp_path / "ckpt")
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    llm_keys = {k for k in keys if k.startswith("llm.")}
    assert any("lora_B" in k for k in llm_keys) and any("embed_tokens" in k for k in llm_keys)
    assert not any("q_proj.base_layer" in k or "mlp.up_proj" in k for k in llm_keys)
    loaded = SparseOccVLA.from_pretrained(tmp_path / "ckpt")
    for (n, a), (_, b) in zip(model.llm.state_dict().items(), loaded.llm.state_dict().items()):
        assert torch.equal(a, b), n  # base weights from llm_path, new embedding rows and LoRA from the checkpoint


def test_checkpoint_without_plan_regression_loads_with_the_residual_head(tmp_path):
    """A full config written before ``plan_regression`` existed belongs to a model trained with the residual head."""
    import yaml

    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.model import SparseOccVLA

    model = SparseOccVLA(SparseOccVLAConfig.tiny(num_queries=8, points_per_layer=(2, 4)))
    model.save_pretrained(tmp_path / "ckpt")
    assert SparseOccVLA.from_pretrained(tmp_path / "ckpt").cfg.plan_regression == "direct"
    written = yaml.safe_load((tmp_path / "ckpt" / "config.yaml").read_text())
    del written["plan_regression"]
    (tmp_path / "ckpt" / "config.yaml").write_text(yaml.safe_dump(written))
    legacy = SparseOccVLA.from_pretrained(tmp_path / "ckpt")
    assert legacy.cfg.plan_regression == "residual" and legacy.planner.decoder.residual


@pytest.mark.parametrize("occ_gt", ["current", "concat"])
def test_encoder_occupancy_supervision_follows_occ_gt(monkeypatch, tokenizer, occ_gt):
    """Issue 13 A1: the encoder's eq.-10 loss uses the current frame's GT by default ("current"); appendix A's
    concatenated GT (current + future frames warped into the current frame) only with occ_gt "concat"."""
    import dataclasses

    import sparseoccvla_core.model as model_module

    cfg = SparseOccVLAConfig.tiny(occ_gt=occ_gt)
    assert SparseOccVLAConfig.tiny().occ_gt == "current" and SparseOccVLAConfig.paper().occ_gt == "current"
    base = make_batch(cfg, 2, seed=0, tokenizer=tokenizer)
    concat = torch.cat([base.occ_points, base.occ_points + torch.tensor([5.0, 0.0, 0.0])], dim=1)
    batch = dataclasses.replace(
        base,
        occ_concat_points=concat,
        occ_concat_labels=base.occ_labels.repeat(1, 2),
        occ_concat_mask=base.occ_mask.repeat(1, 2),
    )
    seen = []
    real = model_module.occupancy_losses

    def spy(layer_points, layer_logits, gt_points, *args, **kwargs):
        seen.append(gt_points)
        return real(layer_points, layer_logits, gt_points, *args, **kwargs)

    monkeypatch.setattr(model_module, "occupancy_losses", spy)
    torch.manual_seed(0)
    SparseOccVLA(cfg, tokenizer=tokenizer)(batch, stage=1)
    assert len(seen) == 1
    expected = batch.occ_points if occ_gt == "current" else batch.occ_concat_points
    assert torch.equal(seen[0], expected)


def test_half_precision_export_reloads_as_float32(model, batch, tmp_path):
    """``sparseoccvla export``: parameters stored as float16 (about half the file), reloaded into float32; buffers
    (the planner's anchors) bit-identical; predictions within float16 rounding of the source's."""
    from sparseoccvla_core.export import export_checkpoint

    src = tmp_path / "src"
    model.save_pretrained(src)
    info = export_checkpoint(src, tmp_path / "half")
    full = (src / "model.safetensors").stat().st_size
    assert info["bytes"] < 0.6 * full
    assert 0 < info["max_abs_error"] < 1e-2
    half = SparseOccVLA.from_pretrained(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in half.parameters())
    assert torch.equal(half.planner.anchors, model.planner.anchors)
    for (name, a), (_, b) in zip(model.named_parameters(), half.named_parameters()):
        torch.testing.assert_close(b, a.detach().half().float(), rtol=0, atol=0, msg=name)
    out_a = model.predict(batch, generator=torch.Generator().manual_seed(0))
    out_b = half.predict(batch, generator=torch.Generator().manual_seed(0))
    assert (out_a.plan - out_b.plan).abs().max() < 0.05


def test_ego_static_forecast_prior_in_the_model(tokenizer):
    """forecast_prior "ego_static": the untrained model's first forecast frame (0.5 s) is its current occupancy (points and
    scores) moved by the constant-velocity ego motion; stage 3's forecast loss trains the forecaster's residual heads
    and leaves the encoder's decoded points out of its graph."""
    from sparseoccvla_core.forecaster import constant_velocity_motion, into_next_frame

    cfg = SparseOccVLAConfig.tiny(forecast_prior="ego_static", forecast_points_per_query=8)  # = points_per_layer[-1]
    torch.manual_seed(0)
    m = SparseOccVLA(cfg, tokenizer=tokenizer)
    batch = make_batch(cfg, 2, seed=1, tokenizer=tokenizer)
    seen = {}
    hooks = [
        m.occupancy_encoder.register_forward_hook(lambda mod, a, o: seen.setdefault("enc", o)),
        m.forecaster.register_forward_hook(lambda mod, a, o: seen.setdefault("fc", o)),
    ]
    m.predict(batch, generator=torch.Generator().manual_seed(0), score_threshold=0.0)
    for h in hooks:
        h.remove()
    enc, fc = seen["enc"], seen["fc"]
    cos, sin, trans = constant_velocity_motion(batch.ego_state, cfg.forecast_dt)
    torch.testing.assert_close(fc.points[0], into_next_frame(enc.layer_points[-1], cos, sin, trans), atol=1e-4, rtol=0)
    torch.testing.assert_close(fc.logits[0], enc.layer_logits[-1])
    m.set_stage(3)
    losses = m(batch, 3)
    assert torch.isfinite(losses["fore_cd"]) and losses["fore_cd"] > 0
    (losses["fore_cd"] + losses["fore_focal"]).backward()
    assert m.forecaster.point_head[-1].weight.grad.abs().sum() > 0
    assert m.forecaster.class_head[-1].weight.grad.abs().sum() > 0
    last = m.occupancy_encoder.layers[-1]  # its decoded points and logits enter the forecaster detached
    assert all(p.grad is None for p in [*last.cls_head.parameters(), *last.reg_head.parameters()])
