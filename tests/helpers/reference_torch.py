"""PyTorch reference of the published model (our reconstruction of its ``model.py``).

The published ``AutextificationMTLModel`` builds an ``XLMRobertaModel`` as ``self.transformer`` with
``from_pretrained(config.transformer_name)`` and two heads ``nn.Sequential(Linear, act, Linear)``;
it is called with a tokenizer's batch encoding and returns ``{is_bot, bot_prob, english_prob}``.
This file is self-contained so it can serve as the ``model.py`` of a local parity directory
(``tools/parity_check.py`` imports it from there and finds the config class in it).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, XLMRobertaConfig, XLMRobertaModel

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class AutextificationMTLConfig(PretrainedConfig):
    """The published config fields (plus our optional ``pooling``/``head_activation``/``encoder``)."""

    model_type = "custom-text-classifier"

    def __init__(
        self,
        transformer_name: str = "xlm-roberta-base",
        hidden_nodes: int = 64,
        threshold: float = 0.9919,
        pooling: str = "cls",
        head_activation: str = "relu",
        head_dropout: float = 0.1,
        **kwargs,
    ):
        self.transformer_name = transformer_name
        self.hidden_nodes = hidden_nodes
        self.threshold = threshold
        self.pooling = pooling
        self.head_activation = head_activation
        self.head_dropout = head_dropout
        super().__init__(**kwargs)


def build_encoder(hf_config: Mapping) -> XLMRobertaModel:
    """An ``XLMRobertaModel`` from an HF config dict (random weights, to be overwritten)."""
    config = XLMRobertaConfig(**{k: v for k, v in hf_config.items() if k != "use_pooler"})
    config._attn_implementation = "eager"
    return XLMRobertaModel(config, add_pooling_layer=hf_config.get("use_pooler", True))


class AutextificationMTLModel(nn.Module):
    """Encoder + bot head + language head, called on a batch encoding."""

    def __init__(self, config: AutextificationMTLConfig, encoder: XLMRobertaModel | None = None):
        super().__init__()
        self.config = config
        # As the original: the encoder comes from ``from_pretrained`` unless one is given.
        self.transformer = (
            encoder if encoder is not None else AutoModel.from_pretrained(config.transformer_name)
        )
        hidden = self.transformer.config.hidden_size
        act = _ACTIVATIONS[getattr(config, "head_activation", "relu")]
        self.dropout = nn.Dropout(getattr(config, "head_dropout", 0.1))
        self.bot_head = nn.Sequential(
            nn.Linear(hidden, config.hidden_nodes), act(), nn.Linear(config.hidden_nodes, 1)
        )
        self.lang_head = nn.Sequential(
            nn.Linear(hidden, config.hidden_nodes), act(), nn.Linear(config.hidden_nodes, 1)
        )

    def pool(self, outputs, attention_mask: torch.Tensor) -> torch.Tensor:
        pooling = getattr(self.config, "pooling", "cls")
        hidden = outputs.last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "pooler":
            return outputs.pooler_output
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)

    def logits(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.transformer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        pooled = self.dropout(self.pool(outputs, batch["attention_mask"]))
        return {
            "bot": self.bot_head(pooled).squeeze(-1),
            "english": self.lang_head(pooled).squeeze(-1),
            "hidden": outputs.last_hidden_state,
        }

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.logits(batch)
        bot_prob = torch.sigmoid(out["bot"])
        return {
            "is_bot": bot_prob >= self.config.threshold,
            "bot_prob": bot_prob,
            "english_prob": torch.sigmoid(out["english"]),
        }


def reference_from_model_config(model_config) -> AutextificationMTLModel:
    """The torch twin of an ``autext_jax.config.ModelConfig`` (random weights; load a state dict next)."""
    config = AutextificationMTLConfig(
        transformer_name=model_config.transformer_name,
        hidden_nodes=model_config.hidden_nodes,
        threshold=model_config.threshold,
        pooling=model_config.pooling,
        head_activation=model_config.head_activation,
        head_dropout=model_config.head_dropout,
    )
    model = AutextificationMTLModel(config, encoder=build_encoder(model_config.encoder.to_hf_config()))
    return model.eval()
