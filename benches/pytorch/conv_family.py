"""C9 and C10 with PyTorch, beside ../shared/pytorch-reference/conv.py (which has
C1-C8): C9 a depthwise 3x3 convolution (groups = channels), C10 a 3-D transposed
convolution (2x2x2 filter, stride 2). Same timing, JSON rows and file prefix
(pytorch-conv-family.json) as conv.py, so `cargo xtask bench --against-pytorch DIR`
matches them.

    PT_RESULTS=DIR python3 benches/pytorch/conv_family.py --threads 1,2

GFLOP/s: one forward = 2*N*C_out*(C_in/groups)*prod(filter)*prod(output) FLOPs of
the convolution (for C10, of the convolution it is the adjoint of); forward+backward
counts 3x that."""
import argparse
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get(
    "PYTORCH_REFERENCE", os.path.join(HERE, "..", "..", "..", "shared", "pytorch-reference")))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import meta, time_fn, write_json  # noqa: E402

# id, N, C_in, input, C_out, filter, stride, padding, groups, transposed
# (for C10, C_in and C_out are the transposed layer's: 32 -> 16)
CASES = [
    ("C9", 32, 128, (56, 56), 128, (3, 3), 1, 1, 128, False),
    ("C10", 4, 32, (16, 16, 16), 16, (2, 2, 2), 2, 0, 1, True),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--min-rep-s", type=float, default=0.3)
    ap.add_argument("--only", default="", help="comma-separated ids, e.g. C9")
    args = ap.parse_args()
    torch.manual_seed(0)
    results = []
    for t in [int(x) for x in args.threads.split(",")]:
        torch.set_num_threads(t)
        for cid, n, cin, size, cout, filt, stride, pad, groups, transposed in CASES:
            if args.only and cid not in args.only.split(","):
                continue
            d = len(size)
            x = torch.randn(n, cin, *size, dtype=torch.float32)
            if transposed:
                out_size = tuple((m - 1) * stride - 2 * pad + f for m, f in zip(size, filt))
                w = torch.randn(cin, cout // groups, *filt, dtype=torch.float32) * 0.1
                op = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[d]
                # The adjoint convolution maps out_size (cout channels) to size (cin).
                flops_fwd = 2.0 * n * cin * (cout // groups) * math.prod(filt) * math.prod(size)
            else:
                out_size = tuple((m + 2 * pad - f) // stride + 1 for m, f in zip(size, filt))
                w = torch.randn(cout, cin // groups, *filt, dtype=torch.float32) * 0.1
                op = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
                flops_fwd = 2.0 * n * cout * (cin // groups) * math.prod(filt) * math.prod(out_size)
            b = torch.randn(cout, dtype=torch.float32) * 0.1
            g = torch.randn(n, cout, *out_size, dtype=torch.float32)

            def run(xx, ww, bb):
                return op(xx, ww, bb, stride=stride, padding=pad, groups=groups)

            def fwd():
                with torch.no_grad():
                    return run(x, w, b)

            y = fwd()
            assert tuple(y.shape) == (n, cout) + out_size, (y.shape, out_size)
            xr, wr, br = (v.clone().requires_grad_(True) for v in (x, w, b))

            def fwdbwd():
                xr.grad = wr.grad = br.grad = None
                run(xr, wr, br).backward(g)

            rf = time_fn(fwd, min_rep_s=args.min_rep_s, reps=args.reps)
            rb = time_fn(fwdbwd, min_rep_s=args.min_rep_s, reps=args.reps)
            assert xr.grad is not None and wr.grad is not None and br.grad is not None
            row = {
                "id": cid, "dims": d, "N": n, "C_in": cin, "input": list(size),
                "C_out": cout, "filter": list(filt), "stride": stride, "padding": pad,
                "groups": groups, "transposed": transposed,
                "output": list(out_size), "threads": t,
                "flops_fwd": flops_fwd,
                "fwd_gflops": flops_fwd / rf["median_s"] / 1e9,
                "fwd_median_s": rf["median_s"],
                "fwdbwd_gflops": 3 * flops_fwd / rb["median_s"] / 1e9,
                "fwdbwd_median_s": rb["median_s"],
                "fwd_timing": rf, "fwdbwd_timing": rb,
            }
            results.append(row)
            print(f"{cid} t={t}: fwd {rf['median_s']*1e3:.2f} ms ({rf['min_s']*1e3:.2f}-{rf['max_s']*1e3:.2f}); "
                  f"fwd+bwd {rb['median_s']*1e3:.2f} ms ({rb['min_s']*1e3:.2f}-{rb['max_s']*1e3:.2f})",
                  flush=True)
    out = meta(threads=None)
    out["threads"] = [int(x) for x in args.threads.split(",")]
    out["workload"] = "C9, C10 (depthwise and transposed convolutions)"
    out["results"] = results
    write_json("pytorch-conv-family.json", out)


if __name__ == "__main__":
    main()
