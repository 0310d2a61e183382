"""Mapping network (SPEC 2.3): z (+ class embedding) -> w, per-class w_avg, truncation.

Legend: z_NZ latents, c_N class indices, w_NW latents, ws_NLW broadcast latents.
"""

from __future__ import annotations

import torch
from torch import nn

from model.layers import FullyConnected, normalize_2nd_moment


class MappingNetwork(nn.Module):
    """z [N, z_dim] and class labels -> ws [N, num_ws, w_dim].

    Class conditioning reads row k of a trainable embedding table (initialized from per-class
    mean lite0 features when given, else N(0, 1)), projects it 320 -> z_dim (lrelu) and
    concatenates it, 2nd-moment normalized, with the normalized z. Deliberate choice: the table
    has max(1000, c_dim) rows, so label sets larger than ImageNet's work (the original stops at
    1000).
    """

    def __init__(self, *, z_dim: int, c_dim: int, w_dim: int, num_ws: int, embed_dim: int = 320,
                 embed_rows: int = 1000, lr_multiplier: float = 0.01, w_avg_beta: float = 0.998,
                 class_embeddings: torch.Tensor | None = None):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, c_dim, w_dim, num_ws, w_avg_beta
        if c_dim:
            rows = max(embed_rows, c_dim)
            self.embed = nn.Embedding(rows, embed_dim)
            if class_embeddings is not None:
                if class_embeddings.ndim != 2 or class_embeddings.shape[1] != embed_dim or class_embeddings.shape[0] < c_dim:
                    raise ValueError(f"class_embeddings must be [>= {c_dim}, {embed_dim}], got {tuple(class_embeddings.shape)}")
                with torch.no_grad():
                    self.embed.weight[: class_embeddings.shape[0]].copy_(class_embeddings)
            self.embed_proj = FullyConnected(embed_dim, z_dim, activation="lrelu")
        self.fc0 = FullyConnected(z_dim * (2 if c_dim else 1), w_dim, activation="lrelu", lr_multiplier=lr_multiplier)
        self.fc1 = FullyConnected(w_dim, w_dim, activation="lrelu", lr_multiplier=lr_multiplier)
        self.register_buffer("w_avg", torch.zeros([c_dim, w_dim] if c_dim else [w_dim]))

    def labels(self, c: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """Class indices [N] from one-hot [N, c_dim] or integer [N] labels, with checks."""
        if not self.c_dim:
            if c is not None and c.numel():
                raise ValueError("this generator is unconditional: pass c=None")
            return None
        if c is None:
            raise ValueError(f"this generator is conditional ({self.c_dim} classes): pass c")
        if c.dtype in (torch.int64, torch.int32):
            if tuple(c.shape) != (n,):
                raise ValueError(f"integer labels must have shape [{n}], got {tuple(c.shape)}")
            idx = c.long()
        else:
            if tuple(c.shape) != (n, self.c_dim):
                raise ValueError(f"one-hot c must have shape [{n}, {self.c_dim}], got {tuple(c.shape)}")
            idx = c.argmax(dim=1)
        if not torch.compiler.is_compiling() and idx.numel():
            if idx.device.type == "cpu":  # free to check exactly here
                if int(idx.min()) < 0 or int(idx.max()) >= self.c_dim:
                    raise ValueError(f"class indices must be in [0, {self.c_dim}), got range "
                                     f"[{int(idx.min())}, {int(idx.max())}]")
            else:  # no host sync on an accelerator: a device-side assert
                torch._assert_async(((idx >= 0) & (idx < self.c_dim)).all(),
                                    f"class indices must be in [0, {self.c_dim})")
        return idx

    def forward(self, z_NZ: torch.Tensor, c=None, *, psi=1.0, truncation_cutoff: int | None = None,
                update_w_avg: bool = False) -> torch.Tensor:
        """Args:
            z_NZ: [N, z_dim] latents.
            c: one-hot [N, c_dim] or integer labels [N]; None if unconditional.
            psi: truncation strength, a float or 0-d tensor (a tensor never recompiles).
            truncation_cutoff: truncate the first this-many ws (None = all).
            update_w_avg: track w_avg (the D step's fake pass does this).
        Returns:
            ws [N, num_ws, w_dim] float32.
        """
        if z_NZ.ndim != 2 or z_NZ.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [N, {self.z_dim}], got {tuple(z_NZ.shape)}")
        idx = self.labels(c, z_NZ.shape[0])
        x = normalize_2nd_moment(z_NZ.to(self.fc0.weight.dtype))  # float32 (the parameters' dtype)
        if idx is not None:
            y = normalize_2nd_moment(self.embed_proj(self.embed(idx)))
            x = torch.cat([x, y], dim=1)
        w = self.fc1(self.fc0(x))
        if update_w_avg:
            self._update_w_avg(w.detach(), idx)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if isinstance(psi, torch.Tensor) or psi != 1:
            avg = self.w_avg[idx] if idx is not None else self.w_avg.expand_as(w)  # [N, W]
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            head = avg.unsqueeze(1) + psi * (ws[:, :cut] - avg.unsqueeze(1))
            ws = torch.cat([head, ws[:, cut:]], dim=1)
        return ws

    @torch.no_grad()
    def _update_w_avg(self, w: torch.Tensor, idx: torch.Tensor | None) -> None:
        """Exact vectorized form of the sequential per-sample lerp (SPEC 10.5).

        For a class with k samples x_0..x_{k-1} in batch order:
        w_avg <- beta^k w_avg + (1 - beta) sum_j beta^(k-1-j) x_j.
        """
        beta = self.w_avg_beta
        w = w.to(self.w_avg.dtype)
        if idx is None:
            self.w_avg.copy_(w.mean(0) + beta * (self.w_avg - w.mean(0)))
            return
        onehot = (idx[:, None] == torch.arange(self.c_dim, device=idx.device)).to(w.dtype)  # [N, C]; no host sync
        rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # position of each sample within its class
        count = onehot.sum(0)  # [C]
        k = count[idx]  # class size of each sample's class
        coef = (1 - beta) * torch.pow(torch.full_like(k, beta), k - 1 - rank)  # [N]
        decay = torch.pow(torch.full_like(count, beta), count)  # [C]
        self.w_avg.copy_(decay[:, None] * self.w_avg + onehot.t() @ (coef[:, None] * w))


def class_embeddings_from_features(features_NF: torch.Tensor, labels_N: torch.Tensor, c_dim: int,
                                   rows: int = 1000) -> torch.Tensor:
    """The paper's class-table init (decision D3): the mean pooled lite0 feature of each class.

    features_NF: [N, 320] globally pooled tf_efficientnet_lite0 last-stage features of training
    images; labels_N: [N] class indices. Returns [max(rows, c_dim), F]: class means in the
    leading rows; classes without images and the rows past c_dim keep N(0, 1) draws.
    """
    if features_NF.ndim != 2 or labels_N.shape != (features_NF.shape[0],):
        raise ValueError(f"features must be [N, F] and labels [N], got {tuple(features_NF.shape)} and {tuple(labels_N.shape)}")
    table = torch.randn(max(rows, c_dim), features_NF.shape[1], dtype=features_NF.dtype, device=features_NF.device)
    onehot = torch.nn.functional.one_hot(labels_N.long(), c_dim).to(features_NF.dtype)  # [N, C]
    count = onehot.sum(0)
    means = (onehot.t() @ features_NF) / count.clamp(min=1)[:, None]
    table[:c_dim] = torch.where(count[:, None] > 0, means, table[:c_dim])
    return table
