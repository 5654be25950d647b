"""Gated activation, as the papers write it (plain PyTorch, any dtype).

Gated PixelCNN (arXiv 1606.05328, eq. 2) and WaveNet (arXiv 1609.03499, eq. 2):
    y = tanh(W_f * x + V_f h) ⊙ σ(W_g * x + V_g h)
PixelCNN++ (arXiv 1701.05517, gated_resnet): y = a ⊙ σ(b).
The filter is the first half of the channels, the gate the second; conditioning is added first.
"""
import torch


def gated_activation(x, cond=None, activation="tanh", dim=1):
    h = x if cond is None else x + cond
    a, b = h.chunk(2, dim=dim)
    filt = torch.tanh(a) if activation == "tanh" else a
    return filt * torch.sigmoid(b)
