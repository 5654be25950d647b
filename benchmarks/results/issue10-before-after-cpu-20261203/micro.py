"""Per-call thread time of small CPU ops (Python overhead dominates): min over 7 blocks of 300 calls."""
import sys, time, torch, gmkernels as gmk
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randn(8, 12, 16, 16, requires_grad=True)
ls = torch.zeros(12, requires_grad=True); b = torch.zeros(12, requires_grad=True)
g = torch.randn(8, 24, 16, 16, requires_grad=True)
h = torch.randn(8, 12, 16, 16)
w = torch.linalg.qr(torch.randn(12, 12))[0].requires_grad_()
def actnorm():
    y, ld = gmk.actnorm(x, ls, b); (y.sum() + ld.sum()).backward()
def gated():
    gmk.gated_activation(g).sum().backward()
def invconv():
    y, ld = gmk.invertible_conv1x1(x, w); (y.sum() + ld.sum()).backward()
def actnorm_fwd():
    with torch.no_grad(): gmk.actnorm(x, ls, b)
def gated_fwd():
    with torch.no_grad(): gmk.gated_activation(g)
cases = dict(actnorm=actnorm, gated=gated, invconv=invconv, actnorm_fwd=actnorm_fwd, gated_fwd=gated_fwd)
for name, f in cases.items():
    for _ in range(50): f()
    best = min((lambda t0: (sum(f() or 0 for _ in range(300)), time.thread_time() - t0)[1])(time.thread_time()) for _ in range(7))
    print(f"{sys.argv[1]} {name} {best / 300 * 1e6:.1f} us")
