"""The mapping network f_map of Face2Diffusion (paper §3.3, official IMG2TEXTwithEXP).

identity (B, 1536) ++ expression (B, 64) -> two independent MLPs -> S1*, S2*, each (B, W),
the word embeddings that stand in for "f l" in the prompt. W is the family's token width:
768 for SD1.x (the official file), 768 + 1280 = 2048 for SDXL (one word for both encoders,
split by `Family.split`). The expression defaults to
the learned `null_exp` (the paper's unconditional expression vector); a per-sample
mask swaps in `null_exp` where it is 0 (training-time expression dropout, Eq. 4).

Attribute names are the keys of the official `mapping.pt`.
"""
from __future__ import annotations

import torch
from torch import nn

IDENTITY_DIM = 1536
EXPRESSION_DIM = 64
HIDDEN_DIM = 1536
TOKEN_DIM = 768


class IMG2TEXT_MLP(nn.Module):
    """Two (Linear, Dropout, LeakyReLU(0.2)) layers and a linear output."""

    def __init__(self, in_dim=IDENTITY_DIM + EXPRESSION_DIM, hidden=HIDDEN_DIM, out_dim=TOKEN_DIM, dropout=0.1):
        super().__init__()
        # fc_out is created first so the state_dict order matches the official file
        self.fc_out = nn.Linear(hidden, out_dim)
        # dropout sits before the activation, as in the official code (inactive in eval)
        self.layers = nn.ModuleList([
            nn.Sequential(nn.Linear(in_dim, hidden), nn.Dropout(dropout), nn.LeakyReLU(0.2)),
            nn.Sequential(nn.Linear(hidden, hidden), nn.Dropout(dropout), nn.LeakyReLU(0.2)),
        ])

    def forward(self, z):
        for layer in self.layers:
            z = layer(z)
        return self.fc_out(z)


class MappingNetwork(nn.Module):
    def __init__(self, token_dim: int = TOKEN_DIM):
        super().__init__()
        self.token_dim = token_dim
        self.null_exp = nn.Parameter(torch.zeros(EXPRESSION_DIM))
        self.i2t_first = IMG2TEXT_MLP(out_dim=token_dim)
        self.i2t_last = IMG2TEXT_MLP(out_dim=token_dim)

    def mix_expression(self, batch: int, expression=None, mask=None) -> torch.Tensor:
        """exp * mask + null_exp * (1 - mask), with exp defaulting to null_exp."""
        null = self.null_exp[None].expand(batch, -1)
        if expression is None:
            return null
        expression = expression.to(null)
        if expression.ndim == 1:
            expression = expression[None]
        if expression.shape[-1] != EXPRESSION_DIM:
            raise ValueError(f"expression vectors must be {EXPRESSION_DIM}-d, got shape {tuple(expression.shape)}")
        expression = expression.expand(batch, -1)
        if mask is None:
            return expression
        mask = torch.as_tensor(mask).to(null).reshape(-1, 1)
        return expression * mask + null * (1 - mask)

    def forward(self, identity: torch.Tensor, expression=None, mask=None):
        if identity.ndim != 2 or identity.shape[1] != IDENTITY_DIM:
            raise ValueError(f"identity features must be (B, {IDENTITY_DIM}), got {tuple(identity.shape)}")
        z = torch.cat([identity, self.mix_expression(identity.shape[0], expression, mask)], dim=1)
        return self.i2t_first(z), self.i2t_last(z)
