// CPU kernels of the causal convolution and the WaveNet layer: the dilated convolution is k GEMMs,
// one per tap, on shifted views of x (tap j adds W_j · x[:, 0 : T - shift_j] into y[:, shift_j : T]),
// so the zero padding is never stored (where a tap reads it, W_j · 0 is added: NaN in the rows of a
// non-finite weight, as a GEMM over the padded input gives). float16 and bfloat16 compute in float32 and
// round once.
// The fused layer runs per (sample, block of time steps): h = conv + bias + cond into a float block,
// the gate of gmk/gated.h in place (vectorised, GMK_CPU_CLONES), then both 1x1s as GEMMs on z.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "gmk/causal_conv.h"
#include "gmk/cpu_math.h"

namespace gmk::causal_conv {
namespace {

// Input elements a half x is widened by at a time (16 MiB of float32).
constexpr int64_t kWidenedElements = int64_t{1} << 22;
// Time steps per task of the fused layer: z for R = 128 is 256 KB of float32, in L2.
constexpr int64_t kLayerBlock = 512;
// The least work of one parallel task of the layer (about 0.1-0.3 ms on one core).
constexpr int64_t kTaskMultiplyAdds = int64_t{1} << 20;

at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// z[c, :] = tanh(h[c, :]) σ(h[c + R, :]) for the rows c < R of h (2R, n), both contiguous.
template <typename T>
GMK_CPU_INLINE void gate_loop(const T* h, T* z, int64_t rows, int64_t n) {
  for (int64_t c = 0; c < rows; ++c) {
    const T* a = h + c * n;
    const T* b = h + (c + rows) * n;
    T* out = z + c * n;
    for (int64_t t = 0; t < n; ++t) out[t] = gated::forward<true, cpu::Math>(a[t], b[t]);
  }
}
GMK_CPU_CLONES void gate_rows(const float* h, float* z, int64_t rows, int64_t n) { gate_loop(h, z, rows, n); }
void gate_rows(const double* h, double* z, int64_t rows, int64_t n) { gate_loop(h, z, rows, n); }

// The gate's derivative for the rows c < R of h (2R, n), in place: h[c] <- grad_a, h[c + R] <- grad_b
// for the gradient grad_z (R, n) of z; also z = tanh(a) σ(b) (R, n). All contiguous.
template <typename T>
GMK_CPU_INLINE void gate_backward_loop(T* h, const T* grad_z, T* z, int64_t rows, int64_t n) {
  for (int64_t c = 0; c < rows; ++c) {
    T* a = h + c * n;
    T* b = h + (c + rows) * n;
    const T* g = grad_z + c * n;
    T* out = z + c * n;
    for (int64_t t = 0; t < n; ++t) {
      out[t] = gated::forward<true, cpu::Math>(a[t], b[t]);
      gated::backward<true, cpu::Math>(a[t], b[t], g[t], a[t], b[t]);
    }
  }
}
GMK_CPU_CLONES void gate_backward_rows(float* h, const float* grad_z, float* z, int64_t rows, int64_t n) {
  gate_backward_loop(h, grad_z, z, rows, n);
}
void gate_backward_rows(double* h, const double* grad_z, double* z, int64_t rows, int64_t n) {
  gate_backward_loop(h, grad_z, z, rows, n);
}

// (k, rows, cols) = weight (rows, cols, k) in the compute type, one contiguous matrix per tap.
at::Tensor taps_first(const at::Tensor& weight, at::ScalarType type) {
  return weight.to(type).permute({2, 0, 1}).contiguous();
}

// W_j · 0, what tap j adds where it reads the zeros before the start, as a (rows, 1) column: 0, or NaN in
// the rows holding an inf or NaN weight (0 · inf), as the other backends' GEMMs over the zero-padded input
// and F.conv1d give; undefined when every weight of the tap is finite (nothing to add).
at::Tensor padding_term(const at::Tensor& w_j) {
  const at::Tensor term = w_j.mul(0).sum(1, /*keepdim=*/true);
  return at::isnan(term).any().item<bool>() ? term : at::Tensor();
}

}  // namespace

at::Tensor conv_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    int64_t dilation) {
  const at::ScalarType type = compute_type(x);
  const int64_t n = x.size(0), t = x.size(2), in_channels = x.size(1), out_channels = weight.size(0);
  const int64_t k = weight.size(2);
  const at::Tensor w = taps_first(weight, type);
  std::vector<at::Tensor> padding;  // per tap: padding_term(w[j])
  for (int64_t j = 0; j < k; ++j) {
    padding.push_back(tap_shift(j, k, dilation, t) > 0 ? padding_term(w[j]) : at::Tensor());
  }
  // A half x is widened, and y accumulated in float, a run of time steps at a time (all at once took a float
  // copy of x and a float y: 21 GB for 2^31 bfloat16 elements); float and double x in one run.
  const bool widen = x.scalar_type() != type;
  const int64_t run =
      widen ? std::max<int64_t>(1, kWidenedElements / std::max<int64_t>(1, n * std::max(in_channels, out_channels)))
            : t;
  at::Tensor y = widen && run < t ? at::empty({n, out_channels, t}, x.options()) : at::Tensor();
  for (int64_t t0 = 0; t0 < t; t0 += run) {
    const int64_t len = std::min(run, t - t0);
    // A new tensor, filled: expand(...).contiguous() of the bias would be the bias itself when N = T = 1.
    at::Tensor acc = at::empty({n, out_channels, len}, x.options().dtype(type));
    if (bias.has_value()) {
      acc.copy_(bias->view({1, out_channels, 1}));
    } else {
      acc.zero_();
    }
    for (int64_t j = 0; j < k; ++j) {  // columns t0 + i with t0 + i - shift >= 0 read x; the others, zeros
      const int64_t shift = tap_shift(j, k, dilation, t), first = std::max(t0, shift);
      if (first > t0 && padding[j].defined()) acc.narrow(2, 0, std::min(first, t0 + len) - t0).add_(padding[j]);
      if (first >= t0 + len) continue;
      acc.narrow(2, first - t0, t0 + len - first)
          .baddbmm_(w[j].expand({n, out_channels, in_channels}), x.narrow(2, first - shift, t0 + len - first).to(type));
    }
    if (!y.defined()) return acc.to(x.scalar_type());  // the only run
    y.narrow(2, t0, len).copy_(acc);
  }
  return y.defined() ? y : at::empty({n, out_channels, t}, x.options());  // t = 0
}

Grads conv_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, int64_t dilation,
                        std::array<bool, 3> output_mask) {
  const at::ScalarType type = compute_type(x);
  const int64_t n = x.size(0), in_channels = x.size(1), t = x.size(2), out_channels = weight.size(0);
  const int64_t k = weight.size(2);
  const auto [want_x, want_weight, want_bias] = output_mask;
  const at::Tensor g = grad_out.to(type).contiguous();
  at::Tensor grad_x, grad_weight, grad_bias;
  if (want_x) {  // grad_x[:, 0 : T - shift_j] += W_jᵀ grad_out[:, shift_j : T]
    const at::Tensor wt = weight.to(type).permute({2, 1, 0}).contiguous();  // (k, Cin, Cout)
    grad_x = at::zeros({n, in_channels, t}, g.options());
    for (int64_t j = 0; j < k; ++j) {
      const int64_t shift = tap_shift(j, k, dilation, t);
      if (shift >= t) continue;
      grad_x.narrow(2, 0, t - shift)
          .baddbmm_(wt[j].expand({n, in_channels, out_channels}), g.narrow(2, shift, t - shift));
    }
    grad_x = grad_x.to(x.scalar_type());
  }
  if (want_weight) {  // grad_W_j = Σ_n grad_out[n, :, shift_j : T] x[n, :, 0 : T - shift_j]ᵀ
    const at::Tensor xc = x.to(type).contiguous();
    at::Tensor gw = at::zeros({k, out_channels, in_channels}, g.options());
    for (int64_t j = 0; j < k; ++j) {
      const int64_t shift = tap_shift(j, k, dilation, t);
      if (shift >= t) continue;
      const at::Tensor gs = g.narrow(2, shift, t - shift), xs = xc.narrow(2, 0, t - shift);
      for (int64_t b = 0; b < n; ++b) gw[j].addmm_(gs[b], xs[b].t());
    }
    grad_weight = gw.permute({1, 2, 0}).contiguous().to(weight.scalar_type());
  }
  if (want_bias) grad_bias = g.sum({0, 2}).to(weight.scalar_type());
  return {grad_x, grad_weight, grad_bias};
}

namespace {

// The layer's operands in the compute type, and the blocks of time steps its tasks take.
struct Layer {
  at::ScalarType type;
  int64_t n, r, t, s, k, dilation, blocks;
  at::Tensor x, w, rw, sw, cb, cond;  // x (N, R, T) as given (widened a block at a time), w (k, 2R, R),
                                      // rw (R, R), sw (S, R), cb (2R, 1)
  std::vector<at::Tensor> padding;    // per tap: padding_term(w[j])

  Layer(const at::Tensor& x_in, const at::Tensor& conv_weight, const std::optional<at::Tensor>& conv_bias,
        const at::Tensor& res_weight, const at::Tensor& skip_weight, const std::optional<at::Tensor>& cond_in,
        int64_t dilation_in)
      : type(compute_type(x_in)), n(x_in.size(0)), r(x_in.size(1)), t(x_in.size(2)), s(skip_weight.size(0)),
        k(conv_weight.size(2)), dilation(dilation_in), blocks((t + kLayerBlock - 1) / kLayerBlock),
        x(x_in), w(taps_first(conv_weight, type)), rw(res_weight.to(type).contiguous()),
        sw(skip_weight.to(type).contiguous()), cb(column(conv_bias, 2 * r)),
        cond(cond_in.has_value() ? *cond_in : at::Tensor()) {
    for (int64_t j = 0; j < k; ++j) {
      padding.push_back(tap_shift(j, k, dilation, t) > 0 ? padding_term(w[j]) : at::Tensor());
    }
  }

  // Read only: it may be the caller's bias itself.
  at::Tensor column(const std::optional<at::Tensor>& bias, int64_t rows) const {
    return bias.has_value() ? bias->to(type).view({rows, 1}) : at::zeros({rows, 1}, x.options().dtype(type));
  }

  // Runs body(sample, t0, len) over every block of every sample, in parallel: a task takes at least
  // kTaskMultiplyAdds of the layer's multiply-adds, so small layers run on the calling thread (on a busy
  // 2-core machine each parallel region can wait a scheduler time slice for its second thread).
  template <typename Body>
  void for_each_block(Body body) const {
    const int64_t per_block = std::min(t, kLayerBlock) * r * (2 * r * k + r + s);
    const int64_t grain = std::max<int64_t>(1, kTaskMultiplyAdds / std::max<int64_t>(1, per_block));
    at::parallel_for(0, n * blocks, grain, [&](int64_t begin, int64_t end) {
      // Worker threads do not inherit the caller's dispatch state: stay below autograd there too.
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / blocks, t0 = (task % blocks) * kLayerBlock;
        body(b, t0, std::min(kLayerBlock, t - t0));
      }
    });
  }

  // h = conv(x) + conv_bias + cond for time steps [t0, t0 + len) of sample b: (2R, len).
  at::Tensor gate_inputs(int64_t b, int64_t t0, int64_t len) const {
    at::Tensor h = at::empty({2 * r, len}, x.options().dtype(type)).copy_(cb);  // never cb itself (len = 1)
    for (int64_t j = 0; j < k; ++j) {  // columns t0 + i with t0 + i - shift >= 0
      const int64_t shift = tap_shift(j, k, dilation, t), first = std::max(t0, shift);
      if (first > t0 && padding[j].defined()) h.narrow(1, 0, std::min(first, t0 + len) - t0).add_(padding[j]);
      if (first >= t0 + len) continue;
      h.narrow(1, first - t0, t0 + len - first).addmm_(w[j], x[b].narrow(1, first - shift, t0 + len - first).to(type));
    }
    if (cond.defined()) h.add_(cond[b].narrow(1, t0, len));
    return h;
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> layer_cpu(const at::Tensor& x, const at::Tensor& conv_weight,
                                             const std::optional<at::Tensor>& conv_bias, const at::Tensor& res_weight,
                                             const std::optional<at::Tensor>& res_bias, const at::Tensor& skip_weight,
                                             const std::optional<at::Tensor>& skip_bias,
                                             const std::optional<at::Tensor>& cond, int64_t dilation,
                                             double residual_scale) {
  const Layer layer(x, conv_weight, conv_bias, res_weight, skip_weight, cond, dilation);
  const at::Tensor rb = layer.column(res_bias, layer.r), sb = layer.column(skip_bias, layer.s);
  at::Tensor x_next = at::empty({layer.n, layer.r, layer.t}, x.options());
  at::Tensor skip = at::empty({layer.n, layer.s, layer.t}, x.options());
  layer.for_each_block([&](int64_t b, int64_t t0, int64_t len) {
    const at::Tensor h = layer.gate_inputs(b, t0, len);
    at::Tensor z = at::empty({layer.r, len}, h.options());
    AT_DISPATCH_FLOATING_TYPES(layer.type, "wavenet_layer", [&] {
      gate_rows(h.const_data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), layer.r, len);
    });
    const at::Tensor x_block = layer.x[b].narrow(1, t0, len).to(layer.type);
    x_next[b].narrow(1, t0, len).copy_(at::addmm(x_block + rb, layer.rw, z).mul_(residual_scale));
    skip[b].narrow(1, t0, len).copy_(at::addmm(sb, layer.sw, z));
  });
  return {x_next, skip};
}

LayerGrads layer_backward_cpu(const at::Tensor& grad_x_next, const at::Tensor& grad_skip, const at::Tensor& x,
                              const at::Tensor& conv_weight, const std::optional<at::Tensor>& conv_bias,
                              const at::Tensor& res_weight, const at::Tensor& skip_weight,
                              const std::optional<at::Tensor>& cond, int64_t dilation, double residual_scale,
                              std::array<bool, 8> output_mask) {
  const Layer layer(x, conv_weight, conv_bias, res_weight, skip_weight, cond, dilation);
  const int64_t n = layer.n, r = layer.r, t = layer.t;
  const at::Tensor g_res = grad_x_next.to(layer.type).contiguous(), g_skip = grad_skip.to(layer.type).contiguous();
  // Per block: h again, grad_z = scale W_resᵀ g_res + W_skipᵀ g_skip (two GEMMs), then the gate's
  // derivative (gmk/gated.h) into grad_h and z, kept whole for the GEMMs over (N, T) below.
  at::Tensor grad_h = at::empty({n, 2 * r, t}, g_res.options()), z = at::empty({n, r, t}, g_res.options());
  const at::Tensor rw_t = layer.rw.t(), sw_t = layer.sw.t();
  layer.for_each_block([&](int64_t b, int64_t t0, int64_t len) {
    at::Tensor h = layer.gate_inputs(b, t0, len);
    at::Tensor grad_z = at::mm(rw_t, g_res[b].narrow(1, t0, len));
    grad_z.mul_(residual_scale).addmm_(sw_t, g_skip[b].narrow(1, t0, len));
    at::Tensor z_block = at::empty({r, len}, h.options());
    AT_DISPATCH_FLOATING_TYPES(layer.type, "wavenet_layer_backward", [&] {
      gate_backward_rows(h.data_ptr<scalar_t>(), grad_z.const_data_ptr<scalar_t>(), z_block.data_ptr<scalar_t>(),
                         r, len);
    });
    grad_h[b].narrow(1, t0, len).copy_(h);
    z[b].narrow(1, t0, len).copy_(z_block);
  });
  const auto [want_x, want_w, want_b, want_rw, want_rb, want_sw, want_sb, want_cond] = output_mask;
  const at::ScalarType dtype = x.scalar_type();
  LayerGrads grads;
  auto& [grad_x, grad_w, grad_b, grad_rw, grad_rb, grad_sw, grad_sb, grad_cond] = grads;
  if (want_x || want_w) {
    const auto [gx, gw, _] = conv_backward_cpu(grad_h, layer.x, conv_weight.to(layer.type), dilation,
                                               {want_x, want_w, false});
    if (want_x) grad_x = gx.add_(g_res, residual_scale).to(dtype);
    if (want_w) grad_w = gw.to(dtype);
  }
  if (want_b && conv_bias.has_value()) grad_b = grad_h.sum({0, 2}).to(dtype);
  const auto outer = [&](const at::Tensor& g) { return at::bmm(g, z.transpose(1, 2)).sum(0); };
  if (want_rw) grad_rw = outer(g_res).mul_(residual_scale).to(dtype);
  if (want_rb) grad_rb = g_res.sum({0, 2}).mul_(residual_scale).to(dtype);
  if (want_sw) grad_sw = outer(g_skip).to(dtype);
  if (want_sb) grad_sb = g_skip.sum({0, 2}).to(dtype);
  if (want_cond && cond.has_value()) grad_cond = grad_h.to(dtype);
  return grads;
}

}  // namespace gmk::causal_conv
