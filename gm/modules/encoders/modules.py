"""SDXL conditioning: the two text embedders, the size/crop embedder and the conditioner.

Names and config parameters follow generative-models (``sgm.modules.encoders.modules``); the
embedders are built from explicit sizes instead of downloaded pretrained models.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from gm.config import instantiate_from_config
from gm.errors import ConfigError
from gm.modules.diffusionmodules.util import timestep_embedding
from gm.modules.encoders.clip_text_model import CLIPTextModel
from gm.modules.encoders.open_clip_text_model import OpenCLIPTextModel
from gm.modules.encoders.prompt_chunks import chunk_rows, prompt_chunks
from gm.modules.encoders.tokenizer import CLIPTokenizer

EOS_TOKEN_ID = 49407


def freeze(cell):
    """Set ``requires_grad=False`` on every parameter of ``cell``."""
    for param in cell.get_parameters():
        param.requires_grad = False


class AbstractEmbModel(nn.Cell):
    """An embedder of :class:`GeneralConditioner`; the conditioner sets ``input_key``."""

    def __init__(self):
        super().__init__()
        self.input_key = None


class TextEmbedder(AbstractEmbModel):
    """A text embedder: tokenizes prompts and owns an extensible token :class:`Embedding`."""

    pad_token_id = EOS_TOKEN_ID

    def __init__(self, max_length):
        super().__init__()
        self.max_length = max_length
        self.tokenizer = CLIPTokenizer(pad_token_id=self.pad_token_id, max_length=max_length)

    @property
    def embedding(self):
        """The token :class:`gm.modules.layers.Embedding`."""
        raise NotImplementedError

    @property
    def width(self) -> int:
        """Width of a token embedding row (what a learned vector of this encoder must have)."""
        return self.embedding.weight.shape[1]

    def tokenize(self, texts):
        """str or list[str] -> int32 Tensor [B, max_length] (BOS, tokens, EOS, padding)."""
        return Tensor(np.asarray(self.tokenizer(texts), np.int32))

    def encode(self, texts):
        """Tokenize and embed: ``self(self.tokenize(texts))``."""
        return self(self.tokenize(texts))

    def add_tokens(self, tokens, rows, param_name):
        """Add ``tokens`` to the tokenizer and ``rows`` [N, D] as trainable parameter ``param_name``.

        Returns the new ids (the same in tokenizer and embedding); raises, changing nothing, if the
        rows have the wrong shape, a token exists already or the two vocabularies are out of step.
        In graph mode call it before the first call of any cell holding this embedder: compiled
        graphs are cached and would not see the new rows.
        """
        rows = np.asarray(rows, np.float32)
        dim = self.width
        if rows.shape != (len(tokens), dim):
            raise ValueError(f"{len(tokens)} tokens need rows of shape [{len(tokens)}, {dim}], "
                             f"got {list(rows.shape)}")
        next_row = self.embedding.num_base + self.embedding.num_extra
        if self.tokenizer.vocab_size != next_row:
            raise RuntimeError(f"tokenizer has {self.tokenizer.vocab_size} tokens but the embedding "
                               f"{next_row} rows")
        self.tokenizer.add_tokens(list(tokens))
        return self.embedding.add_rows(rows, param_name)


class FrozenCLIPEmbedder(TextEmbedder):
    """CLIP ViT-L/14 text tower (``transformer``, Hugging Face names), frozen.

    ``layer="hidden"``: output ``hidden_states[layer_idx]`` (SDXL: 11 of 12 layers, no final norm);
    ``layer="last"``: last hidden state after the final norm. tokens int32 [B, L] -> [B, L, hidden_size].
    """

    LAYERS = ("last", "hidden")

    def __init__(self, layer="last", layer_idx=None, vocab_size=49408, hidden_size=768, num_layers=12,
                 num_heads=12, intermediate_size=3072, hidden_act="quick_gelu", max_length=77):
        super().__init__(max_length)
        if layer not in self.LAYERS:
            raise ValueError(f"layer must be one of {self.LAYERS}, got {layer!r}")
        if layer == "hidden" and layer_idx is None:
            raise ValueError('layer="hidden" needs layer_idx')
        self.layer = layer
        self.layer_idx = layer_idx
        self.transformer = CLIPTextModel(vocab_size, hidden_size, num_layers, num_heads, intermediate_size,
                                         hidden_act, max_length,
                                         output_layer=layer_idx if layer == "hidden" else None)
        freeze(self)

    @property
    def embedding(self):
        return self.transformer.token_embedding

    def construct(self, tokens):
        return self.transformer(tokens)


class FrozenOpenCLIPEmbedder2(TextEmbedder):
    """OpenCLIP ViT-bigG/14 text tower (``model``, OpenCLIP names), frozen; pads with id 0.

    ``layer`` is "penultimate" or "last" (output of all blocks but the last, or of all blocks).
    With ``always_return_pooled`` (requires ``legacy=False``) returns ``(context, pooled)``:
    [B, L, width] and [B, embed_dim]; otherwise only the context, which ``legacy=True`` passes
    through ``ln_final``.
    """

    LAYERS = ("last", "penultimate")
    pad_token_id = 0

    def __init__(self, layer="last", always_return_pooled=False, legacy=True, vocab_size=49408, width=1280,
                 layers=32, heads=20, mlp_ratio=4.0, embed_dim=1280, max_length=77):
        super().__init__(max_length)
        if layer not in self.LAYERS:
            raise ValueError(f"layer must be one of {self.LAYERS}, got {layer!r}")
        if always_return_pooled and legacy:
            raise ValueError("always_return_pooled needs legacy=False")
        self.layer = layer
        self.legacy = legacy
        self.return_pooled = always_return_pooled
        self.model = OpenCLIPTextModel(vocab_size, width, layers, heads, mlp_ratio, embed_dim, max_length,
                                       eos_token_id=EOS_TOKEN_ID, skip_last=1 if layer == "penultimate" else 0,
                                       pooled=always_return_pooled)
        freeze(self)

    @property
    def embedding(self):
        return self.model.token_embedding

    def construct(self, tokens):
        if self.return_pooled:
            return self.model(tokens)
        context = self.model(tokens)
        if self.legacy:
            context = self.model.ln_final(context)
        return context


class ConcatTimestepEmbedderND(AbstractEmbModel):
    """Sinusoidal embedding of every scalar, concatenated: float [B, n] -> [B, n * outdim]."""

    def __init__(self, outdim):
        super().__init__()
        self.outdim = outdim

    def construct(self, x):
        if x.ndim == 1:
            x = x.expand_dims(1)
        b, n = x.shape
        return timestep_embedding(x.reshape(-1), self.outdim).reshape(b, n * self.outdim)


class GeneralConditioner(nn.Cell):
    """Runs the embedders of ``emb_models`` and gathers their outputs.

    Each item of ``emb_models`` is ``{target, params, input_key, is_trainable: False}``. Embedder outputs
    with 3 dims are concatenated on the last axis into the cross-attention ``context``, outputs
    with 2 dims (pooled text, size embeddings) into the ``vector``, both in embedder order.
    """

    def __init__(self, emb_models):
        super().__init__()
        embedders = []
        for config in emb_models:
            embedder = instantiate_from_config(config)
            if not isinstance(embedder, AbstractEmbModel):
                raise TypeError(f"{type(embedder).__name__} is not an AbstractEmbModel")
            embedder.input_key = config["input_key"]
            if config.get("is_trainable", False):
                raise ConfigError(f"emb_models: {config['target']} has is_trainable: True; the toolkit keeps "
                                  "every model weight frozen (textual inversion learns new words only)")
            freeze(embedder)
            embedders.append(embedder)
        self.embedders = nn.CellList(embedders)
        self.learned_words = {}  # {token: number of vectors} of the words added by textual inversion, in order

    @property
    def text_embedders(self):
        """The text embedders, in order (targets of textual inversion)."""
        return [e for e in self.embedders if isinstance(e, TextEmbedder)]

    @property
    def pooled_dim(self):
        """Width of the pooled-text part at the start of ``vector``."""
        return sum(e.model.text_projection.shape[1] for e in self.text_embedders
                   if getattr(e, "return_pooled", False))

    def prepare(self, batch):
        """Batch dict -> construct inputs: int32 tokens for text embedders, float32 [B, n] otherwise."""
        inputs = []
        for embedder in self.embedders:
            value = batch[embedder.input_key]
            if isinstance(embedder, TextEmbedder):
                inputs.append(embedder.tokenize(value))
            else:
                value = value.asnumpy() if isinstance(value, Tensor) else value
                inputs.append(Tensor(np.asarray(value, np.float32)))
        return tuple(inputs)

    def construct(self, *inputs):
        """Embedder inputs (see :meth:`prepare`) -> ``(context [B, L, sum C], vector [B, sum D])``."""
        contexts = ()
        vectors = ()
        for i in range(len(self.embedders)):
            out = self.embedders[i](inputs[i])
            if not isinstance(out, tuple):
                out = (out,)
            for emb in out:
                if emb.ndim == 3:
                    contexts = contexts + (emb,)
                else:
                    vectors = vectors + (emb,)
        return ops.cat(contexts, axis=-1), ops.cat(vectors, axis=-1)

    def embed(self, batch):
        """``construct(*prepare(batch))``."""
        return self(*self.prepare(batch))

    # -- prompts for sampling: weighted, of any length ---------------------------------------------
    def num_chunks(self, prompt: str) -> int:
        """How many chunks of 75 tokens ``prompt`` takes (see :mod:`gm.modules.encoders.prompt_chunks`)."""
        return len(prompt_chunks(self.text_embedders[0].tokenizer, prompt, self.learned_words))

    def prepare_prompts(self, batch: dict, num_chunks: int = 1) -> tuple:
        """:meth:`prepare` for sampling: ``(inputs, weights)``.

        Each prompt is read with its weights and in K chunks (K: the most any prompt takes, at least
        ``num_chunks``; shorter prompts get empty chunks): the text inputs are [B K, 77] token rows, prompt
        by prompt, the other inputs are repeated K times; ``weights`` holds one float32 [B, K, 77] array of
        token weights per text embedder. :meth:`join_chunks` makes the output one context per prompt.
        """
        chunks = {}
        for i, embedder in enumerate(self.embedders):
            if isinstance(embedder, TextEmbedder):
                texts = batch[embedder.input_key]
                texts = [texts] if isinstance(texts, str) else texts
                chunks[i] = [prompt_chunks(embedder.tokenizer, t, self.learned_words) for t in texts]
        k = max([num_chunks] + [len(c) for per_prompt in chunks.values() for c in per_prompt])
        inputs, weights = [], []
        for i, embedder in enumerate(self.embedders):
            if i in chunks:
                rows = [chunk_rows(embedder.tokenizer, c, k) for c in chunks[i]]
                inputs.append(Tensor(np.concatenate([ids for ids, _ in rows])))
                weights.append(np.stack([w for _, w in rows]))
            else:
                value = batch[embedder.input_key]
                value = value.asnumpy() if isinstance(value, Tensor) else value
                inputs.append(Tensor(np.repeat(np.asarray(value, np.float32), k, axis=0)))
        return tuple(inputs), weights

    def join_chunks(self, context, vector, weights: list) -> tuple:
        """The output of :meth:`construct` on :meth:`prepare_prompts`' inputs -> ``(context [B, 77 K, C],
        vector [B, D])``: each text embedder's part of the context weighted (:func:`apply_weights`), each
        prompt's chunks joined along the sequence, the vector (pooled text) of its first chunk."""
        b, k, length = weights[0].shape
        if any((w != 1).any() for w in weights):
            widths = [e.width for e in self.text_embedders]
            if sum(widths) != context.shape[-1]:
                raise ValueError(f"context width {context.shape[-1]} is not that of the text embedders {widths}")
            bounds = np.cumsum([0] + widths).tolist()
            context = ops.cat([apply_weights(context[..., bounds[i]:bounds[i + 1]], w.reshape(b * k, length))
                               for i, w in enumerate(weights)], axis=-1)
        if k == 1:
            return context, vector
        return context.reshape(b, k * length, -1), vector.reshape(b, k, -1)[:, 0]


def apply_weights(context, weights):
    """As AUTOMATIC1111: each token's hidden state [N, L, C] times its weight [N, L], then each sequence
    rescaled so that its mean over tokens and channels is that of the unweighted one (computed in float32)."""
    z = context.astype(ms.float32)
    weighted = z * Tensor(weights[..., None])
    scale = z.mean(axis=(1, 2), keep_dims=True) / weighted.mean(axis=(1, 2), keep_dims=True)
    return (weighted * scale).astype(context.dtype)
