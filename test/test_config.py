"""SparseOccVLAConfig: presets hold the paper's numbers, YAML round trips, validation speaks clearly."""

from pathlib import Path

import pytest
import yaml

from sparseoccvla_core.config import SparseOccVLAConfig

ROOT = Path(__file__).resolve().parents[1]


def test_paper_preset_numbers():
    cfg = SparseOccVLAConfig.paper()
    assert cfg.image_size == (256, 704) and cfg.num_views == 6 and cfg.num_frames == 8
    assert cfg.num_queries == 600 and cfg.num_encoder_layers == 6
    assert cfg.points_per_layer == (2, 4, 16, 32, 56, 112)
    assert cfg.query_dim == 1024 and cfg.num_heads == 32 and cfg.num_sampling_points == 4 and cfg.num_levels == 4
    assert cfg.num_global_queries == 12 and cfg.lora_r == 128 and cfg.lora_alpha == 16
    assert cfg.forecast_frames == 6 and cfg.num_anchors == 18 and cfg.denoise_steps == 2
    assert cfg.lambda_focal == 0.2 and cfg.clip_image_size == 336
    assert (cfg.llm_hidden_size, cfg.llm_num_layers) == (4096, 32)
    assert cfg.grid_shape == (200, 200, 16) and cfg.num_semantic_classes == 17 and cfg.anchors_per_command == 6


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_yaml_round_trip(tmp_path, preset):
    cfg = getattr(SparseOccVLAConfig, preset)()
    cfg.to_yaml(tmp_path / "c.yaml")
    back = SparseOccVLAConfig.from_yaml(tmp_path / "c.yaml")
    assert back == cfg and back.diff(cfg) == {}
    assert isinstance(back.points_per_layer, tuple)


def test_preset_files_with_overrides(tmp_path):
    assert SparseOccVLAConfig.from_yaml(ROOT / "config" / "model_tiny.yaml") == SparseOccVLAConfig.tiny()
    assert SparseOccVLAConfig.from_yaml(ROOT / "config" / "model_paper.yaml") == SparseOccVLAConfig.paper()
    (tmp_path / "o.yaml").write_text(yaml.safe_dump({"preset": "tiny", "num_queries": 20}))
    cfg = SparseOccVLAConfig.from_yaml(tmp_path / "o.yaml")
    assert cfg.num_queries == 20 and cfg.diff(SparseOccVLAConfig.tiny()) == {"num_queries": (20, 48)}


def test_validation_messages(tmp_path):
    with pytest.raises(ValueError, match="points_per_layer has 3 entries but num_encoder_layers is 2"):
        SparseOccVLAConfig.tiny(points_per_layer=(1, 2, 3))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        SparseOccVLAConfig.tiny(query_dim=66)
    with pytest.raises(ValueError, match="multiple of num_commands"):
        SparseOccVLAConfig.tiny(num_anchors=10)
    with pytest.raises(ValueError, match="multiple of 32"):
        SparseOccVLAConfig.tiny(image_size=(60, 160))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"preset": "tiny", "num_querys": 3}))
    with pytest.raises(ValueError, match="unknown config keys \\['num_querys'\\]"):
        SparseOccVLAConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="unknown config keys"):
        SparseOccVLAConfig.from_dict({"not_a_field": 1})
