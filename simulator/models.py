"""Model architectures: presets, Hugging Face config.json reading, weight and KV-cache bytes.

Counts are parameters and tokens; bytes depend on the precision (`BYTES_PER_ELEMENT`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

# Bytes per stored element for each supported precision (int4 is weight-only, packed two per byte).
BYTES_PER_ELEMENT: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape. MoE and MLA fields are zero for dense, standard-attention models."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int = 8192
    tied_embeddings: bool = False
    # Mixture of experts: experts per MoE layer, experts each token is routed to, each expert's MLP width.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    first_dense_layers: int = 0       # leading layers with a dense MLP (DeepSeek-V3: 3)
    # Multi-head latent attention (DeepSeek): the KV cache holds a compressed latent plus a RoPE key per token.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size"):
            if getattr(self, field) <= 0:
                raise ValueError(f"model '{self.name}': {field} must be positive, got {getattr(self, field)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model '{self.name}': num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    def kv_elements_per_token(self) -> int:
        """K and V elements stored per token over all layers."""
        if self.is_mla:
            # MLA caches one compressed latent plus one shared RoPE key per token per layer.
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim)
        # KV elements/token = 2 (K,V) * layers * kv_heads * head_dim
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> float:
        """KV bytes/token = 2 (K,V) * layers * kv_heads * head_dim * bytes per element."""
        return self.kv_elements_per_token() * BYTES_PER_ELEMENT[kv_dtype]

    def attention_params_per_layer(self) -> int:
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        return self.hidden_size * (q + 2 * kv) + q * self.hidden_size

    def mlp_params_per_layer(self, active: bool = False) -> float:
        """Gated MLP (gate, up, down). For MoE, all experts, or only those one token uses when `active`."""
        dense = 3 * self.hidden_size * self.intermediate_size
        if not self.is_moe:
            return dense
        experts = (self.num_experts_per_tok if active else self.num_experts) + self.num_shared_experts
        moe = 3 * self.hidden_size * self.moe_intermediate_size * experts + self.hidden_size * self.num_experts
        moe_layers = self.num_layers - self.first_dense_layers
        return (dense * self.first_dense_layers + moe * moe_layers) / self.num_layers

    def num_params(self, active: bool = False) -> float:
        """Parameter count (embedding and LM head included once each unless tied)."""
        per_layer = self.attention_params_per_layer() + self.mlp_params_per_layer(active) + 2 * self.hidden_size
        embed = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return self.num_layers * per_layer + embed + self.hidden_size

    def weight_bytes(self, dtype: str = "bf16") -> float:
        """Bytes to hold every weight at `dtype` (embeddings and norms kept at 16 bits when quantized)."""
        bpe = BYTES_PER_ELEMENT[dtype]
        embed = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return (self.num_params() - embed) * bpe + embed * min(2.0, max(bpe, 2.0))


# Presets. Numbers from each model's Hugging Face config.json.
MODELS: dict[str, ModelSpec] = {
    # meta-llama/Llama-3.1-8B config.json: hidden 4096, 32 layers, 32 heads, 8 KV heads, inter 14336, vocab 128256.
    "llama-3.1-8b": ModelSpec(
        name="llama-3.1-8b", hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
        intermediate_size=14336, vocab_size=128256, max_model_len=131072, source="meta-llama/Llama-3.1-8B config.json"),
}


def get_model(name: str) -> ModelSpec:
    """Look up a preset; unknown names raise ValueError listing the choices and the closest match."""
    key = name.strip().lower()
    if key in MODELS:
        return MODELS[key]
    close = difflib.get_close_matches(key, MODELS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"unknown model '{name}'{hint}; choose one of: {', '.join(sorted(MODELS))}")
