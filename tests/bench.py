"""`make bench`: the step time of every elementwise optimizer, optbook's paths against its peers', on one device.

Not a pytest file (timings are not tests). One process; all implementations of one optimizer are built at once and
timed in interleaved rounds (a shuffled order each round, so a drift in the machine's load favours none); the time
is the median over rounds of each round's median. Compilation (optbook's fused kernels, `torch.compile` of
torch.optim's step) is paid in the untimed warm-up steps and reported apart. The roofline of an optimizer is the
bytes a single-pass step must move per parameter (read θ, g and each state tensor, write θ and each state tensor)
divided by the in-place bandwidth (`a.add_(b)`, 12 bytes per element), measured once in each of the optimizer's
rounds, at a random place among its implementations (the median over the rounds). State bytes per
parameter are measured from each optimizer's state and set against the algorithm's minimum; temporary bytes per
parameter are the peak that one more, untimed, step allocates beyond what it held before (`optbook.fused.step_peak_bytes`:
torch's allocator, through the profiler on the CPU). Freed host memory stays in
the process (`optbook.fused.steady_heap`, glibc), so that no implementation pays page faults for temporaries whose
memory the implementation timed before it gave back to the system.

The machinery is `optbook.fused.run_bench` (the book's appendix, nbs/94_perf.ipynb, runs a small version of it when
there is no CSV). Writes <out>/bench.csv and <out>/bench.png (default _build/bench/), which the appendix reads.

  python tests/bench.py                       # CPU, 20M parameters in 50 tensors, every optimizer (several minutes)
  python tests/bench.py --quick               # 2M parameters, 2 rounds (about a minute)
  python tests/bench.py --device cuda --quick # on a GPU
  python tests/bench.py --heavyball-shape --optimizers AdamW   # only 32 tensors of 2048x2048, heavyball's published shape

Unless --quick or --no-heavyball-shape, a second run follows the first: AdamW at heavyball's published shape (32
tensors of 2048x2048), optbook's fused path against torch's fused kernel, torch.compile of torch's step and heavyball's
compiled AdamW, so that the figures can be set beside heavyball's own. Its rows go to the same CSV (column `shape`).
"""
import argparse, os, shutil, statistics, sys, time

import torch

from optbook import fused as F


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--params", type=float, default=20e6, help="total number of parameters (default 20M)")
    ap.add_argument("--tensors", type=int, default=50, help="number of parameter tensors, of distinct sizes")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per implementation and round")
    ap.add_argument("--warm", type=int, default=3, help="untimed steps first (state creation, compilation)")
    ap.add_argument("--optimizers", default=",".join(F.BENCH_SPECS), help="comma-separated names")
    ap.add_argument("--only", default="", help="comma-separated substrings: keep implementations whose name has one")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of torch.optim's step (its warm-up is long)")
    ap.add_argument("--quick", action="store_true", help="2 rounds; on the CPU at most 2M parameters and 3 repeats, on CUDA 10 repeats")
    ap.add_argument("--heavyball-shape", action="store_true", help="only 32 tensors of 2048x2048 (heavyball's published shape)")
    ap.add_argument("--no-heavyball-shape", action="store_true", help="skip the second run, AdamW at heavyball's published shape")
    ap.add_argument("--no-muon", action="store_true", help="skip Muon's Newton-Schulz against torch.linalg.svd")
    ap.add_argument("--out", default="_build/bench", help="folder of bench.csv and bench.png")
    ap.add_argument("--warm-cache", action="store_true",
                    help="keep Inductor's usual disk cache (warm-up then times only what it lacks); by default the run "
                         "starts from an empty cache of its own, so that each warm-up is a cold compile")
    args = ap.parse_args(argv)
    if not args.warm_cache:   # read by Inductor at its first compile, which comes later in this process
        cache = os.path.abspath(os.path.join(args.out, "compile-cache"))
        shutil.rmtree(cache, ignore_errors=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"], os.environ["TRITON_CACHE_DIR"] = cache, os.path.join(cache, "triton")
    device = torch.device(args.device)
    if args.quick:   # on a GPU 20M parameters take well under a millisecond a step: keep the size, time more steps
        args.rounds, args.repeats = 2, (10 if device.type == "cuda" else 3)
        if device.type == "cpu": args.params = min(args.params, 2e6)
    HB_SHAPE, HB_TENSORS = (2048, 2048), 32
    shape = HB_SHAPE if args.heavyball_shape else None
    if shape: args.tensors = HB_TENSORS
    if device.type == "cuda" and not torch.cuda.is_available(): sys.exit("bench: --device cuda, but there is no CUDA device")
    peers = []
    for module, peer in (("lion_pytorch", "lion-pytorch"), ("pytorch_optimizer", "pytorch-optimizer"), ("heavyball", "heavyball")):
        try: __import__(module); peers.append(peer)
        except ImportError: print(f"bench: {peer} is not installed; not compared (pip install {peer})")
    names = [n for n in args.optimizers.split(",") if n]
    n = HB_TENSORS * HB_SHAPE[0] * HB_SHAPE[1] if shape else int(args.params)
    def run(names, n, tensors, shape, only):
        print(f"bench: {n / 1e6:.1f}M fp32 parameters in {tensors} tensors "
              f"{'of ' + 'x'.join(map(str, shape)) if shape else 'of distinct sizes'} on {device}, {args.rounds} rounds "
              f"of {args.repeats} steps", flush=True)
        return F.run_bench(names, n, tensors, device, shape=shape, rounds=args.rounds, repeats=args.repeats,
                           warm=args.warm, compile_torch=not args.no_compile, peers=tuple(peers), only=only,
                           compile_cache="warm" if args.warm_cache else "cold",
                           log=lambda s: print("  " + s, flush=True))
    t0 = time.perf_counter()
    rows = run(names, n, args.tensors, shape, tuple(s for s in args.only.split(",") if s))
    if not (shape or args.quick or args.no_heavyball_shape) and "AdamW" in names:
        rows += run(["AdamW"], HB_TENSORS * HB_SHAPE[0] * HB_SHAPE[1], HB_TENSORS, HB_SHAPE,
                    ("optbook fused", "torch fused", "torch compiled step", "heavyball"))
    r0 = rows[0]
    bws = [r["bandwidth_gbs"] for r in rows]
    print(f"\n{r0['machine']}, {r0['when']}; in-place bandwidth {min(bws)}-{max(bws)} GB/s (measured in each optimizer's rounds); ran {time.perf_counter() - t0:.0f} s; "
          f"compile caches {'warm (--warm-cache)' if args.warm_cache else 'empty at the start (cold compiles)'}; "
          f"Inductor's one-time start-up, paid before the timings: {r0['startup_s']:.1f} s; "
          f"freed host memory {'kept in the process (steady_heap)' if r0['heap'] == 'kept' else 'returned to the system as usual (not glibc)'}")
    print(f"{'optimizer':9} {'implementation':20} {'ms/step':>8} {'spread':>7} {'x roof':>6} {'warm-up s':>9} {'state B/param':>13} {'temp B/param':>12}")
    for name, shp in dict.fromkeys((r["optimizer"], r["shape"]) for r in rows):
        mine = [r for r in rows if r["optimizer"] == name and r["shape"] == shp]
        if shp != rows[0]["shape"]: print(f"{name}, {mine[0]['tensors']} tensors of {shp} ({mine[0]['params'] / 1e6:.1f}M parameters):")
        for r in mine:
            print(f"{name:9} {r['impl']:20} {r['ms']:8.2f} {r['spread_ms']:7.2f} {r['ratio_roofline']:6.2f} {r['warmup_s']:9.2f} "
                  f"{r['state_bytes']:8.1f} ({r['min_state_bytes']}) {r['temp_bytes']:12.2f}")
        fused = next((r for r in mine if r["impl"] == "optbook fused"), None)
        peers_rows = [r for r in mine if not r["impl"].startswith("optbook")]
        if fused and peers_rows:
            best = min(peers_rows, key=lambda r: r["ms"])
            print(f"{'':9} optbook fused / fastest peer ({best['impl']}): {fused['ms'] / best['ms']:.2f}; "
                  f"roofline {fused['roofline_ms']:.2f} ms ({fused['bandwidth_gbs']} GB/s x {fused['bytes_per_param']} B/param)")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "bench.csv")
    F.write_csv(rows, path)
    print(f"\nwrote {path}")
    if not args.no_muon:
        ns = F.muon_rows(device)
        F.write_csv(ns, os.path.join(args.out, "muon.csv"))
        for r in ns:
            print(f"Muon Newton-Schulz (bf16) {r['shape']}: {r['ns_ms']:.2f} ms against svd {r['svd_ms']:.1f} ms; "
                  f"||O^T O - I||/sqrt(n) = {r['orth_err']:.3f}, ||O - UV^T||/sqrt(n) = {r['dist_to_polar']:.3f}")
    try:
        import matplotlib; matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        ax = F.plot_bench(rows, title=f"{r0['device']}: {r0['machine']}, {r0['when']}")
        ax.figure.savefig(os.path.join(args.out, "bench.png"), dpi=120, bbox_inches="tight"); plt.close(ax.figure)
        print(f"wrote {os.path.join(args.out, 'bench.png')}")
    except ImportError as err: print(f"no plot ({err})")
    if not args.warm_cache: shutil.rmtree(os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)   # its job is done


if __name__ == "__main__":
    main()
