"""Faults in the middle of a run: a second writer on a run folder, SIGTERM, a full disk, damaged state on resume,
and the pipeline killed inside a training step and inside a non-training step. Each runs the real command line on
a small synthetic set and checks what the user sees and what is left on disk."""

import json, shutil, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest
import torch

from inprocess import train_here

from mask_pstage.core import lock_holder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mask_pstage.synth import generate

    return generate(
        tmp_path_factory.mktemp("data") / "syn", persons=24, eval_persons=2, seed=3, workers=2, progress=False
    )


def args(data, out, cache, **kw):
    base = dict(
        data_dir=data,
        out_dir=out,
        cache_dir=cache,
        model="mobilenetv3_small_050",
        pretrained="false",
        img_size="64x48",
        epochs=2,
        batch_size=16,
        n_folds=3,
        fold=0,
        optimizer="sgd",
        lr=0.05,
        scheduler="none",  # runs may be extended on resume
        threads=2,
        predict_train="false",
    )
    base.update(kw)
    return [a for k, v in base.items() for a in (f"--{k}", str(v))]


TRAINING = [sys.executable, "-m", "mask_pstage.training"]


def train_cli(*a):
    r = subprocess.run([*TRAINING, *a], capture_output=True, text=True, cwd=ROOT)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    return r


def wait_for(condition, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow  # second test tier (make test-slow)
def test_a_second_training_into_a_busy_run_folder_stops_at_once(data, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    # the first run is long enough to be still running whatever the machine (it is stopped below)
    first = subprocess.Popen([*TRAINING, *args(data, out, cache, epochs=500, lr=0.05)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    wait_for(lambda: lock_holder(out) is not None, "the first run's lock")
    second = train_cli(*args(data, out, cache, epochs=2, lr=0.001))
    assert first.poll() is None, first.communicate()[1][-3000:]  # the second ran while the first was writing
    assert second.returncode == 1, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: run folder {out} is being written by process {first.pid}")
    wait_for(lambda: (out / "last.pt").exists(), "the first run's first epoch")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM, first.communicate()[1][-3000:]
    info = json.loads((out / "params.json").read_text())["params"]
    assert (info["lr"], info["epochs"]) == (0.05, 500)  # the first run's folder is its own, whole
    done = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert done >= 1 and len(pd.read_csv(out / "history.csv")) in (done, done + 1)  # history.csv is written first
    assert lock_holder(out) is None  # free again: the run can be resumed or read


@pytest.mark.slow  # second test tier (make test-slow)
def test_sigterm_stops_training_resumably(data, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = subprocess.Popen([*TRAINING, *args(data, out, cache, epochs=4)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    wait_for(lambda: (out / "last.pt").exists(), "the first epoch")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: training stopped by SIGTERM")
    assert "--resume true" in err and str(out / "last.pt") in err
    done = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done < 4 and not list(out.glob(".*.tmp")) and not (out / "metrics.json").exists()
    r = train_here(*args(data, out, cache, epochs=4, resume="true"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {out} at epoch {done}" in r.stdout
    assert pd.read_csv(out / "history.csv").epoch.tolist() == [0, 1, 2, 3]


@pytest.mark.slow  # second test tier (make test-slow)
def test_damaged_state_is_named_or_rebuilt_never_used(data, tmp_path):
    cache = tmp_path / "cache"
    base = tmp_path / "base"
    assert train_here(*args(data, base, cache, epochs=1)).returncode == 0

    def damaged(name, damage):
        run = tmp_path / name
        shutil.copytree(base, run)
        (run / "metrics.json").unlink()  # a run that stopped after its first epoch
        info = json.loads((run / "params.json").read_text())
        info["params"]["out_dir"] = str(run)  # the copy is a run of its own
        (run / "params.json").write_text(json.dumps(info))
        damage(run)
        return run

    def refused(run) -> str:
        "The command line's one-line error (its `main` in this process: no second import of torch)."
        r = train_here(*args(data, run, cache, epochs=2, resume="true"))
        (line,) = r.stderr.strip().splitlines()
        assert r.returncode == 1 and line.startswith("error: ") and "Traceback" not in line, r.stderr
        return line

    run = damaged("cut_checkpoint", lambda d: (d / "last.pt").write_bytes((d / "last.pt").read_bytes()[:5000]))
    assert f"cannot load checkpoint {run / 'last.pt'}" in refused(run)
    run = damaged("garbled_history", lambda d: (d / "history.csv").write_bytes(b"\x00\x17garbage;;\n\xff\xfe\n"))
    assert refused(run).startswith(f"error: {run / 'history.csv'} cannot be read")
    run = damaged("short_history", lambda d: (d / "history.csv").write_text("epoch,train_loss\n"))
    assert f"{run / 'history.csv'} lacks epochs" in refused(run)
    run = damaged("garbled_params", lambda d: (d / "params.json").write_text('{"params": {"lr": 0.'))
    assert f"{run / 'params.json'} is damaged" in refused(run)
    stored = max(cache.glob("images_*.npy"), key=lambda f: f.stat().st_size)  # the training images' cache
    stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])  # a cache cut short
    run = damaged("cut_cache", lambda d: None)
    r = train_here(*args(data, run, cache, epochs=2, resume="true"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"stored array {stored} is damaged" in r.stdout and "building it again" in r.stdout
    assert pd.read_csv(run / "history.csv").epoch.tolist() == [0, 1]


@pytest.fixture()
def small_disk(tmp_path):
    "A 48 MiB tmpfs: a file system that really runs out of space (needs root; skipped where mounting is not allowed)."
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def fill(disk: Path, leave: int) -> Path:
    "Fill `disk` up to `leave` bytes of free space."
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    with open(filler, "r+b") as f:
        f.truncate(max(0, filler.stat().st_size - leave))
    return filler


@pytest.mark.slow  # second test tier (make test-slow)
def test_full_disk_names_the_file_keeps_the_last_version_and_resumes(data, tmp_path, small_disk):
    run, cache = small_disk / "run", tmp_path / "cache"
    assert train_here(*args(data, run, cache, epochs=1)).returncode == 0
    (run / "metrics.json").unlink()  # continued below for a second epoch
    before = (run / "last.pt").read_bytes()
    filler = fill(small_disk, leave=64 << 10)
    r = train_here(*args(data, run, cache, epochs=2, resume="true"))
    assert r.returncode == 1, r.stderr[-3000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: no space left on the device writing {run}/") and ".pt (" in line, line
    assert "MiB free there); free some space and run the same command again" in line
    assert (run / "last.pt").read_bytes() == before and not list(run.glob(".*.tmp"))  # the last version, whole
    r = train_here(*args(data, run, small_disk / "cache", epochs=2, resume="true"))  # a new image cache: no room
    assert r.returncode == 1 and f"no space left on the device writing {small_disk / 'cache'}/images_" in r.stderr
    filler.unlink()
    r = train_here(*args(data, run, cache, epochs=2, resume="true"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert pd.read_csv(run / "history.csv").epoch.tolist() == [0, 1] and (run / "metrics.json").exists()


PIPELINE = """
import sys
from mask_pstage.pipeline import run_pipeline
tiny = dict(model="mobilenetv3_small_050", pretrained=False, img_size="64x48", epochs=2, batch_size=16)
tiny["cache_dir"] = sys.argv[3]
run_pipeline(sys.argv[1], sys.argv[2], n_folds=2, train=tiny, log=print, in_process=True)
"""


def pipeline(data, run, cache):
    "The pipeline in a process of its own (its steps in that process, as the notebook tests run them)."
    return subprocess.Popen([sys.executable, "-c", PIPELINE, str(data), str(run), str(cache)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.slow  # second test tier (make test-slow)
def test_pipeline_killed_in_training_and_in_analysis_ends_like_an_uninterrupted_run(data, tmp_path):
    cache = tmp_path / "cache"
    ref = pipeline(data, tmp_path / "ref", cache)
    assert ref.wait() == 0, ref.stderr.read()[-3000:]
    run, steps = tmp_path / "killed", tmp_path / "killed" / ".steps"
    kills = [
        (lambda: (run / "train" / "fold0" / "last.pt").exists(), "03_train_fold1"),  # inside a training step
        (lambda: (steps / "03_train_fold1.json").exists(), "05_ensemble"),  # inside analysis or ensemble
    ]
    for reached, not_yet in kills:
        p = pipeline(data, run, cache)
        wait_for(lambda: reached() or p.poll() is not None, "the kill point")
        p.kill()
        p.wait()
        assert not (steps / f"{not_yet}.json").exists(), f"killed too late: {sorted(steps.glob('*'))}"
    last = pipeline(data, run, cache)
    assert last.wait() == 0, last.stderr.read()[-3000:]
    a, b = (pd.read_csv(d / "ensemble" / "test_probs.csv") for d in (tmp_path / "ref", run))
    pd.testing.assert_frame_equal(a, b, rtol=0, atol=2e-6)  # the same probabilities (written with 6 decimals)
    a, b = ((d / "ensemble" / "submission.csv").read_bytes() for d in (tmp_path / "ref", run))
    assert a == b


def kernels() -> set:
    "Process ids of running Jupyter kernels."
    found = set()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if b"ipykernel" in (d / "cmdline").read_bytes() or b"mask_pstage.kernels" in (d / "cmdline").read_bytes():
                found.add(int(d.name))
        except OSError:
            pass
    return found


@pytest.mark.slow  # second test tier (make test-slow)
def test_pipeline_refuses_a_second_writer_and_names_the_step_a_signal_stopped(data, tmp_path):
    run, before = tmp_path / "run", kernels()
    cmd = [sys.executable, "-m", "mask_pstage.pipeline", "--data", str(data), "--run", str(run), "--folds", "2",
           "--train", "model=mobilenetv3_small_050", "--train", "pretrained=false", "--train", "img_size=64x48",
           "--train", "epochs=30", "--train", f"cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in first.stdout:  # the first training step has started in its kernel
        if line.startswith("[03_train_fold0] running"):
            break
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(f"error: pipeline run {run} is being written by process {first.pid} on "), line
    assert line.endswith("wait for it to finish (or stop that process), or write to another folder"), line
    wait_for(lambda: (run / "train" / "fold0" / "params.json").exists(), "the training to start")
    first.send_signal(signal.SIGTERM)
    err = first.communicate(timeout=120)[1]
    assert first.returncode == 128 + signal.SIGTERM, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: the pipeline was stopped by SIGTERM during step '03_train_fold0'; run the same command again to "
        "continue (finished steps are reused, a stopped training resumes from its last epoch)"
    ], err
    assert "Traceback" not in err, err
    wait_for(lambda: not (kernels() - before), "the step's kernel to end", timeout=30)
    assert lock_holder(run) is None and lock_holder(run / "train" / "fold0") is None
