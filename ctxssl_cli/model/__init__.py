"""The ContextSSL model: image encoders, the context transformer (masks, KV cache) and their composition."""

from ctxssl_cli.model.context import ContextTransformer, KVCache, pair_attention_mask
from ctxssl_cli.model.ctxssl import ContextSSL, PairOutputs
from ctxssl_cli.model.encoder import ENCODERS, build_encoder
from ctxssl_cli.model.flops import model_flops_per_pair

__all__ = ["ENCODERS", "ContextSSL", "ContextTransformer", "KVCache", "PairOutputs", "build_encoder",
           "model_flops_per_pair", "pair_attention_mask"]
