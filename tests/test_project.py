"""Project-level checks: the installed stack, notebook hygiene, the notebooks themselves (nbdev-test),
and the command-line tools on real-photo and corrupted data. Notebook runs go one at a time: two torch
jobs at once on 2 cores collapse both."""

import filecmp, json, shutil, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NBS = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith(("_", ".")))
# job notebooks: papermill runs them, so each must keep its `parameters` cell
JOB_NOTEBOOKS = [
    "01_eda.ipynb",
    "02_preprocess.ipynb",
    "03_train.ipynb",
    "04_error_analysis.ipynb",
    "05_ensemble.ipynb",
    "06_lightweight.ipynb",
    "08_real_faces.ipynb",
    "09_search.ipynb",
]
FAIRFACE = ROOT.parent / "shared" / "data" / "fairface_mask"


def run(*cmd, cwd=ROOT, **kw):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, **kw)


def test_torch_pair_imports_and_runs():
    "The pinned torch/torchvision pair imports side by side, torchvision's C++ ops load, timm builds and runs a model."
    import torch, torchvision, timm

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
    model = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=18).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 96))
    assert out.shape == (2, 18) and torch.isfinite(out).all()
    makefile = (ROOT / "Makefile").read_text()
    assert f"torch=={torch.__version__.split('+')[0]} torchvision=={torchvision.__version__.split('+')[0]}" in makefile


def test_notebooks_are_clean(tmp_path):
    "nbdev-clean leaves every notebook unchanged (run on copies, so the working tree is untouched)."
    for name in NBS:
        shutil.copy(ROOT / "nbs" / name, tmp_path / name)
    r = run(BIN / "nbdev-clean", "--fname", tmp_path)
    assert r.returncode == 0, r.stderr
    dirty = [n for n in NBS if not filecmp.cmp(ROOT / "nbs" / n, tmp_path / n, shallow=False)]
    assert not dirty, f"notebooks not clean, run `make clean-nbs` and commit: {dirty}"


def test_library_notebooks_keep_small_outputs_and_job_notebooks_none():
    """Library notebooks carry the small outputs `make nb-outputs` saves (documentation: no stderr, thumbnails, nothing
    over the limit, no picture from a cell that reads real photos); job notebooks are saved clean, papermill writes
    their outputs into the run folders (08_real_faces, the report of the real-face measurements, keeps its tables)."""
    import re
    from mask_pstage.nbdev_tools import MAX_OUTPUT_BYTES, library_notebooks

    libs = {p.name for p in library_notebooks(ROOT / "nbs")}
    assert libs == set(NBS) - set(JOB_NOTEBOOKS)
    with_outputs, problems = 0, []
    for name in NBS:
        cells = [c for c in json.loads((ROOT / "nbs" / name).read_text())["cells"] if c["cell_type"] == "code"]
        outputs = [(c, o) for c in cells for o in c.get("outputs", [])]
        with_outputs += name in libs and bool(outputs)
        if name in JOB_NOTEBOOKS and name != "08_real_faces.ipynb" and outputs:
            problems.append(f"{name}: a job notebook saved with outputs")
        for c, o in outputs:
            src = "".join(c["source"])
            if o.get("name") == "stderr" or len(json.dumps(o)) > MAX_OUTPUT_BYTES:
                problems.append(f"{name}: stderr or an output over {MAX_OUTPUT_BYTES} bytes")
            if re.search(r"FAIRFACE|UTK|shared.*data", src) and {"image/png", "image/jpeg"} & set(o.get("data", {})):
                problems.append(f"{name}: a picture from a cell that reads real photos (mark it `#| output: false`)")
    assert not problems, problems
    assert with_outputs >= 10, "run make nb-outputs: library notebooks read as documentation with their outputs"


def test_package_in_sync_with_notebooks(tmp_path):
    "nbdev-export on a copy of the project reproduces mask_pstage/ exactly."
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, tmp_path / item)
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs")
    shutil.copytree(ROOT / "mask_pstage", tmp_path / "mask_pstage", ignore=shutil.ignore_patterns("__pycache__"))
    r = run(BIN / "nbdev-export", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cmp = filecmp.dircmp(ROOT / "mask_pstage", tmp_path / "mask_pstage", ignore=["__pycache__"])
    assert not (cmp.diff_files or cmp.left_only or cmp.right_only), (
        "package out of sync with nbs/, run `make export` and commit: "
        f"{cmp.diff_files + cmp.left_only + cmp.right_only}"
    )


def test_package_lines_are_readable():
    """No generated line over 120 columns, `__all__` included (nbs/12a_nbdev_tools.ipynb); ruff checks the same and one
    statement per line."""
    long = [
        f"{p.name}:{i}"
        for p in (ROOT / "mask_pstage").glob("*.py")
        if p.name != "_modidx.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if len(line) > 120
    ]
    assert not long, f"lines over 120 columns (fix them in the notebooks): {long}"


def test_no_notebook_is_both_library_and_job():
    "A notebook with a papermill `parameters` cell exports nothing: the pipeline and papermill run the library's code."
    for name in NBS:
        nb = json.loads((ROOT / "nbs" / name).read_text())
        tags = [t for c in nb["cells"] for t in c["metadata"].get("tags", [])]
        exports = [c for c in nb["cells"] if "".join(c["source"]).startswith(("#| export", "#| default_exp"))]
        assert ("parameters" in tags) == (name in JOB_NOTEBOOKS), f"{name}: job notebooks are {JOB_NOTEBOOKS}"
        assert not ("parameters" in tags and exports), f"{name} is a job notebook with export cells"


@pytest.mark.parametrize("name", JOB_NOTEBOOKS)
def test_job_notebook_has_parameters_cell(name):
    "papermill finds the `parameters` cell and can parse (and document) every parameter in it."
    import re, papermill
    from click.testing import CliRunner
    from papermill.cli import papermill as papermill_command

    r = CliRunner().invoke(papermill_command, ["--help-notebook", str(ROOT / "nbs" / name)])  # its CLI, in-process
    assert r.exit_code == 0, r.output
    assert "No cell tagged 'parameters'" not in r.output, f"{name} lost its parameters cell"
    nb = json.loads((ROOT / "nbs" / name).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    assigned = [m[1] for line in "".join(cell["source"]).splitlines() if (m := re.match(r"(\w+)\s*[:=]", line))]
    assert list(papermill.inspect_notebook(str(ROOT / "nbs" / name))) == assigned, "papermill cannot parse some lines"
    other = [
        line for line in "".join(cell["source"]).splitlines() if line.strip() and not re.match(r"(\w+\s*[:=]|#)", line)
    ]
    assert not other, f"one parameter per line (papermill documents it by its trailing comment): {other}"


def run_notebook(name, flags=()):
    """nbdev's own notebook test (`nbdev.test.test_nb`, what `nbdev-test` runs) in this process, so that torch, timm and
    pandas are imported once for every notebook; IN_TEST shrinks the job notebooks. A failing cell's traceback goes to
    stderr."""
    from nbdev.config import get_config
    from nbdev.test import test_nb
    from mask_pstage.nbdev_tools import skip_flags

    cfg = get_config(ROOT)
    nb = ROOT / "nbs" / name
    ok, seconds = test_nb(
        nb, skip_flags=skip_flags(cfg, flags), force_flags=list(flags), cell_timeout=int(cfg.cell_timeout)
    )
    assert ok, f"{name} failed after {seconds:.0f} s (its traceback is on stderr above)"


@pytest.mark.parametrize("name", NBS)
def test_notebook(name):
    "Every notebook runs top to bottom (nbdev-test's test_nb, one at a time), its `#| slow` cells left out."
    run_notebook(name)


SLOW_NBS = [
    name
    for name in NBS
    if any(
        c["cell_type"] == "code" and "".join(c["source"]).startswith("#| slow")
        for c in json.loads((ROOT / "nbs" / name).read_text())["cells"]
    )
]


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_NBS)
def test_notebook_with_its_slow_cells(name):
    """Notebooks whose `#| slow` cells are whole scenarios (the pipeline end to end, the lightweight study) run again
    with them, in the second tier."""
    run_notebook(name, flags=("slow",))


def test_slow_cells_are_where_expected():
    assert SLOW_NBS == ["06_lightweight.ipynb", "07_pipeline.ipynb"], SLOW_NBS


@pytest.mark.skipif(not FAIRFACE.is_dir(), reason="shared/data/fairface_mask is not beside the project")
def test_fairface_validates_and_eda_runs_on_real_faces(tmp_path):
    r = run(BIN / "mask-pstage-validate", FAIRFACE)
    assert r.returncode == 0 and "no problems found" in r.stdout, r.stdout + r.stderr
    out = tmp_path / "eda"
    out.mkdir()
    r = run(
        BIN / "papermill",
        ROOT / "nbs" / "01_eda.ipynb",
        out / "01_eda.ipynb",
        "-p",
        "data_dir",
        FAIRFACE,
        "-p",
        "out_dir",
        out,
        "--log-level",
        "WARNING",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["persons"], summary["train_images"], summary["eval_images"]) == (208, 1456, 490)
    assert summary["image_sizes"] == {"192x256": 1946}
    assert {"ages.png", "distributions.png", "samples.png"} <= {p.name for p in out.iterdir()}


def test_synth_cli_and_validator_on_a_corrupted_copy(tmp_path):
    "The synthetic data validates cleanly; a corrupted copy is reported file by file."
    data = tmp_path / "syn"
    r = run(
        sys.executable,
        "-m",
        "mask_pstage.synth",
        "--out",
        data,
        "--persons",
        "12",
        "--eval-persons",
        "2",
        "--seed",
        "3",
    )
    assert r.returncode == 0, r.stderr
    r = run(sys.executable, "-m", "mask_pstage.synth", "--out", data, "--persons", "12", "--eval-persons", "2")
    assert r.returncode != 0 and "--overwrite" in r.stderr
    r = run(BIN / "mask-pstage-validate", data)
    assert r.returncode == 0 and "no problems found" in r.stdout, r.stdout
    train = pd.read_csv(data / "train" / "train.csv", dtype=str)
    images = data / "train" / "images"
    first, second = images / train.path[0], images / train.path[1]
    zero = next(first.glob("mask2.*"))
    zero.write_bytes(b"")
    normal = next(second.glob("normal.*"))
    normal.unlink()
    stray = images / "009999_male_Asian_33"
    stray.mkdir()
    r = run(BIN / "mask-pstage-validate", data)
    assert r.returncode == 1
    for path, what in [
        (zero, "empty (0 bytes)"),
        (second / "normal", "'normal' of person"),
        (stray, "not listed in train.csv"),
    ]:
        at = r.stdout.index(f"{path}\n")  # the path, then on the next line what is wrong with it
        assert what in r.stdout[at:].split("\n")[1], (path, r.stdout)
    r = run(sys.executable, "-m", "mask_pstage.synth", "--score", data / "eval_truth.csv", "--out", data)
    assert r.returncode == 0 and json.loads(r.stdout) == {"public": 1.0, "private": 1.0, "all": 1.0}


@pytest.mark.parametrize(
    "name, cls",
    [
        ("03_train.ipynb", "TrainParams"),
        ("04_error_analysis.ipynb", "AnalysisParams"),
        ("05_ensemble.ipynb", "EnsembleParams"),
        ("06_lightweight.ipynb", "LightweightParams"),
    ],
)
def test_job_notebook_parameters_match_the_library(name, cls):
    "A job notebook's parameters cell lists every field of its dataclass in mask_pstage.params, with its default."
    import ast, papermill
    from dataclasses import asdict
    import mask_pstage.params as params

    nb_params = papermill.inspect_notebook(str(ROOT / "nbs" / name))
    defaults = asdict(getattr(params, cls)())
    assert list(nb_params) == list(defaults)
    for field, info in nb_params.items():
        assert ast.literal_eval(info["default"]) == defaults[field], field


def test_preprocess_job_notebook_writes_the_box_file_of_a_fresh_dataset(tmp_path, capfd):
    """The job notebook 02_preprocess.ipynb run by papermill (as the pipeline runs it) with a new data_dir writes that
    data's face box file and its report; the pipeline's kernels talk over IPC, so no unencrypted-TCP warning is
    printed."""
    from mask_pstage.synth import generate
    from mask_pstage.preprocess import face_boxes_path

    data = generate(tmp_path / "fresh", persons=5, eval_persons=2, seed=8, workers=1, progress=False)
    out = tmp_path / "run" / "prep"
    from mask_pstage.pipeline import run_step

    params = dict(data_dir=str(data), out_dir=str(out), cache_dir=str(tmp_path / "cache"))
    run_step(tmp_path / "run", "02_preprocess", "02_preprocess.ipynb", params)  # a papermill kernel, as the pipeline's
    printed = capfd.readouterr()
    assert "without encryption" not in printed.out + printed.err, printed.err
    boxes = pd.read_csv(face_boxes_path(data))
    assert face_boxes_path(data).parent == data and len(boxes) == 7 * 5 + 7 * 2
    summary = json.loads((out / "faces.json").read_text())
    assert summary["images"] == len(boxes) and (out / "crops.png").exists() and (out / "detection_rates.csv").exists()
    executed = (tmp_path / "run" / "02_preprocess.ipynb").read_text()
    assert (
        "detecting faces in 49 images" in executed and "face detection: 100%" in executed
    )  # the log and the progress lines
