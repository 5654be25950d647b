"""WaveNet's dilated causal convolution and residual layer, as the paper writes them (plain PyTorch).

WaveNet (arXiv 1609.03499, §2.1 and Fig. 4); docs/conventions.md, "Causal convolution and WaveNet":
    y[t] = b + Σ_{j=0}^{k-1} W[:, :, j] · x[t - (k-1-j)·d]      (zero where the index is negative)
i.e. ``F.conv1d`` of x left-padded with (k-1)·d zeros: the last tap reads the present sample.
Residual layer (eq. 2 with conditioning, Fig. 4):
    h = causalconv(x) + cond;  z = tanh(h[:, :R]) ⊙ σ(h[:, R:])
    x_next = (x + W_res z + b_res) · residual_scale;  skip = W_skip z + b_skip
"""
import torch.nn.functional as F

from .gated import gated_activation
from .masked_conv import bias_alone, has_no_products


def causal_conv1d(x, weight, bias=None, dilation=1):
    if has_no_products(x, weight):
        return bias_alone(x, weight, bias)
    # Taps that reach back T or more read only zeros: leaving them out keeps the padding below T
    # (whatever the dilation: F.pad would allocate (k-1)·d zeros).
    k, t = weight.shape[-1], x.shape[-1]
    taps = min(k, (t - 1) // dilation + 1)
    pad = (taps - 1) * dilation
    y = F.conv1d(F.pad(x, (pad, 0)), weight[..., k - taps:], bias, dilation=dilation)
    if taps < k:  # the left-out taps still multiply their zeros: W_j · 0, NaN in the rows of a non-finite weight
        y = y + (weight[..., :k - taps] * 0).sum((1, 2))[:, None]
    return y


def wavenet_layer(x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond=None,
                  dilation=1, residual_scale=1.0):
    h = causal_conv1d(x, conv_weight, conv_bias, dilation)
    z = gated_activation(h, cond, "tanh")
    x_next = (x + causal_conv1d(z, res_weight[:, :, None], res_bias)) * residual_scale
    skip = causal_conv1d(z, skip_weight[:, :, None], skip_bias)
    return x_next, skip
