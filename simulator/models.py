"""Model architectures: presets, Hugging Face config.json reading, weight and KV-cache bytes.

Counts are parameters and tokens; bytes depend on the precision (`BYTES_PER_ELEMENT`). Parameter counts
cover the main model as its checkpoint ships it (DeepSeek-V3's multi-token-prediction module excluded, as in
its published 671B).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

# Bytes per stored element for each precision (int4 is weight-only, packed two per byte).
BYTES_PER_ELEMENT: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4")
KV_DTYPES = ("bf16", "fp16", "fp8")

# int4 weight-only (AWQ / GPTQ layout): packed 4-bit values plus, per group of 128 input elements, an fp16
# scale and a packed 4-bit zero point: 0.5 + (2 + 0.5) / 128 bytes per weight.
INT4_GROUP_SIZE = 128
WEIGHT_BYTES_PER_PARAM: dict[str, float] = {
    "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 2.5 / INT4_GROUP_SIZE}


def _check_dtype(dtype: str, choices: tuple[str, ...], what: str) -> None:
    if dtype not in choices:
        raise ValueError(f"unknown {what} dtype '{dtype}'; choose one of: {', '.join(choices)}")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape. MoE and MLA fields are zero for dense, standard-attention models."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int                     # query/key head width (MLA: qk_nope_head_dim + qk_rope_head_dim)
    intermediate_size: int            # dense MLP width (MoE models: the width of their dense layers)
    vocab_size: int
    max_model_len: int = 8192         # max_position_embeddings
    tied_embeddings: bool = False     # LM head shares the input embedding matrix
    attention_bias: bool = False      # bias on the Q, K, V projections (Qwen2)
    qk_norm: bool = False             # RMSNorm over each query and key head (Qwen3)
    norms_per_layer: int = 2          # RMSNorms per decoder layer (Gemma-2: 4, pre and post each block)
    # Mixture of experts: experts per MoE layer, experts each token is routed to, each expert's MLP width.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0       # experts every token goes through, each moe_intermediate_size wide
    first_dense_layers: int = 0       # leading layers with a dense MLP (DeepSeek-V3: 3)
    # Multi-head latent attention (DeepSeek): the KV cache holds a compressed latent plus a RoPE key per token.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0              # 0: queries are projected directly from the hidden state
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                      "vocab_size", "max_model_len"):
            if getattr(self, field) <= 0:
                raise ValueError(f"model '{self.name}': {field} must be positive, got {getattr(self, field)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model '{self.name}': num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        if self.is_moe and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(f"model '{self.name}': num_experts_per_tok must be in 1..{self.num_experts}, "
                             f"got {self.num_experts_per_tok}")
        if self.is_moe and self.moe_intermediate_size <= 0:
            raise ValueError(f"model '{self.name}': an MoE model needs a positive moe_intermediate_size")
        if self.is_mla and not (self.qk_rope_head_dim and self.qk_nope_head_dim and self.v_head_dim):
            raise ValueError(f"model '{self.name}': MLA needs qk_rope_head_dim, qk_nope_head_dim and v_head_dim")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_dense_layers if self.is_moe else 0

    # --- KV cache ---
    def kv_elements_per_token(self) -> int:
        """K and V elements stored per token over all layers."""
        if self.is_mla:
            # MLA caches one compressed latent plus one shared RoPE key per token per layer.
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim)
        # KV elements/token = 2 (K,V) * layers * kv_heads * head_dim
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> float:
        """KV bytes/token = KV elements/token * bytes per element (bf16/fp16: 2, fp8: 1)."""
        _check_dtype(kv_dtype, KV_DTYPES, "KV cache")
        return self.kv_elements_per_token() * BYTES_PER_ELEMENT[kv_dtype]

    # --- parameters ---
    def attention_matmul_params_per_layer(self) -> int:
        """Weights of one layer's attention projections (the GEMMs)."""
        h = self.hidden_size
        if self.is_mla:
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = (h * self.q_lora_rank + self.q_lora_rank * self.num_heads * qk if self.q_lora_rank
                 else h * self.num_heads * qk)
            kv_down = h * (self.kv_lora_rank + self.qk_rope_head_dim)   # latent and shared RoPE key
            kv_up = self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv_down + kv_up + self.num_heads * self.v_head_dim * h
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return h * (q + 2 * kv) + q * h

    def _attention_small_params_per_layer(self) -> int:
        """Biases and norms inside attention: QKV bias, QK-norm weights, MLA's latent RMSNorms."""
        if self.is_mla:
            return self.q_lora_rank + self.kv_lora_rank
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return (q + 2 * kv) * self.attention_bias + 2 * self.head_dim * self.qk_norm

    def attention_params_per_layer(self) -> int:
        return self.attention_matmul_params_per_layer() + self._attention_small_params_per_layer()

    def dense_mlp_params(self) -> int:
        """Gated MLP (gate, up, down) of a dense layer."""
        return 3 * self.hidden_size * self.intermediate_size

    def expert_params(self) -> int:
        """One expert's gated MLP."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    def moe_mlp_params(self, active: bool = False) -> int:
        """One MoE layer: all experts (or those one token uses when `active`), shared experts and the router."""
        experts = (self.num_experts_per_tok if active else self.num_experts) + self.num_shared_experts
        return experts * self.expert_params() + self.hidden_size * self.num_experts

    def mlp_params(self, active: bool = False) -> int:
        """MLP weights of all layers: dense layers plus MoE layers."""
        return ((self.num_layers - self.num_moe_layers) * self.dense_mlp_params()
                + self.num_moe_layers * self.moe_mlp_params(active))

    def embedding_params(self) -> int:
        """Input embedding plus LM head (one matrix when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    def num_params(self, active: bool = False) -> int:
        """Parameter count; `active`: what one token touches in an MoE model (routed top-k + shared experts).

        Embeddings are counted in both, as model cards do (DeepSeek-V3 37B active, Mixtral 12.9B).
        """
        layers = self.num_layers * (self.attention_params_per_layer() + self.norms_per_layer * self.hidden_size)
        return layers + self.mlp_params(active) + self.embedding_params() + self.hidden_size   # + final norm

    def _unquantized_params(self) -> int:
        """Weights quantization leaves at 16 bits: embeddings, LM head, norms, biases and MoE routers."""
        per_layer = self.norms_per_layer * self.hidden_size + self._attention_small_params_per_layer()
        routers = self.num_moe_layers * self.hidden_size * self.num_experts
        return self.embedding_params() + self.hidden_size + self.num_layers * per_layer + routers

    def weight_bytes(self, dtype: str = "bf16") -> float:
        """Bytes to hold every weight with the linear layers at `dtype`.

        Embeddings, LM head, norms, biases and routers stay 16-bit (as vLLM's fp8, int8 and AWQ/GPTQ
        checkpoints keep them); int4 includes its per-group scales and zeros (`WEIGHT_BYTES_PER_PARAM`).
        """
        _check_dtype(dtype, WEIGHT_DTYPES, "weight")
        small = self._unquantized_params()
        return (self.num_params() - small) * WEIGHT_BYTES_PER_PARAM[dtype] + small * 2.0


# Presets, each from its Hugging Face config.json (repository named in `source`).
def _llama(name: str, repo: str, hidden: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int,
           max_len: int, tied: bool = False, head_dim: int = 0, **extra: object) -> ModelSpec:
    return ModelSpec(name=name, hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                     head_dim=head_dim or hidden // heads, intermediate_size=inter, vocab_size=vocab,
                     max_model_len=max_len, tied_embeddings=tied, source=f"{repo} config.json", **extra)


_QWEN2 = {"attention_bias": True}
_QWEN3 = {"qk_norm": True}
_GEMMA2 = {"norms_per_layer": 4}

MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    # name, HF repo, hidden, layers, heads, kv heads, intermediate, vocab, max_position_embeddings
    _llama("llama-2-7b", "meta-llama/Llama-2-7b-hf", 4096, 32, 32, 32, 11008, 32000, 4096),
    _llama("llama-2-13b", "meta-llama/Llama-2-13b-hf", 5120, 40, 40, 40, 13824, 32000, 4096),
    _llama("llama-2-70b", "meta-llama/Llama-2-70b-hf", 8192, 80, 64, 8, 28672, 32000, 4096),
    _llama("llama-3-8b", "meta-llama/Meta-Llama-3-8B", 4096, 32, 32, 8, 14336, 128256, 8192),
    _llama("llama-3-70b", "meta-llama/Meta-Llama-3-70B", 8192, 80, 64, 8, 28672, 128256, 8192),
    _llama("llama-3.1-8b", "meta-llama/Llama-3.1-8B", 4096, 32, 32, 8, 14336, 128256, 131072),
    _llama("llama-3.1-70b", "meta-llama/Llama-3.1-70B", 8192, 80, 64, 8, 28672, 128256, 131072),
    _llama("llama-3.1-405b", "meta-llama/Llama-3.1-405B", 16384, 126, 128, 8, 53248, 128256, 131072),
    _llama("llama-3.2-1b", "meta-llama/Llama-3.2-1B", 2048, 16, 32, 8, 8192, 128256, 131072, tied=True,
           head_dim=64),
    _llama("llama-3.2-3b", "meta-llama/Llama-3.2-3B", 3072, 28, 24, 8, 8192, 128256, 131072, tied=True,
           head_dim=128),
    _llama("llama-3.3-70b", "meta-llama/Llama-3.3-70B-Instruct", 8192, 80, 64, 8, 28672, 128256, 131072),
    _llama("mistral-7b", "mistralai/Mistral-7B-v0.1", 4096, 32, 32, 8, 14336, 32000, 32768),
    _llama("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", 4096, 32, 32, 8, 14336, 32000, 32768,
           num_experts=8, num_experts_per_tok=2, moe_intermediate_size=14336),
    _llama("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936, 32768, tied=True, **_QWEN2),
    _llama("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B", 1536, 28, 12, 2, 8960, 151936, 32768, tied=True, **_QWEN2),
    _llama("qwen2.5-3b", "Qwen/Qwen2.5-3B", 2048, 36, 16, 2, 11008, 151936, 32768, tied=True, **_QWEN2),
    _llama("qwen2.5-7b", "Qwen/Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, 131072, **_QWEN2),
    _llama("qwen2.5-14b", "Qwen/Qwen2.5-14B", 5120, 48, 40, 8, 13824, 152064, 131072, **_QWEN2),
    _llama("qwen2.5-32b", "Qwen/Qwen2.5-32B", 5120, 64, 40, 8, 27648, 152064, 131072, **_QWEN2),
    _llama("qwen2.5-72b", "Qwen/Qwen2.5-72B", 8192, 80, 64, 8, 29568, 152064, 131072, **_QWEN2),
    # Qwen3: head_dim 128 whatever the width, so heads * head_dim may differ from hidden_size.
    _llama("qwen3-0.6b", "Qwen/Qwen3-0.6B", 1024, 28, 16, 8, 3072, 151936, 40960, tied=True, head_dim=128,
           **_QWEN3),
    _llama("qwen3-4b", "Qwen/Qwen3-4B", 2560, 36, 32, 8, 9728, 151936, 40960, tied=True, head_dim=128, **_QWEN3),
    _llama("qwen3-8b", "Qwen/Qwen3-8B", 4096, 36, 32, 8, 12288, 151936, 40960, head_dim=128, **_QWEN3),
    _llama("qwen3-14b", "Qwen/Qwen3-14B", 5120, 40, 40, 8, 17408, 151936, 40960, head_dim=128, **_QWEN3),
    _llama("qwen3-32b", "Qwen/Qwen3-32B", 5120, 64, 64, 8, 25600, 151936, 40960, head_dim=128, **_QWEN3),
    _llama("qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B", 2048, 48, 32, 4, 6144, 151936, 40960, head_dim=128,
           num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, **_QWEN3),
    # Gemma-2: tied embeddings (Gemma2Config default), head_dim 256 != hidden/heads on 2b and 9b.
    _llama("gemma-2-2b", "google/gemma-2-2b", 2304, 26, 8, 4, 9216, 256000, 8192, tied=True, head_dim=256,
           **_GEMMA2),
    _llama("gemma-2-9b", "google/gemma-2-9b", 3584, 42, 16, 8, 14336, 256000, 8192, tied=True, head_dim=256,
           **_GEMMA2),
    _llama("gemma-2-27b", "google/gemma-2-27b", 4608, 46, 32, 16, 36864, 256000, 8192, tied=True, head_dim=128,
           **_GEMMA2),
    # Phi-3 fuses qkv_proj and gate_up_proj; the weights count the same as separate projections.
    _llama("phi-3-mini", "microsoft/Phi-3-mini-4k-instruct", 3072, 32, 32, 32, 8192, 32064, 4096),
    _llama("phi-3-medium", "microsoft/Phi-3-medium-4k-instruct", 5120, 40, 40, 10, 17920, 32064, 4096),
    # DeepSeek-V3: MLA (q_lora 1536, kv_lora 512, rope 64, nope 128, v 128), 3 dense layers then 58 MoE layers
    # of 256 routed experts (top-8) plus 1 shared expert, each 2048 wide.
    _llama("deepseek-v3", "deepseek-ai/DeepSeek-V3", 7168, 61, 128, 128, 18432, 129280, 163840, head_dim=192,
           num_experts=256, num_experts_per_tok=8, moe_intermediate_size=2048, num_shared_experts=1,
           first_dense_layers=3, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, qk_nope_head_dim=128,
           v_head_dim=128),
)}


def _normalize_model_name(name: str) -> str:
    """'meta-llama/Llama-3.1-8B-Instruct' -> 'llama-3.1-8b': drop the org, case, and chat/format suffixes."""
    key = name.strip().lower().rsplit("/", 1)[-1].replace("_", "-")
    key = key.removeprefix("meta-")
    if key not in MODELS:                  # a release tag: Qwen3-30B-A3B-Instruct-2507
        key = re.sub(r"-\d{4}$", "", key)
    for suffix in ("-instruct", "-chat", "-hf", "-it", "-base"):
        if key not in MODELS:
            key = key.removesuffix(suffix)
    return key


def get_model(name: str) -> ModelSpec:
    """Look up a preset (also by Hugging Face id); unknown names raise ValueError listing the choices."""
    key = _normalize_model_name(name)
    if key in MODELS:
        return MODELS[key]
    close = difflib.get_close_matches(key, MODELS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"unknown model '{name}'{hint}; choose one of: {', '.join(sorted(MODELS))}, "
                     "or give a Hugging Face config.json")


class ModelConfigError(ValueError):
    """A config.json that cannot be read or lacks what a ModelSpec needs; the message is one line."""


# model_type values whose config leaves a property implicit (the transformers class hard-codes it).
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text"}
_QKV_BIAS_TYPES = {"qwen2", "qwen2_moe"}
_QK_NORM_TYPES = {"qwen3", "qwen3_moe"}
_FOUR_NORM_TYPES = {"gemma2", "gemma3", "gemma3_text"}


def _read_config(path: Path) -> dict:
    from workloads.files import read_json
    data = read_json(path, "model config", error=ModelConfigError)
    text = data.get("text_config")
    # Multimodal configs nest the language model; its keys win, the outer ones fill gaps.
    return {**data, **text} if isinstance(text, dict) else data


def _int_reader(cfg: dict, path: Path):
    """get(key, default): a non-negative integer from the config; absent or null gives the default."""
    def get(key: str, default: int | None = None) -> int:
        value = cfg.get(key)
        if value is None:
            if default is None:
                raise ModelConfigError(f"{path}: missing key '{key}'")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ModelConfigError(f"{path}: '{key}' must be a non-negative integer, got {repr(value)[:60]}")
        if value > MAX_CONFIG_INT:
            raise ModelConfigError(f"{path}: '{key}' = {value:.3g} is beyond any model (at most {MAX_CONFIG_INT:.0e})")
        return value
    return get


MAX_CONFIG_INT = 10**9     # widths, layers, heads, vocabularies and contexts of any model stay far below


def _moe_fields(get, inter: int) -> dict:
    key = next((k for k in ("num_local_experts", "num_experts", "n_routed_experts") if get(k, 0)), None)
    if key is None:
        return {}
    width = get("moe_intermediate_size", inter)   # Mixtral-style configs give the expert width as intermediate_size
    # Qwen-MoE gives its shared expert as one wide MLP; count it in experts of `width`.
    shared = get("n_shared_experts", 0) or get("shared_expert_intermediate_size", 0) // width
    return {"num_experts": get(key), "num_experts_per_tok": get("num_experts_per_tok"),
            "moe_intermediate_size": width, "num_shared_experts": shared,
            "first_dense_layers": get("first_k_dense_replace", 0)}


def _mla_fields(get) -> dict:
    if not get("kv_lora_rank", 0):
        return {}
    return {"kv_lora_rank": get("kv_lora_rank"), "q_lora_rank": get("q_lora_rank", 0),
            "qk_rope_head_dim": get("qk_rope_head_dim"), "qk_nope_head_dim": get("qk_nope_head_dim"),
            "v_head_dim": get("v_head_dim")}


def _default_name(path: Path) -> str:
    return (path.parent.name if path.name == "config.json" and path.parent.name else path.stem).lower()


def from_hf_config(path: str | Path, name: str | None = None) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face config.json, offline.

    Reads the standard keys (hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads (default:
    heads, MHA), head_dim (default hidden/heads), intermediate_size, vocab_size, tie_word_embeddings,
    max_position_embeddings), MoE keys (num_local_experts / num_experts / n_routed_experts,
    num_experts_per_tok, moe_intermediate_size, n_shared_experts, first_k_dense_replace) and MLA keys
    (kv_lora_rank, q_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim), inside `text_config` when
    the file nests one. The name defaults to the folder holding config.json, else the file's stem.
    Not modelled: MoE layers interleaved with dense ones (decoder_sparse_step, moe_layer_freq > 1) and
    sliding-window attention (every layer is taken to cache the full context).
    Problems raise ModelConfigError, one line naming the file and the key.
    """
    path = Path(path)
    cfg = _read_config(path)
    get = _int_reader(cfg, path)
    model_type = str(cfg.get("model_type", ""))
    hidden, heads = get("hidden_size"), get("num_attention_heads")
    if not heads or (hidden % heads and not cfg.get("head_dim")):
        raise ModelConfigError(f"{path}: 'num_attention_heads' ({heads}) must be positive and divide "
                               f"hidden_size ({hidden}) unless head_dim is given")
    inter = get("intermediate_size", 0) or get("moe_intermediate_size", 0)
    if not inter:
        raise ModelConfigError(f"{path}: missing key 'intermediate_size'")
    moe, mla = _moe_fields(get, inter), _mla_fields(get)
    head_dim = (mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"] if mla
                else get("head_dim", 0) or hidden // heads)
    tied = cfg.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)
    try:
        return ModelSpec(
            name=name or _default_name(path), hidden_size=hidden, num_layers=get("num_hidden_layers"),
            num_heads=heads, num_kv_heads=get("num_key_value_heads", heads), head_dim=head_dim,
            intermediate_size=inter, vocab_size=get("vocab_size"),
            max_model_len=get("max_position_embeddings", ModelSpec.max_model_len), tied_embeddings=bool(tied),
            attention_bias=bool(cfg.get("attention_bias")) or model_type in _QKV_BIAS_TYPES,
            qk_norm=model_type in _QK_NORM_TYPES, norms_per_layer=4 if model_type in _FOUR_NORM_TYPES else 2,
            source=f"{path.name} ({model_type or 'unknown model_type'})", **moe, **mla)
    except ValueError as exc:
        raise ModelConfigError(f"{path}: {exc}") from None


def resolve_model(name: str | None, config_path: str | Path | None) -> ModelSpec:
    """The model a run uses: a preset name or a Hugging Face config.json path (exactly one of the two)."""
    if name and config_path:
        raise ValueError(f"give a model name or a config.json path, not both (got '{name}' and '{config_path}')")
    if config_path:
        return from_hf_config(config_path)
    if name:
        return get_model(name)
    raise ValueError(f"no model given: name a preset (one of: {', '.join(sorted(MODELS))}) "
                     "or give a Hugging Face config.json path")

