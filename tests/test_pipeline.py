"""The pipeline's further options end to end on a tiny synthetic set (second test tier): an image-split fold compared
with the person split, a model trained on all persons with its two submissions, and a pseudo-label round. The steps
run in this process (`in_process=True`), as the notebook tests run notebooks."""

import json
import pandas as pd
import pytest
from mask_pstage.pipeline import make_pseudo_labels, run_pipeline
from mask_pstage.runs import PipelineRun, Run
from mask_pstage.synth import generate


@pytest.mark.slow  # second test tier (make test-slow)
def test_every_pipeline_option(tmp_path):
    data = generate(tmp_path / "data", persons=16, eval_persons=2, seed=0, workers=1, progress=False)
    tiny = dict(
        model="mobilenetv3_small_050",
        pretrained=False,
        img_size="64x48",
        epochs=1,
        batch_size=16,
        cache_dir=str(tmp_path / "cache"),
    )
    run = tmp_path / "opts"
    options = dict(
        train_all=True, pseudo_threshold=0.05, image_split=True
    )  # a low threshold: the tiny model keeps some
    opts = run_pipeline(data, run, n_folds=2, train=tiny, log=print, in_process=True, **options)
    assert sorted(p.name for p in run.glob("*.ipynb")) == [
        "01_eda.ipynb",
        "03_train_all.ipynb",
        "03_train_fold0.ipynb",
        "03_train_fold1.ipynb",
        "03_train_image_split.ipynb",
        "03_train_pseudo_fold0.ipynb",
        "03_train_pseudo_fold1.ipynb",
        "04_error_analysis.ipynb",
        "04_error_analysis_pseudo.ipynb",
        "05_ensemble.ipynb",
        "05_ensemble_all.ipynb",
        "05_ensemble_folds_all.ipynb",
        "05_ensemble_pseudo.ipynb",
    ]
    assert Run(run / "train_all").params.fold == -1 and Run(run / "train_all").finished
    assert set(opts["train_all"]) == {"epochs", "eval_alone", "eval_with_folds", "eval_folds"}
    pl = pd.read_csv(run / "pseudo" / "pseudo_labels.csv")
    assert len(pl) == opts["pseudo"]["kept"] > 0 and {"precision", "oof_precision"} <= set(opts["pseudo"])
    assert json.loads((run / "train_pseudo" / "fold0" / "params.json").read_text())["n_pseudo_images"] == len(pl)
    oof = pd.read_csv(run / "train_pseudo" / "fold0" / "oof.csv")
    assert not oof.path.str.contains("/eval/").any()  # the pseudo-labelled eval images are never validated on
    assert "image_split_overestimate" in opts["split_comparison"]
    pr = PipelineRun(run)
    for folder in ("ensemble_all", "ensemble_folds_all", "ensemble_pseudo"):
        assert pr.ensemble_file("submission", folder).exists()
    text = pr.summary_md.read_text()
    assert "| image_split/" not in text and "pseudo-labels (threshold 0.05)" in text  # the fold table: folds only
    with pytest.raises(ValueError, match="pseudo_threshold=1.5"):
        make_pseudo_labels(pr.ensemble_file("test_probs"), 1.5, tmp_path / "p", data)
