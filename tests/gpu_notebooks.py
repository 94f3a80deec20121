"""Run chapters as plain Python on a machine without Jupyter (the lent GPU machine), one fresh process each.

Usage: python3 tests/gpu_notebooks.py [--timeout S] nbs/05_shampoo.ipynb ...

The GPU machine has torch, matplotlib, sympy and scikit-learn but no Jupyter, and no network. This runner
reads a notebook's JSON, skips its first code cell (the install cell: optbook comes from PYTHONPATH here)
and the `#| eval: false` cells, and executes the other code cells in order in one namespace, with the
Agg backend and `display` (also IPython's) as a no-op. For each chapter it prints the wall time, the device that
`optbook.default_device()` picked, and the peak CUDA memory the chapter allocated: the evidence that the
chapter ran its work on the GPU. A failing cell prints its index and traceback, and the exit status is 1.
"""
import codeop, json, os, re, subprocess, sys, time

DIRECTIVE = re.compile(r"^\s*#\s*\|\s*([\w-]+)\s*:?\s*(.*)$")


def code_cells(path):
    "The code cells the book executes, minus the install cell: (index, source) pairs."
    nb = json.load(open(path, encoding="utf-8"))
    cells = [(i, "".join(c["source"])) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    out = []
    for i, src in cells[1:]:
        flags = {m.group(1): m.group(2).strip() for m in map(DIRECTIVE.match, src.splitlines()) if m}
        if flags.get("eval", "").lower() == "false": continue
        out.append((i, src))
    return out


def run_one(path):
    "Execute one notebook in this process (called in a child process by main)."
    import traceback
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    ns = {"__name__": "__main__", "display": lambda *a, **k: None}
    try:   # outside a kernel IPython's display() prints the object: a page's bundle holds all of plotly.js (5 MB)
        import IPython.display
        IPython.display.display = ns["display"]
    except ImportError:
        pass
    # like IPython's compiler, codeop's keeps the __future__ imports of earlier cells in force for the later ones
    # (`from __future__ import annotations` in an export cell; plain compile() would forget it at the next cell)
    compile_cell = codeop.Compile()
    start = time.time()
    for i, src in code_cells(path):
        try:
            exec(compile_cell(src, f"{os.path.basename(path)}[cell {i}]", "exec"), ns)
        except Exception:
            print(f"FAILED {path} cell {i}:\n{src[:400]}\n{traceback.format_exc()}", flush=True)
            return 1
        plt.close("all")
    import optbook
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    print(f"OK {path}: {time.time() - start:.1f} s, device {optbook.default_device()}, "
          f"peak CUDA memory {peak:.1f} MiB", flush=True)
    return 0


def main(argv):
    timeout = 300
    if argv[:1] == ["--timeout"]: timeout, argv = float(argv[1]), argv[2:]
    if argv[:1] == ["--one"]:
        status = run_one(argv[1])
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(status)  # skip interpreter teardown: on the H100 one chapter printed OK and then hung on exit
    status = 0
    for path in argv:
        try:
            rc = subprocess.run([sys.executable, __file__, "--one", path], timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            print(f"TIMEOUT {path} after {timeout} s", flush=True); rc = 1
        status |= rc != 0
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
