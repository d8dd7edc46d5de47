"""The pipeline killed with SIGKILL at random moments, then run again: does every rerun end with the submission of an
uninterrupted run?

One uninterrupted run of `python -m mask_pstage.pipeline` (each step in a papermill kernel, as users run it) on a small
synthetic set gives the reference and its duration T. Then, --kills times: a fresh run folder, the same command, a
SIGKILL of the pipeline process after a random time in (0, T) (seeded), a wait until its kernel has ended (the
kernel notices that its parent is gone), and the same command again to the end. Printed per kill: the moment, the
step that was running, how the rerun went, whether submission.csv is byte-identical to the reference and the largest
difference in test_probs.csv.

    .venv/bin/python bench/pipeline_kills.py --kills 10 --out outputs/bench_kills

Run it alone: on a 2-core machine another job changes where the kills land.
"""

import argparse, json, random, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd

from mask_pstage.core import lock_holder
from mask_pstage.runs import PipelineRun
from mask_pstage.synth import generate

ROOT = Path(__file__).resolve().parents[1]


def command(data, run, cache):
    train = dict(model="mobilenetv3_small_050", pretrained="false", img_size="64x48", epochs=3, cache_dir=cache)
    return [sys.executable, "-m", "mask_pstage.pipeline", "--data", str(data), "--run", str(run), "--folds", "2",
            *[a for k, v in train.items() for a in ("--train", f"{k}={v}")]]  # fmt: skip


def start(cmd, log):
    return subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "a"), stderr=subprocess.STDOUT)


def running_step(log) -> str:
    "The step the pipeline had started last (from its log)."
    started = [ln.split("]")[0][1:] for ln in Path(log).read_text().splitlines() if ln.startswith("[")]
    return started[-1] if started else "(before the first step)"


def wait_unlocked(run: Path, timeout: float = 60) -> float:
    "Seconds until no process holds the run folder or a fold folder (a killed pipeline's kernel ends on its own)."
    t0 = time.time()
    folders = [run, *sorted((run / "train").glob("fold*"))]
    while any(lock_holder(f) for f in folders):
        if time.time() - t0 > timeout:
            raise SystemExit(f"a process still holds {[lock_holder(f) for f in folders]} after {timeout} s")
        time.sleep(0.1)
    return time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/bench_kills")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = generate(out / "data", persons=24, eval_persons=3, seed=1, workers=2, progress=False)
    cache = out / "cache"
    ref = out / "reference"
    t0 = time.time()
    if start(command(data, ref, cache), out / "reference.log").wait():
        raise SystemExit(f"the reference run failed: {out / 'reference.log'}")
    total = time.time() - t0
    print(f"reference: {total:.0f} s, steps {json.dumps(PipelineRun(ref).summary['steps_seconds'])}", flush=True)
    ref_sub = (ref / "ensemble" / "submission.csv").read_bytes()
    ref_probs = pd.read_csv(ref / "ensemble" / "test_probs.csv")
    rng, rows = random.Random(a.seed), []
    for i in range(a.kills):
        run, log = out / f"kill{i}", out / f"kill{i}.log"
        at = rng.uniform(0.02, 0.98) * total
        p = start(command(data, run, cache), log)
        try:
            p.wait(timeout=at)
            finished_first = True
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            finished_first = False
        step = running_step(log)
        orphan_s = wait_unlocked(run)
        t1 = time.time()
        rc = start(command(data, run, cache), log).wait()
        probs_diff, same = float("nan"), False
        if rc == 0:
            sub = run / "ensemble" / "submission.csv"
            same = sub.read_bytes() == ref_sub
            probs = pd.read_csv(run / "ensemble" / "test_probs.csv")
            probs_diff = float((probs.drop(columns="ImageID") - ref_probs.drop(columns="ImageID")).abs().max().max())
        rows.append(
            dict(
                kill=i,
                at_s=round(at, 1),
                step=step if not finished_first else "(finished before the kill)",
                kernel_gone_s=round(orphan_s, 1),
                rerun_rc=rc,
                rerun_s=round(time.time() - t1, 1),
                submission_identical=same,
                max_prob_diff=probs_diff,
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "kills.csv", index=False)
    print(table.to_string(index=False))
    ok = int(((table.rerun_rc == 0) & table.submission_identical).sum())
    print(f"{ok} of {len(table)} reruns ended with the reference submission (reference run {total:.0f} s)")


if __name__ == "__main__":
    main()
