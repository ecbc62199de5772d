#!/usr/bin/env python3
"""Sample quality against cost for every sampler, on a trained model.

For each sampler and budget of score evaluations (NFE), draws `--n` samples
with `scoresde sample --npy`, scores them with `scoresde frechet` (Fréchet
distance to the run's training images in pixel space and, with
`--classifier`, in the classifier's pooled-feature space at t = 1e-3) and
records the wall time of the sampling command. Prints a Markdown table (and
writes the raw rows as JSON with `--json-out`).

    cargo build -p cli --release
    python3 benches/compare/quality_vs_nfe.py --bin target/release/scoresde \\
        --ckpt runs/digits-vp --classifier runs/digits-clf --n 512

Rows: PC (reverse diffusion + Langevin, 2 NFE per level), Euler-Maruyama
(the reverse SDE on the uniform grid), the adaptive RK45 probability-flow ODE
at several tolerances (NFE as it comes), DDIM (eta 0), Heun (EDM grid, 2 NFE
per step) and DPM-Solver++(2M) (log-SNR grid); NFE in {10, 20, 50, 100,
1000} where the sampler allows it. The floor is the distance of the held-out
test images themselves (fewer images, so a little more bias).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

NFES = [10, 20, 50, 100, 1000]


def rows():
    """(name, NFE label, sampler flags) for every row of the table."""
    out = []
    for nfe in NFES:
        out.append(("PC (RD + Langevin)", nfe, ["--sampler", "pc", "--steps", str(nfe // 2)]))
        out.append(("Euler-Maruyama", nfe, ["--sampler", "reverse-sde", "--steps", str(nfe)]))
        out.append(("DDIM (eta 0)", nfe, ["--sampler", "ddim", "--steps", str(nfe)]))
        out.append(("Heun (EDM grid)", nfe, ["--sampler", "heun", "--steps", str(nfe // 2)]))
        out.append(("DPM-Solver++(2M)", nfe, ["--sampler", "dpm-solver", "--steps", str(nfe)]))
    for tol in ["1e-2", "1e-3", "1e-4", "1e-5"]:
        out.append((f"RK45 ODE (tol {tol})", None, ["--sampler", "ode", "--rtol", tol, "--atol", tol]))
    return out


def run_json(cmd):
    """The command's JSON summary, or (None, its last error line)."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [l for l in done.stderr.splitlines() if l.startswith("error:") and "XDG" not in l]
        return None, (lines[-1] if lines else done.stderr.strip()[-200:])
    return json.loads(done.stdout), None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default="target/release/scoresde")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--classifier")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help="comma-separated NFE budgets to run (default all)")
    p.add_argument("--json-out")
    a = p.parse_args()
    only = {int(x) for x in a.only.split(",")} if a.only else None
    tmp = tempfile.mkdtemp(prefix="quality-")
    results = []
    for name, nfe, flags in rows():
        if only is not None and nfe is not None and nfe not in only:
            continue
        npy = os.path.join(tmp, "s.npy")
        cmd = [a.bin, "sample", "--json", "--seed", str(a.seed), "--ckpt", a.ckpt,
               "-n", str(a.n), "--batch-size", str(a.n), "--out", os.path.join(tmp, "s.png"),
               "--npy", npy] + flags
        t0 = time.time()
        s, err = run_json(cmd)
        secs = time.time() - t0
        if s is None:
            # e.g. PC with fewer levels than VP's DDPM chain allows.
            row = {"sampler": name, "nfe": nfe, "error": err}
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            continue
        f_cmd = [a.bin, "frechet", "--json", "--ckpt", a.ckpt, "--npy", npy]
        if a.classifier:
            f_cmd += ["--classifier", a.classifier]
        f, err = run_json(f_cmd)
        if f is None:
            sys.exit(f"frechet failed: {err}")
        row = {"sampler": name, "nfe": s["nfe"], "seconds": secs, "sample_seconds": s["seconds"],
               "fd_pixels": f["frechet_pixels"], "fd_features": f["frechet_features"],
               "config": s["sampler"]}
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print("| sampler | NFE | FD pixels | FD classifier features | sampling time (s) |")
    print("|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['sampler']} | {r['nfe']} | not run: {r['error']} | | |")
            continue
        feat = "-" if r["fd_features"] is None else f"{r['fd_features']:.3f}"
        print(f"| {r['sampler']} | {r['nfe']} | {r['fd_pixels']:.3f} | {feat} | {r['sample_seconds']:.2f} |")
    if a.json_out:
        with open(a.json_out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
