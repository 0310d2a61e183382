"""Fast ops for StyleGAN-XL: Triton kernels, ATen fallbacks and plain-PyTorch references.

Each op has one public function with an ``impl`` switch ('triton', 'cuda', 'ref', or None for
the best path on the tensor's device); see kernels/_dispatch.py.
"""

from kernels.bias_act import bias_act
from kernels.filtered_lrelu import filtered_lrelu
from kernels.modulated_conv import modulated_conv2d
from kernels.upfirdn2d import upfirdn2d

__all__ = ["bias_act", "filtered_lrelu", "modulated_conv2d", "upfirdn2d"]
