"""Classifier guidance for conditional superres stages (SPEC 5.6).

A frozen, eval-mode timm deit_small_distilled_patch16_224 classifies the generated image (before
blur and DiffAugment); the loss is the batch-mean cross-entropy against argmax(c). In eval mode
timm's distilled ViT returns the average of its class-token and distillation-token heads. The
caller multiplies by cls_weight (and builds this module only when cls_weight > 0).

Legend: img_NCHW generated images in [-1, 1]; c_NC one-hot labels; logits_NK classifier logits
(K = 1000 ImageNet classes).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from model.feature_networks import DEIT_S, IMAGENET_MEAN, IMAGENET_STD, VIT_SIZE, FrozenModule, create_timm_model


class ClassifierGuidance(FrozenModule):
    """Cross-entropy of a frozen ImageNet classifier on generated images.

    Args:
        weights: "pretrained" (Hugging Face cache or hub), "random" (explicit opt-in to a randomly
            initialized classifier: tests, CPU quick start), or a path to a local weights file.
        name: timm classifier (default deit_small_distilled_patch16_224, SPEC 5.6).

    Frozen (no parameter requires grad) and always in eval mode; gradients reach the image.
    """

    def __init__(self, weights: str | os.PathLike = "pretrained", name: str = DEIT_S):
        super().__init__()
        self.name = name
        self.classifier = create_timm_model(name, weights)
        self.num_classes = self.classifier.num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def logits(self, img_NCHW: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> classifier logits [N, num_classes].

        (x + 1) / 2, ImageNet normalization, bilinear resize to 224 (align_corners=False).
        """
        if img_NCHW.ndim != 4 or img_NCHW.shape[1] != 3:
            raise ValueError(f"img must be [N, 3, H, W] RGB in [-1, 1], got shape {tuple(img_NCHW.shape)}")
        x_NCHW = (img_NCHW + 1) / 2
        x_NCHW = (x_NCHW - self.mean.to(x_NCHW.dtype)) / self.std.to(x_NCHW.dtype)
        if x_NCHW.shape[-2:] != (VIT_SIZE, VIT_SIZE):
            x_NCHW = F.interpolate(x_NCHW, size=(VIT_SIZE, VIT_SIZE), mode="bilinear", align_corners=False)
        return self.classifier(x_NCHW)

    def forward(self, img_NCHW: torch.Tensor, c_NC: torch.Tensor) -> torch.Tensor:
        """Batch-mean cross-entropy of the classifier against argmax(c) (a 0-d float32 tensor).

        Args:
            img_NCHW: [N, 3, H, W] generated images in [-1, 1] (unblurred, unaugmented).
            c_NC: one-hot labels [N, C] with C <= num_classes.
        """
        if c_NC.ndim != 2 or c_NC.shape[0] != img_NCHW.shape[0] or not 0 < c_NC.shape[1] <= self.num_classes:
            raise ValueError(f"c must be one-hot [N={img_NCHW.shape[0]}, C <= {self.num_classes}], "
                             f"got shape {tuple(c_NC.shape)}")
        logits_NK = self.logits(img_NCHW)
        return F.cross_entropy(logits_NK.float(), c_NC.argmax(dim=1))

    def loss(self, img_NCHW: torch.Tensor, c_NC: torch.Tensor) -> torch.Tensor:
        """Same as calling the module: the guidance loss (before cls_weight)."""
        return self(img_NCHW, c_NC)
