"""Model catalog, parameter / weight / KV byte counts, and Hugging Face config.json parsing."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from simulator.models import (BYTES_PER_ELEMENT, KV_DTYPES, MODELS, WEIGHT_BYTES_PER_PARAM, WEIGHT_DTYPES,
                              ModelConfigError, ModelSpec, from_hf_config, get_model, resolve_model)

HF_DIR = Path(__file__).parent / "data" / "hf_configs"
HF_FILES = sorted(HF_DIR.glob("*.json"))

# Published sizes (model cards / papers), in parameters: (total, active).
PUBLISHED = {
    "llama-2-7b": (6.74e9, None), "llama-2-13b": (13.0e9, None), "llama-2-70b": (69.0e9, None),
    "llama-3-8b": (8.03e9, None), "llama-3-70b": (70.6e9, None), "llama-3.1-8b": (8.03e9, None),
    "llama-3.1-70b": (70.6e9, None), "llama-3.1-405b": (405.9e9, None), "llama-3.2-1b": (1.24e9, None),
    "llama-3.2-3b": (3.21e9, None), "llama-3.3-70b": (70.6e9, None), "mistral-7b": (7.24e9, None),
    "mixtral-8x7b": (46.7e9, 12.9e9), "qwen2.5-0.5b": (0.49e9, None), "qwen2.5-1.5b": (1.54e9, None),
    "qwen2.5-3b": (3.09e9, None), "qwen2.5-7b": (7.61e9, None), "qwen2.5-14b": (14.7e9, None),
    "qwen2.5-32b": (32.5e9, None), "qwen2.5-72b": (72.7e9, None), "qwen3-0.6b": (0.6e9, None),
    "qwen3-4b": (4.0e9, None), "qwen3-8b": (8.2e9, None), "qwen3-14b": (14.8e9, None),
    "qwen3-32b": (32.8e9, None), "qwen3-30b-a3b": (30.5e9, 3.3e9), "gemma-2-2b": (2.61e9, None),
    "gemma-2-9b": (9.24e9, None), "gemma-2-27b": (27.2e9, None), "phi-3-mini": (3.82e9, None),
    "phi-3-medium": (14.0e9, None), "deepseek-v3": (671e9, 37e9),
}


def test_every_preset_has_a_published_size_and_a_source():
    assert set(MODELS) == set(PUBLISHED)
    for name, model in MODELS.items():
        assert model.name == name
        assert "/" in model.source and "config.json" in model.source


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_counts_match_published_sizes_within_2_percent(name):
    total, active = PUBLISHED[name]
    model = MODELS[name]
    assert model.num_params() == pytest.approx(total, rel=0.02)
    if active is None:
        assert model.num_params(active=True) == model.num_params()
    else:
        assert model.num_params(active=True) == pytest.approx(active, rel=0.02)


@pytest.mark.parametrize("name, exact", [
    # Hand-checked against the safetensors parameter counts of the checkpoints.
    ("llama-2-7b", 6_738_415_616), ("llama-3.1-8b", 8_030_261_248),
    ("qwen2.5-0.5b", 494_032_768),     # QKV bias included; tied embeddings counted once
    ("qwen3-0.6b", 596_049_920),       # per-head q/k RMSNorm included
    ("gemma-2-2b", 2_614_341_888),     # four norms per layer, head_dim 256
    ("phi-3-mini", 3_821_079_552),     # fused qkv / gate_up count as separate projections
    ("mixtral-8x7b", 46_702_792_704),
])
def test_exact_param_counts(name, exact):
    assert MODELS[name].num_params() == exact


def test_mixtral_active_params_exact():
    # per layer: attention 41,943,040 + 2 experts * 176,160,768 + router 32,768 + norms 8,192; 32 layers;
    # plus embeddings 262,144,000 and the final norm 4,096.
    assert MODELS["mixtral-8x7b"].num_params(active=True) == 32 * 394_305_536 + 262_144_000 + 4096


def test_deepseek_v3_mla_attention_params_per_layer():
    # q_a 7168*1536 + q_b 1536*128*192 + kv_a 7168*(512+64) + kv_b 512*128*(128+128) + o 128*128*7168,
    # plus the q and kv latent RMSNorms (1536 + 512).
    m = MODELS["deepseek-v3"]
    projections = 7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168
    assert m.attention_matmul_params_per_layer() == projections == 187_105_280
    assert m.attention_params_per_layer() == projections + 1536 + 512


def test_deepseek_v3_moe_layout():
    m = MODELS["deepseek-v3"]
    assert (m.num_moe_layers, m.first_dense_layers) == (58, 3)
    # one MoE layer: 256 routed + 1 shared experts of 3*7168*2048, and the 256-way router
    assert m.moe_mlp_params() == 257 * 3 * 7168 * 2048 + 7168 * 256
    assert m.moe_mlp_params(active=True) == 9 * 3 * 7168 * 2048 + 7168 * 256
    assert m.mlp_params() == 3 * 3 * 7168 * 18432 + 58 * m.moe_mlp_params()


@pytest.mark.parametrize("name, kv_dtype, expected", [
    ("llama-2-7b", "fp16", 512 * 1024),              # 2 * 32 layers * 32 heads * 128 * 2 bytes
    ("llama-3-8b", "bf16", 128 * 1024),              # 2 * 32 * 8 * 128 * 2
    ("llama-3-8b", "fp8", 64 * 1024),
    ("llama-3.1-70b", "bf16", 2 * 80 * 8 * 128 * 2),
    ("qwen2.5-0.5b", "bf16", 2 * 24 * 2 * 64 * 2),
    ("gemma-2-2b", "bf16", 2 * 26 * 4 * 256 * 2),    # head_dim 256, not 2304 / 8
    ("qwen3-32b", "bf16", 2 * 64 * 8 * 128 * 2),
    ("deepseek-v3", "bf16", (512 + 64) * 61 * 2),    # MLA: latent + RoPE key, no per-head K/V
    ("deepseek-v3", "fp8", (512 + 64) * 61),
])
def test_kv_bytes_per_token(name, kv_dtype, expected):
    assert MODELS[name].kv_bytes_per_token(kv_dtype) == expected


def test_precision_tables():
    assert WEIGHT_DTYPES == ("bf16", "fp16", "fp8", "int8", "int4")
    assert KV_DTYPES == ("bf16", "fp16", "fp8")
    assert {d: BYTES_PER_ELEMENT[d] for d in WEIGHT_DTYPES} == {
        "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
    assert WEIGHT_BYTES_PER_PARAM["int4"] == 0.5 + 2.5 / 128   # packed int4 + fp16 scale and int4 zero / 128


@pytest.mark.parametrize("name", sorted(MODELS))
def test_weight_bytes_ordering(name):
    m = MODELS[name]
    assert m.weight_bytes("bf16") == m.weight_bytes("fp16") == 2 * m.num_params()
    assert m.weight_bytes("fp8") == m.weight_bytes("int8")
    assert m.weight_bytes("bf16") > m.weight_bytes("fp8") > m.weight_bytes("int4") > 0.5 * m.num_params()


def test_weight_bytes_keep_embeddings_and_norms_at_16_bits():
    m = MODELS["llama-3.1-8b"]
    kept = 2 * 128256 * 4096 + 4096 + 32 * 2 * 4096     # embed + LM head, final norm, two norms per layer
    quantized = 8_030_261_248 - kept
    assert m.weight_bytes("fp8") == quantized * 1 + kept * 2 == 9_081_200_640
    assert m.weight_bytes("int4") == pytest.approx(quantized * (0.5 + 2.5 / 128) + kept * 2)


def test_unknown_dtypes_are_one_line_errors_listing_choices():
    m = MODELS["llama-3.1-8b"]
    with pytest.raises(ValueError, match=r"unknown weight dtype 'fp4'; choose one of: bf16, fp16, fp8, int8, int4"):
        m.weight_bytes("fp4")
    with pytest.raises(ValueError, match=r"unknown KV cache dtype 'int4'; choose one of: bf16, fp16, fp8"):
        m.kv_bytes_per_token("int4")


def test_modelspec_validates_its_shape():
    with pytest.raises(ValueError, match="num_heads .32. must be a multiple of num_kv_heads .5."):
        ModelSpec(name="x", hidden_size=64, num_layers=1, num_heads=32, num_kv_heads=5, head_dim=2,
                  intermediate_size=8, vocab_size=10)
    with pytest.raises(ValueError, match="num_experts_per_tok must be in 1..8, got 9"):
        dataclasses.replace(MODELS["mixtral-8x7b"], num_experts_per_tok=9)


# --- lookup ---
@pytest.mark.parametrize("query, name", [
    ("llama-3.1-8b", "llama-3.1-8b"), ("  Llama-3.1-8B ", "llama-3.1-8b"),
    ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"), ("meta-llama/Meta-Llama-3-8B", "llama-3-8b"),
    ("meta-llama/Llama-2-7b-hf", "llama-2-7b"), ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"),
    ("deepseek-ai/DeepSeek-V3", "deepseek-v3"), ("google/gemma-2-9b-it", "gemma-2-9b"),
])
def test_get_model_accepts_hugging_face_ids(query, name):
    assert get_model(query) is MODELS[name]


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(ValueError) as info:
        get_model("llama3.1-8b")
    message = str(info.value)
    assert "unknown model 'llama3.1-8b' (did you mean 'llama-3.1-8b'?)" in message
    assert "qwen3-30b-a3b" in message and "\n" not in message


# --- Hugging Face config.json ---
def test_shipped_configs_cover_each_family():
    assert {p.stem for p in HF_FILES} >= {"llama-2-7b", "llama-3.1-8b", "qwen2.5-0.5b", "mixtral-8x7b",
                                          "deepseek-v3", "gemma-2-2b", "qwen3-30b-a3b"}


@pytest.mark.parametrize("path", HF_FILES, ids=lambda p: p.stem)
def test_real_config_json_parses_to_the_preset(path):
    parsed = from_hf_config(path)
    preset = MODELS[path.stem]
    assert parsed.name == preset.name
    assert parsed == dataclasses.replace(preset, source=parsed.source)
    assert path.name in parsed.source


def _write(tmp_path: Path, config: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


MINIMAL = {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 1024,
           "vocab_size": 1000}


def test_defaults_mha_head_dim_and_name_from_folder(tmp_path):
    folder = tmp_path / "My-Model"
    folder.mkdir()
    m = from_hf_config(_write(folder, MINIMAL))
    assert (m.name, m.num_kv_heads, m.head_dim, m.tied_embeddings, m.max_model_len) == ("my-model", 8, 64, False,
                                                                                       8192)
    assert m.kv_bytes_per_token("bf16") == 2 * 4 * 8 * 64 * 2
    assert from_hf_config(folder / "config.json", name="custom").name == "custom"


def test_explicit_head_dim_and_null_kv_heads(tmp_path):
    m = from_hf_config(_write(tmp_path, {**MINIMAL, "head_dim": 128, "num_key_value_heads": None}))
    assert (m.head_dim, m.num_kv_heads) == (128, 8)


def test_nested_text_config(tmp_path):
    config = {"model_type": "llava", "tie_word_embeddings": True,
              "text_config": {**MINIMAL, "model_type": "llama", "num_key_value_heads": 2}}
    m = from_hf_config(_write(tmp_path, config, "vlm.json"))
    assert (m.name, m.num_kv_heads, m.hidden_size, m.tied_embeddings) == ("vlm", 2, 512, True)
    assert "(llama)" in m.source


def test_moe_keys_of_each_family(tmp_path):
    # Qwen-MoE style: num_experts, and one wide shared expert counted in units of the expert width.
    qwen = {**MINIMAL, "num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 128,
            "shared_expert_intermediate_size": 512}
    m = from_hf_config(_write(tmp_path, qwen, "qwen-moe.json"))
    assert (m.num_experts, m.num_experts_per_tok, m.moe_intermediate_size, m.num_shared_experts) == (60, 4, 128, 4)
    assert m.num_params(active=True) < m.num_params()
    # Mixtral style: num_local_experts, expert width from intermediate_size.
    m = from_hf_config(_write(tmp_path, {**MINIMAL, "num_local_experts": 4, "num_experts_per_tok": 1}, "mx.json"))
    assert (m.num_experts, m.moe_intermediate_size, m.first_dense_layers) == (4, 1024, 0)


def test_a_copied_config_json_keeps_its_folder_name(tmp_path):
    folder = tmp_path / "Qwen2.5-0.5B"
    folder.mkdir()
    shutil.copy(HF_DIR / "qwen2.5-0.5b.json", folder / "config.json")
    assert resolve_model(None, folder / "config.json").num_params() == 494_032_768


@pytest.mark.parametrize("config, fragment", [
    ({k: v for k, v in MINIMAL.items() if k != "hidden_size"}, "missing key 'hidden_size'"),
    ({k: v for k, v in MINIMAL.items() if k != "vocab_size"}, "missing key 'vocab_size'"),
    ({k: v for k, v in MINIMAL.items() if k != "intermediate_size"}, "missing key 'intermediate_size'"),
    ({**MINIMAL, "num_hidden_layers": -2}, "'num_hidden_layers' must be a non-negative integer, got -2"),
    ({**MINIMAL, "hidden_size": "512"}, "'hidden_size' must be a non-negative integer, got '512'"),
    ({**MINIMAL, "num_hidden_layers": 0}, "num_layers must be positive, got 0"),
    ({**MINIMAL, "num_attention_heads": 7}, "'num_attention_heads' (7) must be positive and divide hidden_size"),
    ({**MINIMAL, "num_local_experts": 8}, "missing key 'num_experts_per_tok'"),
    ({**MINIMAL, "kv_lora_rank": 512}, "missing key 'qk_rope_head_dim'"),
])
def test_bad_configs_give_one_line_errors_naming_file_and_key(tmp_path, config, fragment):
    path = _write(tmp_path, config, "bad.json")
    with pytest.raises(ModelConfigError) as info:
        from_hf_config(path)
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message


def test_unreadable_configs(tmp_path):
    with pytest.raises(ModelConfigError, match="nope.json: model config not found"):
        from_hf_config(tmp_path / "nope.json")
    bad = tmp_path / "broken.json"
    bad.write_text('{"hidden_size": 4096,', encoding="utf-8")
    with pytest.raises(ModelConfigError, match=r"broken.json: not valid JSON \(.*line 1"):
        from_hf_config(bad)
    with pytest.raises(ModelConfigError, match="list.json: expected a JSON object, got list"):
        from_hf_config(_write(tmp_path, [1, 2], "list.json"))


def test_resolve_model(tmp_path):
    assert resolve_model("mixtral-8x7b", None) is MODELS["mixtral-8x7b"]
    assert resolve_model(None, HF_DIR / "mixtral-8x7b.json").num_params() == 46_702_792_704
    with pytest.raises(ValueError, match="not both"):
        resolve_model("mixtral-8x7b", HF_DIR / "mixtral-8x7b.json")
    with pytest.raises(ValueError, match="no model given: name a preset .one of: deepseek-v3, "):
        resolve_model(None, None)
