"""Optuna search: two worker processes share one study through its journal file; every trial runs exactly once,
into its own run folder, and the study holds exactly the trials asked for."""

import json, subprocess, sys
from pathlib import Path
import pytest


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mask_pstage.synth import generate

    return generate(
        tmp_path_factory.mktemp("data") / "syn", persons=12, eval_persons=1, seed=11, workers=2, progress=False
    )


@pytest.mark.slow  # second test tier (make test-slow)
def test_two_workers_share_one_study_through_its_journal_file(data, tmp_path):
    import optuna

    run, n = tmp_path / "study", 6
    cmd = [
        sys.executable,
        "-m",
        "mask_pstage.search",
        "--data",
        str(data),
        "--run",
        str(run),
        "--trials",
        str(n),
        "--space",
        "tiny",
        "--pruner",
        "median",
    ]
    cmd += [
        a
        for kv in (
            "model=mobilenetv3_small_050",
            "pretrained=false",
            "img_size=32x24",
            "epochs=3",
            "batch_size=16",
            "n_folds=3",
            "fold=1",
            f"cache_dir={tmp_path / 'cache'}",
            "predict_train=false",
            "threads=1",
        )
        for a in ("--train", kv)
    ]
    workers = [
        subprocess.Popen(cmd + ["--worker", str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(2)
    ]
    outs = [w.communicate(timeout=600) for w in workers]
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]

    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(
        study_name="search", storage=optuna.storages.JournalStorage(JournalFileBackend(str(run / "study.journal")))
    )
    trials = study.trials
    assert len(trials) == n, [t.number for t in trials]  # none lost, none beyond the total
    assert sorted(t.number for t in trials) == list(range(n))  # none run twice
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}, [(t.number, t.state.name) for t in trials]
    folders = [Path(t.user_attrs["run"]) for t in trials]
    assert len(set(folders)) == n and sorted(p.name for p in (run / "trials").iterdir()) == sorted(
        p.name for p in folders
    )
    for t, folder in zip(trials, folders):  # each trial's run folder trained exactly the trial's parameters, once
        params = json.loads((folder / "params.json").read_text())["params"]
        lr = (
            t.params["lr"] if t.params["optimizer"] == "sgd" else t.params["lr_adamw"]
        )  # each optimizer draws its own range
        assert params["lr"] == pytest.approx(lr) and params["optimizer"] == t.params["optimizer"]
        assert (folder / "metrics.json").exists()
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == n  # the workers drew different trials
    assert [o.count("trial(s) so far") for o, _ in outs] == [1, 1]
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}  # both worked on it
    assert (run / "trials.csv").exists() and (run / "history.png").exists()
