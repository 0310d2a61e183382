"""The math of the quality metrics (SPEC 7), on features: Fréchet distance, KID, precision/recall.

Pure functions of feature matrices (feat_NF) and moments (mu_F, sigma_FF); engine/metrics.py runs
the protocol (generation, detectors, dataset statistics, ranks) around them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
import torch


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64, the matrix square root by
    scipy.linalg.sqrtm, real part (StyleGAN / TTUR). Takes numpy arrays or tensors."""
    mu1, mu2, sigma1, sigma2 = (np.asarray(torch.as_tensor(t).cpu(), dtype=np.float64) for t in (mu1, mu2, sigma1, sigma2))
    with warnings.catch_warnings():  # rank-deficient covariances (few samples): the real part is the answer
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        s = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.real(np.square(mu1 - mu2).sum() + np.trace(sigma1 + sigma2 - 2 * s)))


def feature_moments(feat_NF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) in float64; sigma is the biased covariance (divided by N), as StyleGAN."""
    x = feat_NF.double()
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / x.shape[0]


def fid_from_features(mu_r: torch.Tensor, sigma_r: torch.Tensor, feat_g: torch.Tensor) -> float:
    """FID of generated features against real moments.

    With fewer generated samples than features, S_g = B^T B (B = centred features / sqrt(N)) and
    the nonzero eigenvalues of S_r S_g are those of B S_r B^T (N x N, symmetric PSD), so
    Tr (S_r S_g)^(1/2) is computed exactly from that small matrix (cheap and real, where sqrtm of a
    singular product is slow and ill-conditioned). Otherwise frechet_distance (sqrtm).
    """
    mu_g, sigma_g = feature_moments(feat_g)
    n, f = feat_g.shape
    if n >= f:
        return frechet_distance(mu_r, sigma_r, mu_g, sigma_g)
    mu_r, sigma_r = mu_r.to(mu_g.device, torch.float64), sigma_r.to(mu_g.device, torch.float64)
    b = (feat_g.double() - mu_g) / math.sqrt(n)
    tr_sqrt = torch.linalg.eigvalsh(b @ sigma_r @ b.T).clamp(min=0).sqrt().sum()
    return float((mu_r - mu_g).square().sum() + sigma_r.trace() + sigma_g.trace() - 2 * tr_sqrt)


def kid(feat_r: torch.Tensor, feat_g: torch.Tensor, *, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0, dtype=torch.float64) -> float:
    """Kernel Inception Distance: unbiased MMD² with k(x, y) = (x.y / d + 1)³ averaged over subsets.

    As StyleGAN: m = min(N_r, N_g, max_subset_size); each subset draws m generated then m real
    rows without replacement (here from np.random.RandomState(seed)); computed in `dtype`.
    """
    n = feat_r.shape[1]
    m = min(feat_r.shape[0], feat_g.shape[0], max_subset_size)
    rng = np.random.RandomState(seed)
    t = 0.0
    for _ in range(num_subsets):
        x = feat_g[torch.as_tensor(rng.choice(feat_g.shape[0], m, replace=False), device=feat_g.device)].to(dtype)
        y = feat_r[torch.as_tensor(rng.choice(feat_r.shape[0], m, replace=False), device=feat_r.device)].to(dtype)
        y = y.to(x.device)
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += float((a.sum() - a.diagonal().sum()) / (m - 1) - b.sum() * 2 / m)
    return t / num_subsets / m


def _kth_radii(manifold: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance of each manifold point to its k-th nearest other point (the (k+1)-th smallest,
    itself included), computed block by block, keeping the k+1 smallest per row."""
    radii = []
    for rows in manifold.split(block):
        best = None
        for cols in manifold.split(block):
            d = torch.cdist(rows, cols)
            best = d if best is None else torch.cat([best, d], dim=1)
            best = best.topk(min(k + 1, best.shape[1]), dim=1, largest=False).values
        radii.append(best.max(dim=1).values)
    return torch.cat(radii)


def _coverage(probes: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor, block: int) -> float:
    """Fraction of probes inside the union of the balls (manifold point, its radius)."""
    inside = []
    for rows in probes.split(block):
        hit = torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device)
        for cols, r in zip(manifold.split(block), radii.split(block)):
            hit |= (torch.cdist(rows, cols) <= r).any(dim=1)
        inside.append(hit)
    return float(torch.cat(inside).double().mean())


def precision_recall(feat_r: torch.Tensor, feat_g: torch.Tensor, *, k: int = 3, block: int = 10_000,
                     dtype=torch.float32) -> tuple[float, float]:
    """Improved precision and recall (StyleGAN's manifold estimate with k-NN radii).

    precision: fraction of generated points within the k-NN radius of some real point;
    recall: fraction of real points within the k-NN radius of some generated point. Distances by
    torch.cdist on feat_g's device in `dtype`, in blocks of `block` rows and columns.
    """
    device = feat_g.device
    real, gen = feat_r.to(device, dtype), feat_g.to(device, dtype)
    precision = _coverage(gen, real, _kth_radii(real, k, block), block)
    recall = _coverage(real, gen, _kth_radii(gen, k, block), block)
    return precision, recall
