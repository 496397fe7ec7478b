"""Flax NNX transformer modules: embeddings, attention, MLP, blocks, stacks and heads.

Every parameter carries logical axis names in its `out_sharding` metadata, and the
activations are constrained with names of their own. The rules table in `train/` must
name every one of them (flax passes an unknown name through as a mesh axis name).

The decoder (`LlamaLM`, model/decoder.py) uses the same names: embed.embedding
('vocab','embed'), lm_head.kernel ('embed','vocab') when untied, and no biases.

Parameter names (path in `BertMLM`: names; `layers` leads every stacked parameter):

    vocab      embeddings.word.embedding ('vocab','embed'); head.bias ('vocab',)
    embed      embeddings.{word,position,token_type}.embedding; attention and MLP kernels;
               attention.out.bias, mlp.down.bias ('embed',); head.transform.kernel
    heads      attention.{query,key,value}.kernel ('embed','heads','head_dim'),
               their biases ('heads','head_dim'); attention.out.kernel ('heads','head_dim','embed')
    kv_heads   key/value kernels and biases instead of `heads` when num_kv_heads < num_heads
               (grouped-query attention; unused by BERT)
    head_dim   the per-head feature axis of q/k/v/out
    mlp        mlp.up.kernel ('embed','mlp'), mlp.up.bias ('mlp',), mlp.down.kernel ('mlp','embed')
    transform  head.transform.kernel ('embed','transform'), head.transform.bias ('transform',)
    mlp        (llama) mlp.{gate,up}.kernel ('embed','mlp'), mlp.down.kernel ('mlp','embed'); no biases
    norm       every LayerNorm scale and bias, every RMSNorm scale ('norm',)
    classes    BertClassifier's classifier.kernel ('transform','classes') and bias ('classes',);
               its pooler is laid out like head.transform
    layers     the stacked-layer axis of every parameter under `layers.`
    (decoding) the decoder's decoding layout (model/fused_block.py) regroups each layer as
               qkv.kernel (heads or kv_heads, None, 'head_dim', 'embed'), out.kernel ('embed','heads',
               'head_dim'), gate_up.kernel (None, 'mlp', 'embed'), down.kernel ('embed','mlp'), and holds
               the word table (tied) or lm_head (untied) as a [vocab, embed] kernel ('vocab','embed');
               int8 kernels (model/decode_kernels.py) add a `scale` named by their output axes: the
               same names, no new rules
    None       the row axis of the position and token-type tables

Activation names: act_batch, act_length, act_kv_length, act_embed, act_heads, act_kv_heads,
act_head_dim, act_mlp, act_vocab (act_vocab also lays out the word table for the
embedding lookup, whose `embed` axis is gathered whole first). act_kv_length is the
length of keys and values as attention reads them (and of the KV cache): whole, where
act_length may be split over a sequence axis. Constraints apply only while both a mesh
(`jax.set_mesh`) and rules (`nnx.logical_axis_rules`) are active at trace time; without
them the model runs on one device with no context at all.

May import: jax, flax, and qwix (int8 decoding kernels); never data/ or train/, and nothing here compiles: the jit
boundaries are all in train/.
"""

from model.classifier import BertClassifier
from model.config import ModelConfig
from model.decoder import LlamaLM
from model.encoder import BertMLM

__all__ = ["BertClassifier", "BertMLM", "LlamaLM", "ModelConfig"]
