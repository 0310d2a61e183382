"""Decision D3: the class table G's mapping and D's conditional heads start from.

The original ships a fixed 1000x320 table; the paper describes its rows as per-class averages of
tf_efficientnet_lite0 features. This engine recomputes it from the training data: every image
(up to `per_class` per class, the first ones in dataset order) goes through the lite0 trunk at
224² with its ImageNet normalization, the last stage (320 channels, stride 32) is average-pooled,
and the features are averaged per class (model.mapping.class_embeddings_from_features). Rows
past c_dim, and classes without images, keep N(0, 1) draws.

`class_init="auto"` computes it when the feature networks are pretrained and falls back to the
N(0, 1) table with random feature networks (random lite0 features carry no class semantics);
"lite0" forces it, "random" skips it. Every rank computes the same table (same images, same
seed), so no broadcast is needed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.feature_networks import BACKBONES, LITE0, create_timm_model
from model.mapping import class_embeddings_from_features

ROWS = 1000  # rows of the original's table (G keeps max(ROWS, c_dim))


def pick_images(labels: np.ndarray, c_dim: int, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` images of every class, in dataset order."""
    picked = [np.flatnonzero(labels == k)[:per_class] for k in range(c_dim)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def lite0_features(images_NCHW: torch.Tensor, trunk: torch.nn.Module) -> torch.Tensor:
    """uint8 images -> [N, 320] pooled last-stage lite0 features (fp32)."""
    info = BACKBONES[LITE0]
    x = images_NCHW.float() / 255
    x = (x - torch.tensor(info["mean"], device=x.device).view(1, 3, 1, 1)) / torch.tensor(
        info["std"], device=x.device).view(1, 3, 1, 1)
    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    return trunk(x)[-1].float().mean(dim=(2, 3))


def class_table_from_data(dataset, weights, device: torch.device, *, per_class: int = 100, batch: int = 64,
                          seed: int = 0, progress: bool = True) -> torch.Tensor:
    """[max(1000, c_dim), 320] table of per-class mean lite0 features of `dataset` (see module)."""
    c_dim = dataset.c_dim
    if not c_dim:
        raise ValueError("the class table needs a conditional dataset (c_dim > 0)")
    trunk = create_timm_model(LITE0, weights, features_only=True, out_indices=(4,)).to(device).eval()
    idx = pick_images(np.asarray(dataset.labels[: dataset.num_raw]), c_dim, per_class)
    feats = []
    for start in tqdm(range(0, len(idx), batch), desc="class table (lite0 means)", unit="batch", disable=not progress):
        imgs = torch.stack([torch.from_numpy(np.ascontiguousarray(dataset.get(int(i))[0])) for i in idx[start:start + batch]])
        feats.append(lite0_features(imgs.to(device), trunk).cpu())
    features = torch.cat(feats) if feats else torch.zeros(0, 320)
    labels = torch.as_tensor(np.asarray(dataset.labels)[idx], dtype=torch.int64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return class_embeddings_from_features(features, labels, c_dim, rows=ROWS)
