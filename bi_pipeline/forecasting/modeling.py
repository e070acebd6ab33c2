"""The forecaster: a PatchTST backbone from Hugging Face transformers with a quantile head that reads the known-future
covariates and the static attributes (no Dagster).

Packaged as a ``PreTrainedModel`` (``save_pretrained``/``from_pretrained``, safetensors). The config carries the
feature encodings (:class:`bi_pipeline.forecasting.features.FeatureSpec`), so a saved directory is everything needed to
forecast.

Design choices, each measured (docs/accuracy.md):
- channel-independent patches of one series, per-window scaling by the context's mean absolute value: the model
  sees shapes, never absolute levels, which lets it share what it learns across stores and items of any size;
- LayerNorm, not BatchNorm, so the weights can be fine-tuned again on new data (continual training);
- a direct multi-step head: a linear map of the flattened patch embeddings gives the median path, and a small MLP per
  step adds the effect of that step's covariates, the step position and the static attributes;
- quantiles that cannot cross: the median plus cumulative softplus gaps on either side;
- quantiles that cannot go below zero when the measure never did (sales): a sharp softplus floor (smooth_floor) on
  every member's output, so training learns with the support the forecasts have; at inference a value the network
  puts at or below zero is zero, the point mass a count has there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import AttentionInterface, PatchTSTConfig, PatchTSTModel, PretrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.patchtst.modeling_patchtst import PatchTSTAttention

from bi_pipeline.forecasting.metrics import QUANTILES

ATTENTION = "bi_pipeline"  # the backbone's attention: SDPA, with its dropout drawn by DropoutNoise on the CPU


class DropoutNoise:
    """The random stream of the network's dropout masks on the CPU. torch draws a CPU dropout mask from MT19937 one
    element at a time: on this small network that was a third of a training step (docs/benchmarks.md). NumPy's PCG64
    draws the same Bernoulli masks several times faster. On an accelerator torch's own dropout runs."""

    def __init__(self, seed: int) -> None:
        self.generator = np.random.default_rng(seed)

    def reseed(self, seed: int | list[int]) -> None:
        """A new stream: training reseeds it every epoch, so a resumed run draws what it would have drawn."""
        self.generator = np.random.default_rng(seed)

    def drop(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """``nn.functional.dropout(x, p, training=True)``: zero each element with probability ``p``, scale the rest."""
        if x.device.type != "cpu":
            return nn.functional.dropout(x, p, True)
        # 16 random bits an element, compared in NumPy: p to within 1/65536, at a third of float32 draws' cost.
        bits = self.generator.integers(0, 65536, size=tuple(x.shape), dtype=np.uint16)
        keep = torch.from_numpy(bits >= round(p * 65536))
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """``nn.Dropout`` with its CPU masks from a :class:`DropoutNoise`."""

    def __init__(self, p: float, noise: DropoutNoise) -> None:
        super().__init__()
        self.p, self.noise = p, noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise.drop(x, self.p) if self.training and self.p > 0 else x

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """PatchTST's attention: SDPA, except for training on the CPU, where SDPA's dropout falls back to its slow path
    and draws from torch's generator; there the weights are dropped by the module's :class:`DropoutNoise`."""
    noise = getattr(module, "noise", None)
    if not dropout or noise is None or query.device.type != "cpu":
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling or query.size(-1) ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask
    # By hand: torch's CPU softmax over a dozen patches took four times as long as these three operations.
    exp = (scores - scores.amax(-1, keepdim=True).detach()).exp()
    weights = noise.drop(exp / exp.sum(-1, keepdim=True), dropout)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, _attention)


def share_noise(module: nn.Module, noise: DropoutNoise) -> None:
    """Every ``nn.Dropout`` under ``module`` becomes a :class:`Dropout` on ``noise``, and every attention layer draws
    its dropout from it; parameters and saved files are unchanged."""
    for parent in list(module.modules()):
        if isinstance(parent, PatchTSTAttention):
            parent.noise = noise
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout(child.p, noise))


class BIForecasterConfig(PretrainedConfig):
    model_type = "bi_forecaster"

    def __init__(
        self,
        context_length: int = 52,
        patch_length: int = 4,
        horizon: int = 13,
        d_model: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        ffn_dim: int = 128,
        dropout: float = 0.1,
        head_dim: int = 64,
        embedding_dim: int = 4,
        quantiles: tuple[float, ...] | list[float] = QUANTILES,
        num_future_features: int = 0,
        static_cardinalities: list[int] | None = None,
        num_static_numeric: int = 0,
        feature_spec: dict | None = None,
        num_members: int = 4,
        spread_scale: float = 1.0,
        level_scale: float = 1.0,
        spread_power: float = 0.0,
        spread_reference: float = 1.0,
        error_spread_power: float = 0.0,
        error_spread_reference: float = 1.0,
        error_spread_windows: int = 0,
        level_feedback_power: float = 0.0,
        level_feedback_origins: int = 0,
        seasonal_spread: bool = False,
        training_targets_end: str | None = None,
        **kwargs,
    ) -> None:
        self.context_length = context_length
        self.patch_length = patch_length
        self.horizon = horizon
        self.d_model = d_model
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.head_dim = head_dim
        self.embedding_dim = embedding_dim
        self.quantiles = list(quantiles)
        self.num_future_features = num_future_features
        self.static_cardinalities = list(static_cardinalities or [])
        self.num_static_numeric = num_static_numeric
        self.feature_spec = feature_spec or {}
        self.num_members = num_members
        # Multiplies every quantile's distance from the median; fitted on the validation windows after training.
        self.spread_scale = spread_scale
        # Multiplies every quantile (the forecast's level); fitted on the validation windows after training.
        self.level_scale = level_scale
        # The spread factor also follows each forecast's own interval width: × (width / reference) ** power (see
        # spread_factor); fitted on the validation windows, 0 leaves one factor for every forecast.
        self.spread_power = spread_power
        self.spread_reference = spread_reference
        # Each series' spread also follows the model's own past errors on it: × (its error ratio / reference) ** power
        # over its latest ``error_spread_windows`` forecasts (feedback.past_error_ratio); applied at forecast time.
        self.error_spread_power = error_spread_power
        self.error_spread_reference = error_spread_reference
        self.error_spread_windows = error_spread_windows
        # Each series' forecast is multiplied by (Σ actual / Σ median of its recent forecasts) ** power, over the
        # model's forecasts from its ``level_feedback_origins`` latest origins (feedback.recent_level_ratio).
        self.level_feedback_power = level_feedback_power
        self.level_feedback_origins = level_feedback_origins
        # Where the context is shorter than a year, each series' spread follows last year's level over the horizon
        # against its context's (feedback.seasonal_spread_ratio); applied at forecast time. Off in versions saved
        # before it.
        self.seasonal_spread = seasonal_spread
        # The last period whose targets the model was trained on: an incremental update learns the periods after it.
        self.training_targets_end = training_targets_end
        super().__init__(**kwargs)

    def backbone_config(self) -> PatchTSTConfig:
        """The PatchTST encoder's config."""
        return PatchTSTConfig(
            num_input_channels=1,
            context_length=self.context_length,
            patch_length=self.patch_length,
            patch_stride=self.patch_length,
            d_model=self.d_model,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            ffn_dim=self.ffn_dim,
            attention_dropout=self.dropout,
            ff_dropout=self.dropout,
            norm_type="layernorm",
            scaling=None,  # windows arrive scaled (see BIForecaster.scale)
            pooling_type=None,
            prediction_length=self.horizon,
            attn_implementation=ATTENTION,
        )

    @property
    def num_patches(self) -> int:
        return (self.context_length - self.patch_length) // self.patch_length + 1


class _Member(nn.Module):
    """One backbone and head; the forecaster averages the quantiles of ``num_members`` of these trained from
    different seeds, which removes most of the run-to-run variance of a small model on little data."""

    def __init__(self, config: BIForecasterConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = PatchTSTModel(config.backbone_config())
        flat = config.d_model * config.num_patches
        horizon, quantiles = config.horizon, len(config.quantiles)
        self.dropout = nn.Dropout(config.dropout)
        self.direct = nn.Linear(flat, horizon)
        self.context = nn.Linear(flat, config.head_dim)
        self.embeddings = nn.ModuleList(nn.Embedding(c, config.embedding_dim) for c in config.static_cardinalities)
        self.step = nn.Embedding(horizon, config.embedding_dim)
        width = (
            config.head_dim
            + config.embedding_dim * (1 + len(config.static_cardinalities))
            + config.num_static_numeric
            + config.num_future_features
        )
        self.step_mlp = nn.Sequential(
            nn.Linear(width, config.head_dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_dim, quantiles),
        )
        self._widths = [
            config.head_dim,
            config.embedding_dim,
            *[config.embedding_dim] * len(config.static_cardinalities),
            *([config.num_static_numeric] if config.num_static_numeric else []),
            *([config.num_future_features] if config.num_future_features else []),
        ]
        self.median_index = list(config.quantiles).index(0.5)
        self.nonnegative = bool(config.feature_spec.get("nonnegative", False))

    def step_input(
        self,
        flat: torch.Tensor,
        future_features: torch.Tensor | None,
        static_categorical: torch.Tensor | None,
        static_numeric: torch.Tensor | None,
    ) -> torch.Tensor:
        """The step MLP's first layer, (B, H, head_dim), on the concatenation [context, step embedding, static
        embeddings, static numbers, future covariates] at every step, computed part by part: the per-window parts
        once per window and the step embedding once per step, instead of a (B·H, width) concatenation (the same
        weights and sums; on the CPU the concatenation and its product were a fifth of a training step)."""
        first = self.step_mlp[0]
        blocks = torch.split(first.weight, self._widths, dim=1)
        per_window = nn.functional.linear(self.context(flat), blocks[0], first.bias)
        for j, embedding in enumerate(self.embeddings):
            per_window = per_window + nn.functional.linear(embedding(static_categorical[:, j]), blocks[2 + j])
        k = 2 + len(self.embeddings)
        if self.config.num_static_numeric:
            per_window = per_window + nn.functional.linear(static_numeric, blocks[k])
            k += 1
        hidden = per_window.unsqueeze(1) + nn.functional.linear(self.step.weight, blocks[1]).unsqueeze(0)
        if self.config.num_future_features:
            hidden = hidden + nn.functional.linear(future_features, blocks[k])
        return hidden

    def forward(
        self,
        scaled: torch.Tensor,
        future_features: torch.Tensor | None,
        static_categorical: torch.Tensor | None,
        static_numeric: torch.Tensor | None,
    ) -> torch.Tensor:
        hidden = self.backbone(past_values=scaled.unsqueeze(-1)).last_hidden_state  # (B, 1, patches, d_model)
        flat = self.dropout(hidden.flatten(1))
        step = self.step_mlp[1:](self.step_input(flat, future_features, static_categorical, static_numeric))
        median = self.direct(flat) + step[..., self.median_index]
        gaps = nn.functional.softplus(step) + 1e-4
        below = torch.flip(torch.cumsum(torch.flip(gaps[..., : self.median_index], [-1]), -1), [-1])
        above = torch.cumsum(gaps[..., self.median_index + 1 :], -1)
        out = torch.cat([median.unsqueeze(-1) - below, median.unsqueeze(-1), median.unsqueeze(-1) + above], dim=-1)
        return smooth_floor(out, hard=not self.training) if self.nonnegative else out


class BIForecaster(PreTrainedModel):
    config_class = BIForecasterConfig
    base_model_prefix = "bi_forecaster"
    main_input_name = "past_values"

    def __init__(self, config: BIForecasterConfig) -> None:
        super().__init__(config)
        self.members = nn.ModuleList(_Member(config) for _ in range(config.num_members))
        self._backbone_modules = {id(m) for member in self.members for m in member.backbone.modules()}
        self.post_init()
        self.noise = DropoutNoise(torch.initial_seed())
        share_noise(self.members, self.noise)

    def _init_weights(self, module: nn.Module) -> None:
        # Each backbone initialises itself (PatchTST's own scheme); only the heads' layers are set here.
        if id(module) in getattr(self, "_backbone_modules", ()):
            return
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.1)

    @staticmethod
    def scale(past_values: torch.Tensor, past_observed: torch.Tensor) -> torch.Tensor:
        """(B, 1) mean absolute observed context value; 1 where the context is all zero or unobserved."""
        weights = past_observed.to(past_values.dtype)
        total = (past_values.abs() * weights).sum(1, keepdim=True)
        count = weights.sum(1, keepdim=True).clamp(min=1.0)
        scale = total / count
        return torch.where(scale > 0, scale, torch.ones_like(scale))

    def forward(
        self,
        past_values: torch.Tensor,
        past_observed: torch.Tensor,
        future_features: torch.Tensor | None = None,
        static_categorical: torch.Tensor | None = None,
        static_numeric: torch.Tensor | None = None,
        return_members: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantiles in units of the scale, and the scale (B, 1): multiply to get sales. The quantiles are (B, H, Q),
        the members' average (monotone, as each member's are), or (K, B, H, Q) per member with ``return_members``."""
        scale = self.scale(past_values, past_observed)
        scaled = past_values / scale
        stacked = torch.stack([m(scaled, future_features, static_categorical, static_numeric) for m in self.members])
        if return_members:
            return stacked, scale
        quantiles = stacked.mean(0)
        power = getattr(self.config, "spread_power", 0.0)
        if self.config.spread_scale != 1.0 or power:
            median = quantiles[..., self.members[0].median_index : self.members[0].median_index + 1]
            factor = spread_factor(quantiles, self.config.spread_scale, power, self.config.spread_reference)
            quantiles = median + (quantiles - median) * factor
        if self.members[0].nonnegative:
            # A spread factor above 1 can push a lower quantile below zero.
            quantiles = smooth_floor(quantiles, hard=not self.training)
        if getattr(self.config, "level_scale", 1.0) != 1.0:
            quantiles = quantiles * self.config.level_scale  # positive: the floor holds
        return quantiles, scale


SPREAD_LIMITS = (0.1, 10.0)

# The floor's sharpness, in units of the context's mean absolute value: a quantile at that value moves by 0.0013 of it,
# one at twice it by 1e-5, one at zero is lifted to 0.14 of it, and below zero it tends to 0. Sharper floors starve
# negative raw outputs of gradient early in training (a tiny model's fit got measurably worse at 20).
FLOOR_SHARPNESS = 5.0


def smooth_floor(quantiles: torch.Tensor, hard: bool = False) -> torch.Tensor:
    """Quantiles kept above zero by a sharp softplus: monotone, so their order holds, and with a gradient everywhere,
    so the network learns where the floor is rather than being clipped after the fact.

    With ``hard`` (inference: the model not training), a value the network puts at or below zero is zero. A softplus
    alone never reaches zero (a raw 0 becomes 0.14 of the context's scale), so a slow mover's lower quantiles were
    never 0 and its days without a sale fell below every interval; the point mass at zero is what the forecast of a
    count needs. Above zero the two are the same softplus, so a series far from zero is forecast exactly as before."""
    soft = nn.functional.softplus(quantiles, beta=FLOOR_SHARPNESS, threshold=20.0)
    return torch.where(quantiles > 0, soft, torch.zeros_like(soft)) if hard else soft


def spread_factor(
    quantiles: torch.Tensor, spread: float, power: float = 0.0, reference: float = 1.0
) -> torch.Tensor | float:
    """The factor on each forecast's distances from its median: ``spread`` × (its width / ``reference``) ** ``power``,
    where the width is the mean distance between the outer quantiles over the horizon, in units of the context's
    scale. With ``power`` > 0 intervals the model already makes narrow (smooth, predictable series) narrow further
    and wide ones widen: a small model trained mostly on noisy series gives big, smooth ones intervals that are too
    wide (aus_retail: 99% of the largest series' actuals inside the 80% interval). (B, 1, 1), or ``spread``."""
    if not power:
        return spread
    return width_factor(forecast_width(quantiles), spread, power, reference).unsqueeze(-1)


def forecast_width(quantiles: torch.Tensor) -> torch.Tensor:
    """Each forecast's width: the mean distance between its outer quantiles over the horizon (B, 1), at least 1e-6."""
    return (quantiles[..., -1] - quantiles[..., 0]).mean(-1, keepdim=True).clamp(min=1e-6)


def width_factor(width: torch.Tensor, spread: float, power: float, reference: float) -> torch.Tensor:
    """:func:`spread_factor` of forecasts of the given widths."""
    return (spread * (width / reference) ** power).clamp(*SPREAD_LIMITS)


def pinball_loss(
    quantiles: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, levels: torch.Tensor
) -> torch.Tensor:
    """Mean pinball loss over the quantile levels and the masked-in steps; quantiles (B, H, Q), target/mask (B, H)."""
    diff = target.unsqueeze(-1) - quantiles
    loss = torch.maximum(levels * diff, (levels - 1.0) * diff).mean(-1)
    weights = mask.to(loss.dtype)
    return (loss * weights).sum() / (mask != 0).sum().clamp(min=1)
