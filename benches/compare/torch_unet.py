#!/usr/bin/env python3
"""Side-by-side timing of the reference UNet in PyTorch eager mode on the CPU.

Builds, in PyTorch, the same network as `score_net::Unet` with
`UnetConfig::default()` (crates/score-net/src/unet.rs, layers.rs, embed.rs)
and times it the way `benches/benches/unet.rs` times the Rust CPU backend:

* input `x [32, 1, 28, 28]` ~ N(0, 1), time input `10 + 30 i` for sample `i`;
* `forward`: inference forward pass, dropout off (`model.eval()`, under
  `torch.no_grad()`, i.e. what sampling pays; the Rust bench also runs with
  dropout off);
* `forward_backward`: training forward pass (dropout 0.1 on) and the backward
  pass of `loss = sum(out * dy)` for a fixed `dy ~ N(0, 1)` to every parameter
  *and* to the input image, exactly the Rust bench's `net.forward(.., Some(key))`
  followed by `net.backward(.., &dy, grads)` (which returns `dx` and fills the
  parameter gradients);
* float32, eager mode (no `torch.compile`, no TorchScript), NCHW layout,
  `torch.set_num_threads(--threads)` (the Rust side uses rayon's pool, one
  thread per core); warm-up runs, then the median of `--runs` runs.

How the PyTorch modules map to the Rust layers (DDPM++ / NCSN++ family):

* time embedding: sinusoidal of the time input with `nf = 32` features
  (`[sin(x f_j), cos(x f_j)]`, `f_j = 10000^(-j / 15)`, embed.rs::sinusoidal),
  then `Linear(32, 128)` -> SiLU -> `Linear(128, 128)` (`temb.0`, `temb.1`);
* `conv_in`: 3x3 conv 1 -> 32;
* down path, levels with multipliers (1, 2, 2) at 28, 14, 7 pixels: two
  `ResBlock`s per level (attention after each at 7x7), then a 3x3 stride-2
  conv (`Resample::Conv`) except after the last level; every output is pushed
  on the skip stack (conv_in's output first);
* middle: ResBlock -> AttnBlock -> ResBlock at 64 channels;
* up path, levels in reverse: three ResBlocks per level (num_res_blocks + 1),
  each on `cat([h, skip.pop()], channels)` (h first), attention after each at
  7x7, then nearest 2x up-sampling + 3x3 conv except after the last level;
* output: GroupNorm -> SiLU -> 3x3 conv 32 -> 1.
* `ResBlock` (`ResnetBlockDDPMpp`): `h = conv1(silu(GN1(x))) + Linear(silu(temb))`
  broadcast over pixels, `h = conv2(dropout(silu(GN2(h))))`,
  `out = (skip(x) + h) / sqrt(2)` with `skip` a 1x1 conv when the channel count
  changes (identity otherwise);
* `AttnBlock` (`AttnBlockpp`, one head): `n = GN(x)` as tokens `[N, HW, C]`,
  `q, k, v = Linear(n)`, `a = softmax(q k^T / sqrt(C)) v`,
  `out = (x + Linear(a) as image) / sqrt(2)`;
* GroupNorm: `min(C / 4, 32)` groups (reduced to a divisor of C), eps 1e-6;
* initialisation: DDPM++ `default_init` (variance scaling, fan_avg, uniform),
  scale 1e-10 for each residual branch's last layer, zero biases (only the
  statistics match the Rust initialisation, not the values; it does not affect
  the timing).

The parameter count must equal the Rust one (1,623,169 for the reference
configuration, as `benches/benches/unet.rs` prints it; `cargo xtask bench
--compare-torch` passes the count the Rust bench printed with
`--expect-params`). Prints one JSON object on stdout, progress on stderr.

Run directly: `python3 benches/compare/torch_unet.py --threads 2`; `--profile`
adds torch.profiler's per-op table of three training steps.
"""

import argparse
import json
import math
import statistics
import sys
import time
import warnings

# torch warns at import when NumPy is absent; the script does not use NumPy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:
    print("PyTorch not installed: pip install torch", file=sys.stderr)
    sys.exit(3)

# The Rust reference configuration (UnetConfig::default(), image size 28).
IN_CHANNELS = 1
IMAGE_SIZE = 28
NF = 32
CHANNEL_MULT = (1, 2, 2)
NUM_RES_BLOCKS = 2
ATTN_RESOLUTIONS = (7,)
DROPOUT = 0.1
SKIP_RESCALE = True
BATCH = 32
# Parameter count of the Rust network (benches/benches/unet.rs prints it).
RUST_PARAMS = 1_623_169


def group_count(c):
    """DDPM++'s group count: min(c / 4, 32), at least 1, a divisor of c (layers.rs)."""
    g = min(max(c // 4, 1), 32)
    while c % g != 0:
        g -= 1
    return g


def default_init_(weight, scale=1.0):
    """DDPM++ default_init: U(-b, b), b = sqrt(3 scale / fan_avg) (params.rs)."""
    shape = weight.shape
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_out = shape[0] * receptive
    fan_in = (shape[1] if len(shape) > 1 else 1) * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def conv(cin, cout, k=3, stride=1, scale=1.0):
    """Conv with bias, padding k // 2 (layers.rs::Conv)."""
    m = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
    default_init_(m.weight, scale)
    nn.init.zeros_(m.bias)
    return m


def linear(cin, cout, scale=1.0):
    """Affine layer on the last dimension (layers.rs::Linear)."""
    m = nn.Linear(cin, cout)
    default_init_(m.weight, scale)
    nn.init.zeros_(m.bias)
    return m


def group_norm(c):
    """GroupNorm with DDPM++'s group count and eps (layers.rs::GroupNorm)."""
    return nn.GroupNorm(group_count(c), c, eps=1e-6)


RES_SCALE = 1.0 / math.sqrt(2.0) if SKIP_RESCALE else 1.0


class ResBlock(nn.Module):
    """layers.rs::ResBlock (ResnetBlockDDPMpp)."""

    def __init__(self, cin, cout, temb_dim, dropout):
        super().__init__()
        self.gn1 = group_norm(cin)
        self.conv1 = conv(cin, cout)
        self.temb = linear(temb_dim, cout)
        self.gn2 = group_norm(cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = conv(cout, cout, scale=1e-10)
        self.skip = conv(cin, cout, k=1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.gn1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.gn2(h))))
        skip = self.skip(x) if self.skip is not None else x
        return (skip + h) * RES_SCALE


class AttnBlock(nn.Module):
    """layers.rs::AttnBlock (AttnBlockpp, one head)."""

    def __init__(self, c):
        super().__init__()
        self.gn = group_norm(c)
        self.q = linear(c, c)
        self.k = linear(c, c)
        self.v = linear(c, c)
        self.out = linear(c, c, scale=1e-10)

    def forward(self, x):
        n, c, h, w = x.shape
        tok = self.gn(x).reshape(n, c, h * w).transpose(1, 2)  # [N, HW, C]
        q, k, v = self.q(tok), self.k(tok), self.v(tok)
        p = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(c), dim=-1)
        o = self.out(torch.bmm(p, v)).transpose(1, 2).reshape(n, c, h, w)
        return (x + o) * RES_SCALE


class ResAttn(nn.Module):
    """A residual block, optionally followed by attention (unet.rs::ResAttn)."""

    def __init__(self, cin, cout, with_attn, temb_dim, dropout):
        super().__init__()
        self.res = ResBlock(cin, cout, temb_dim, dropout)
        self.attn = AttnBlock(cout) if with_attn else None

    def forward(self, x, temb):
        y = self.res(x, temb)
        return self.attn(y) if self.attn is not None else y


class Down(nn.Module):
    """3x3 stride-2 convolution (Resample::Conv)."""

    def __init__(self, c):
        super().__init__()
        self.conv = conv(c, c, stride=2)

    def forward(self, x):
        return self.conv(x)


class Up(nn.Module):
    """Nearest 2x up-sampling, then a 3x3 convolution (Resample::Conv)."""

    def __init__(self, c):
        super().__init__()
        self.conv = conv(c, c)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def sinusoidal(x, dim, max_positions=10_000.0):
    """embed.rs::sinusoidal: [sin(x f_j), cos(x f_j)], f_j = max^(-j / (h - 1))."""
    half = dim // 2
    step = math.log(max_positions) / (half - 1) if half > 1 else 0.0
    f = torch.exp(-step * torch.arange(half, dtype=torch.float64))
    a = x.to(torch.float64)[:, None] * f[None, :]
    e = torch.cat([torch.sin(a), torch.cos(a)], dim=1).to(torch.float32)
    if dim % 2 == 1:
        e = F.pad(e, (0, 1))
    return e


class Unet(nn.Module):
    """unet.rs::Unet with the reference configuration."""

    def __init__(self):
        super().__init__()
        nf, temb_dim = NF, 4 * NF
        self.temb0 = linear(nf, temb_dim)
        self.temb1 = linear(temb_dim, temb_dim)
        self.conv_in = conv(IN_CHANNELS, nf)
        down, chans, c, res = [], [nf], nf, IMAGE_SIZE
        for lvl, mult in enumerate(CHANNEL_MULT):
            cout = nf * mult
            for _ in range(NUM_RES_BLOCKS):
                down.append(ResAttn(c, cout, res in ATTN_RESOLUTIONS, temb_dim, DROPOUT))
                c = cout
                chans.append(c)
            if lvl + 1 < len(CHANNEL_MULT):
                down.append(Down(c))
                chans.append(c)
                res //= 2
        self.down = nn.ModuleList(down)
        self.mid0 = ResBlock(c, c, temb_dim, DROPOUT)
        self.mid_attn = AttnBlock(c)
        self.mid1 = ResBlock(c, c, temb_dim, DROPOUT)
        up = []
        for lvl in reversed(range(len(CHANNEL_MULT))):
            cout = nf * CHANNEL_MULT[lvl]
            for _ in range(NUM_RES_BLOCKS + 1):
                skip_c = chans.pop()
                up.append(ResAttn(c + skip_c, cout, res in ATTN_RESOLUTIONS, temb_dim, DROPOUT))
                c = cout
            if lvl > 0:
                up.append(Up(c))
                res *= 2
        assert not chans, "skip stack not exhausted"
        self.up = nn.ModuleList(up)
        self.gn_out = group_norm(c)
        self.conv_out = conv(c, IN_CHANNELS, scale=1e-10)

    def forward(self, x, time_input):
        emb = sinusoidal(time_input, NF)
        temb = self.temb1(F.silu(self.temb0(emb)))
        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            h = m(h, temb) if isinstance(m, ResAttn) else m(h)
            hs.append(h)
        h = self.mid1(self.mid_attn(self.mid0(h, temb)), temb)
        for m in self.up:
            if isinstance(m, ResAttn):
                h = m(torch.cat([h, hs.pop()], dim=1), temb)
            else:
                h = m(h)
        return self.conv_out(F.silu(self.gn_out(h)))


def median_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up runs per bench (default 3)")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per bench (default 10)")
    ap.add_argument(
        "--expect-params",
        type=int,
        default=RUST_PARAMS,
        help=f"parameter count of the Rust network (default {RUST_PARAMS})",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also print torch.profiler's per-op table (forward + backward) on stderr",
    )
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    model = Unet()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: torch {n_params}, rust {args.expect_params}", file=sys.stderr)
    if n_params != args.expect_params:
        print("parameter counts differ: the architectures do not match", file=sys.stderr)
        sys.exit(2)

    x = torch.randn(BATCH, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    dy = torch.randn(BATCH, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    t = torch.tensor([10.0 + 30.0 * i for i in range(BATCH)], dtype=torch.float64)

    def forward():
        with torch.no_grad():
            return model(x, t)

    def forward_grad():
        return model(x, t)

    xg = x.clone().requires_grad_(True)

    def forward_backward():
        for p in model.parameters():
            p.grad = None
        xg.grad = None
        out = model(xg, t)
        # d/dθ sum(out * dy) = the VJP with dy, as the Rust backward computes it.
        out.backward(dy)
        return xg.grad

    model.eval()
    print("timing forward (eval, no_grad) ...", file=sys.stderr)
    fwd, fwd_all = median_ms(forward, args.warmup, args.runs)
    print("timing forward (eval, autograd recording) ...", file=sys.stderr)
    fwd_g, fwd_g_all = median_ms(forward_grad, args.warmup, args.runs)
    model.train()
    print("timing forward + backward (train, dropout on) ...", file=sys.stderr)
    fb, fb_all = median_ms(forward_backward, args.warmup, args.runs)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                forward_backward()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        print(table, file=sys.stderr)

    print(
        json.dumps(
            {
                "torch_version": torch.__version__,
                "threads": torch.get_num_threads(),
                "params": n_params,
                "batch": BATCH,
                "forward_ms": fwd,
                "forward_autograd_ms": fwd_g,
                "forward_backward_ms": fb,
                "runs": {
                    "forward_ms": fwd_all,
                    "forward_autograd_ms": fwd_g_all,
                    "forward_backward_ms": fb_all,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
