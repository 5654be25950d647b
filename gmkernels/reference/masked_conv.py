"""Masked and shifted 2D convolutions as users run them today (plain PyTorch, any dtype).

PixelCNN (arXiv 1601.06759, §3.4): a k×k kernel, k odd, multiplied by a mask that keeps the taps
before the centre in raster order (rows above, then the centre row to the left) and the centre tap
for mask B only; with RGB channel groups (contiguous thirds of the channels), the centre tap joins
output group g to input groups < g (mask A) or <= g (mask B).
PixelCNN++ (arXiv 1701.05517): dense kh×kw convolutions of the input padded on top, and on both
sides ("down") or on the left ("down_right"), so that output (i, j) sees no later row.
"""
import torch
import torch.nn.functional as F


def conv_mask(kernel_size, mask_type, in_channels, out_channels, color_groups=1):
    """The (out_channels, in_channels, k, k) float mask: 1 where a weight is used, 0 where it is masked."""
    centre = kernel_size // 2
    mask = torch.zeros(out_channels, in_channels, kernel_size, kernel_size)
    mask[:, :, :centre, :] = 1
    mask[:, :, centre, :centre] = 1
    out_group = torch.arange(out_channels) // (out_channels // color_groups)
    in_group = torch.arange(in_channels) // (in_channels // color_groups)
    if mask_type == "A":
        mask[:, :, centre, centre] = (in_group[None, :] < out_group[:, None]).float()
    else:
        mask[:, :, centre, centre] = (in_group[None, :] <= out_group[:, None]).float()
    return mask


def has_no_products(x, weight):
    """Whether every output of the convolution of x (N, Cin, *spatial) with weight (Cout, Cin, *kernel) is
    a sum of no products (or there is no output): no input channel, no output channel or no position.
    F.conv1d/2d reject these sizes or, with Cin = 0, return Cin channels."""
    return 0 in x.shape[1:] or weight.shape[0] == 0


def bias_alone(x, weight, bias):
    """The output (N, Cout, *spatial) of such a convolution: the bias (zero without one), still a function of
    x and weight (an einsum over their empty dimensions: zero gradients)."""
    y = torch.einsum("oi,ni...->no...", weight.flatten(2).sum(2), x)
    return y if bias is None else y + bias.view(-1, *(1,) * (x.dim() - 2))


def masked_conv2d(x, weight, bias=None, mask_type="B", color_groups=1):
    """The sum over the live weights only: a masked weight is never read (a NaN there does not reach y) and
    the inputs only masked taps see are never multiplied (an inf there does not become 0 · inf = NaN)."""
    if has_no_products(x, weight):
        return bias_alone(x, weight, bias)
    k = weight.shape[-1]
    mask = conv_mask(k, mask_type, weight.shape[1], weight.shape[0], color_groups).to(weight.device, torch.bool)
    y = raster_prefix_conv2d(x, torch.where(mask, weight, 0))
    if mask_type == "B" or color_groups > 1:
        y = y + centre_tap_conv2d(x, weight[:, :, k // 2, k // 2], mask_type, color_groups)
    return y if bias is None else y + bias.view(-1, 1, 1)


def raster_prefix_conv2d(x, weight):
    """The k x k kernel's taps before the centre in raster order (the rows above it, then the centre row
    left of it), zero padding: what every mask keeps off the centre. Zero when k = 1."""
    c = weight.shape[-1] // 2
    y = x.new_zeros(x.shape[0], weight.shape[0], *x.shape[2:])
    if c == 0:
        return y
    above = F.pad(x, (c, c, c, -1))         # output row i reads input rows i - c .. i - 1
    left = F.pad(x, (c, -1, 0, 0))          # output column j reads input columns j - c .. j - 1
    return y + F.conv2d(above, weight[:, :, :c, :]) + F.conv2d(left, weight[:, :, c:c + 1, :c])


def centre_tap_conv2d(x, centre, mask_type, color_groups):
    """The centre tap (Cout, Cin): output group g reads input groups < g (mask A) or <= g (mask B), and
    only those (docs/conventions.md, "Colour groups")."""
    out_per_group, in_per_group = centre.shape[0] // color_groups, centre.shape[1] // color_groups
    parts = []
    for group in range(color_groups):
        seen = (group + (mask_type == "B")) * in_per_group
        weight = centre[group * out_per_group:(group + 1) * out_per_group, :seen, None, None]
        parts.append(F.conv2d(x[:, :seen], weight) if seen else
                     x.new_zeros(x.shape[0], out_per_group, *x.shape[2:]))
    return torch.cat(parts, dim=1)


def shifted_conv2d(x, weight, bias=None, shift="down"):
    if has_no_products(x, weight):
        return bias_alone(x, weight, bias)
    kh, kw = weight.shape[-2:]
    left, right = ((kw - 1) // 2, (kw - 1) // 2) if shift == "down" else (kw - 1, 0)
    return F.conv2d(F.pad(x, (left, right, kh - 1, 0)), weight, bias)
