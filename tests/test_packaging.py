"""The package as users install it: `pip install .` (not editable) puts the job notebooks inside the package, and the
pipeline then runs from any folder. The wheel and the sdist are built offline (`python -m build --no-isolation`) and
pass `twine check`."""

import os, subprocess, sys, sysconfig, tomllib
from pathlib import Path
import pandas as pd
import pytest

from mask_pstage.nbdev_tools import is_job_notebook
from mask_pstage.runs import ENSEMBLE_FILES, PipelineRun

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def job_notebooks() -> set[str]:
    "Notebooks with a papermill `parameters` cell."
    return {p.name for p in (ROOT / "nbs").glob("*.ipynb") if is_job_notebook(p)}


def test_every_job_notebook_ships_in_the_wheel():
    "pyproject.toml puts every job notebook (and only those) into mask_pstage/notebooks/ of the wheel."
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = conf["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert {Path(k).name for k in shipped} == job_notebooks()
    assert all(v == f"mask_pstage/notebooks/{Path(k).name}" and k.startswith("nbs/") for k, v in shipped.items())


def run(*cmd, cwd, env=None):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r


@pytest.mark.slow  # second test tier (make test-slow): builds, installs, and runs the pipeline in papermill kernels
def test_the_installed_wheel_runs_the_pipeline_from_any_folder(tmp_path):
    dist = tmp_path / "dist"
    r = run(BIN / "python", "-m", "build", "--no-isolation", "--outdir", dist, ROOT, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (wheel,) = dist.glob("*.whl")
    assert len(list(dist.glob("*.tar.gz"))) == 1
    r = run(BIN / "twine", "check", "--strict", *dist.iterdir(), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count("PASSED") == 2, r.stdout + r.stderr

    # a fresh environment holding the wheel (not editable); the dependencies come from this one through a .pth file,
    # which adds their folder only (its editable-install hook, a .pth there too, is not read)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    r = run(BIN / "uv", "pip", "install", "-q", "--no-deps", "--compile-bytecode", "--python", venv / "bin" / "python",
            wheel, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    work = tmp_path / "anywhere"  # not the project: relative paths mean this folder
    work.mkdir()
    where = run(venv / "bin" / "python", "-c", "import mask_pstage.pipeline as p; print(p.__file__); print(p.NBS)",
                cwd=work, env=env)  # fmt: skip
    module, nbs = map(Path, where.stdout.split())
    assert module.parent == site / "mask_pstage" and nbs == site / "mask_pstage" / "notebooks", where.stdout
    assert {p.name for p in nbs.glob("*.ipynb")} == job_notebooks()

    cli = venv / "bin" / "mask-pstage"
    r = run(cli, "synth", "--out", "data", "--persons", 12, "--eval-persons", 2, "--seed", 1, "--workers", 1,
            cwd=work, env=env)  # fmt: skip
    assert r.returncode == 0 and (work / "data" / "train" / "train.csv").exists(), r.stderr
    # one step through the CLI (a papermill kernel running the packaged notebook)
    first = run(cli, "eda", "--data", "data", "--run", "outputs/run", cwd=work, env=env)
    assert first.returncode == 0, first.stderr
    assert (work / "outputs" / "run" / "01_eda.ipynb").exists() and (work / "outputs/run/eda/summary.json").exists()

    # the whole pipeline: its EDA step is the one above (same parameters: reused), one fold trained, ensembled, scored
    train = dict(model="mobilenetv3_small_050", pretrained="false", img_size="64x48", epochs=1, batch_size=16)
    r = run(cli, "pipeline", "--data", "data", "--run", "outputs/run", "--folds", 2, "--train-folds", 1,
            *[a for k, v in train.items() for a in ("--train", f"{k}={v}")], cwd=work, env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[01_eda] finished before, reused" in r.stdout, r.stdout
    out = PipelineRun(work / "outputs" / "run")
    sub = pd.read_csv(out.folder("ensemble") / ENSEMBLE_FILES["submission"])
    assert len(sub) == 2 * 7 and sub["ans"].between(0, 17).all()
    summary = out.summary
    assert len(summary["fold_runs"]) == 1 and 0 <= summary["submission_score"]["all"] <= 1, summary
    assert (work / "outputs" / "cache").is_dir()  # the relative default cache_dir: here, not in the package
    assert not list(site.glob("mask_pstage/**/outputs")) and not (site / "outputs").exists()
