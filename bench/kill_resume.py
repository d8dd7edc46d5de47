"""Kill-and-resume check: a training run is killed with SIGKILL at 10 moments (random times, and while a checkpoint file
is being written) and resumed each time; every resumed run must end with the metrics, history and predictions of the
uninterrupted run, with every file present at the kill complete (atomic writes), and no partial file left after the
resume.

    .venv/bin/python bench/kill_resume.py [--kills 10] [--seed 0] [--out outputs/bench/kill_resume]

Too slow for the test suite (8.4 minutes on 2 CPU cores); it prints one line per kill and exits 1 if any differs.
"""

import argparse, json, random, shutil, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mask_pstage.synth import generate  # noqa: E402

DETERMINISTIC = ["epoch", "train_loss", "val_loss", "val_f1", "val_acc", "lr"]


def args(data, out, cache, **kw):
    # resnet18: its checkpoints (weights + optimizer state, ~90 MB) take long enough to write that a kill can land
    # inside
    base = dict(
        data_dir=data,
        out_dir=out,
        cache_dir=cache,
        model="resnet18",
        pretrained="false",
        img_size="64x48",
        epochs=4,
        batch_size=32,
        n_folds=4,
        fold=1,
        optimizer="sgd",
        lr=0.02,
        threads=2,
        ema="true",
        save_last_k=2,
    )
    base.update(kw)
    return [sys.executable, "-m", "mask_pstage.training", *[f"--{k}={v}" for k, v in base.items()]]


def complete(run: Path) -> list[str]:
    "Files with their final names that cannot be read back whole (there must be none: writes are atomic)."
    bad = []
    for f in run.iterdir() if run.is_dir() else []:
        if f.name.startswith(".") or f.is_dir():
            continue
        try:
            if f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".csv":
                pd.read_csv(f)
            elif f.suffix == ".pt":
                torch.load(f, map_location="cpu", weights_only=False)
        except Exception as e:
            bad.append(f"{f.name} ({type(e).__name__})")
    return bad


def same(a: Path, b: Path) -> list[str]:
    "What differs between two finished runs (timings aside)."
    diff = []
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for k in ("macro_f1", "accuracy", "f1_mask", "f1_gender", "f1_age", "f1_per_class", "best_epoch"):
        if ma.get(k) != mb.get(k):
            diff.append(f"metrics.{k}")
    ha, hb = (pd.read_csv(d / "history.csv") for d in (a, b))
    cols = [c for c in DETERMINISTIC if c in ha]
    if not ha[cols].equals(hb[cols]) and not ((ha[cols] - hb[cols]).abs().max().max() < 1e-6):
        diff.append("history.csv")
    for name in ("oof.csv", "test.csv", "train.csv"):
        pa, pb = pd.read_csv(a / name), pd.read_csv(b / name)
        num = pa.select_dtypes("number").columns
        if pa.shape != pb.shape or (pa[num] - pb[num]).abs().max().max() > 1e-5:
            diff.append(name)
    return diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "kill_resume"))
    a = ap.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    data = generate(out / "data", persons=40, eval_persons=3, seed=3, workers=2, progress=False)
    cache = out / "cache"
    t0 = time.time()
    r = subprocess.run(args(data, out / "full", cache), capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr[-3000:])
    full_s = time.time() - t0
    print(f"uninterrupted run: {full_s:.1f} s (process start included)")
    rng = random.Random(a.seed)
    failures = 0
    for k in range(a.kills):
        run = out / f"kill{k}"
        mode = "checkpoint write" if k % 3 == 2 else "random time"
        proc = subprocess.Popen(args(data, run, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t = time.time()
        if mode == "random time":
            time.sleep(rng.uniform(0.25, 0.95) * full_s)
        else:  # the n-th checkpoint write of the run: kill while its temporary file exists
            want, seen, prev = rng.randint(1, 6), 0, False
            while proc.poll() is None:
                now = any(run.glob(".*.pt.*.tmp")) if run.is_dir() else False
                if now and not prev:
                    seen += 1
                    if seen == want:
                        break
                prev = now
                time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at = time.time() - t
        partial = sorted(p.name for p in run.glob(".*.tmp")) if run.is_dir() else []
        rows = len(pd.read_csv(run / "history.csv")) if (run / "history.csv").exists() else 0
        broken = complete(run)
        finished_before_kill = (run / "metrics.json").exists()
        r = subprocess.run(args(data, run, cache, resume="true"), capture_output=True, text=True)
        leftover = sorted(str(p.relative_to(run)) for p in run.rglob(".*.tmp"))
        diff = ["resume failed: " + r.stderr.strip().splitlines()[-1]] if r.returncode else same(out / "full", run)
        ok = not diff and not broken and not leftover
        failures += not ok
        where = "after the run finished" if finished_before_kill else f"after {rows} finished epoch(s)"
        print(
            f"kill {k}: {mode:16s} at {at:5.1f} s, {where}; partial files at the kill: {partial or 'none'}; "
            f"incomplete final files: {broken or 'none'}; after resume: {'identical' if not diff else diff}, "
            f"leftover partial files: {leftover or 'none'} -> {'OK' if ok else 'FAIL'}"
        )
    print(f"{a.kills - failures} of {a.kills} kills resumed to the uninterrupted result")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
