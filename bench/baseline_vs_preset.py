"""The competition's official baseline recipe against this project's presets, on one dataset, in one run.

(a) the official baseline, re-implemented from its description: torchvision transforms (Resize 128x96, ToTensor,
    Normalize), timm resnet18 from scratch, Adam lr 1e-3, cross-entropy on the 18 classes, batch 64, an
    *image-level* random 80/20 split (its validation therefore shares persons with training), 3 epochs, the
    last epoch's model predicts eval/;
(b) the project's pipeline with each preset of `--presets` (default `scratch,cpu`: the from-scratch recipe and the
    pretrained one): face detection, cache, K person-level folds, error analysis, ensemble, submission. Each preset
    starts from an empty cache (its own cache folder, and face boxes under it), so its wall time includes detection.

Every submission is scored against the dataset's eval_truth.csv; the script prints macro F1, mask / gender / age
accuracy, the CV estimate and wall time of each, and writes them to OUT/baseline_vs_preset.json.

    .venv/bin/python bench/baseline_vs_preset.py --data ../shared/data/utk_dev --out outputs/bench_utk

Run it alone: on a 2-core machine another job halves every figure. Nothing is downloaded: the pretrained preset's
weights come from an installed registry package (nbs/01b_weights.ipynb).
"""

import argparse, json, time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from mask_pstage.core import read_eval, read_train, resolve_path
from mask_pstage.reports import attribute_accuracy
from mask_pstage.models import create_model
from mask_pstage.submission import score


class Images(torch.utils.data.Dataset):
    "PIL decode + the baseline's transforms (decoded on every access, as the baseline does)."

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


def official_baseline(data, out: Path, epochs=3, seed=42, threads=0) -> dict:
    "Train and predict with the official baseline's recipe; returns its scores and wall time."
    import torchvision.transforms as T

    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    torch.manual_seed(seed)
    train, evals = read_train(data), read_eval(data)
    tf = T.Compose(
        [T.Resize((128, 96), Image.BILINEAR), T.ToTensor(), T.Normalize((0.548, 0.504, 0.479), (0.237, 0.247, 0.246))]
    )
    order = np.random.default_rng(seed).permutation(len(train))  # image-level split, as the baseline's MaskBaseDataset
    n_val = int(len(train) * 0.2)
    tr, va = order[n_val:], order[:n_val]
    loader = torch.utils.data.DataLoader(
        Images(train.path.to_numpy()[tr], train.label.to_numpy()[tr], tf), batch_size=64, shuffle=True
    )
    model = create_model("resnet18", pretrained=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"baseline epoch {epoch}: last batch loss {loss.item():.3f}", flush=True)
    model.eval()
    predict = lambda paths: np.concatenate(
        [
            model(x).argmax(1).numpy()
            for x, _ in torch.utils.data.DataLoader(Images(paths, [0] * len(paths), tf), batch_size=128)
        ]
    )
    with torch.no_grad():
        val_pred, eval_pred = predict(train.path.to_numpy()[va]), predict(evals.path.to_numpy())
    from sklearn.metrics import f1_score

    sub = pd.DataFrame(dict(ImageID=evals.ImageID, ans=eval_pred))
    out.mkdir(parents=True, exist_ok=True)
    sub.to_csv(out / "baseline_submission.csv", index=False)
    return dict(
        image_split_val_macro_f1=round(float(f1_score(train.label.to_numpy()[va], val_pred, average="macro")), 4),
        eval_submission=str(out / "baseline_submission.csv"),
        wall_seconds=round(time.time() - t0, 1),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", required=True, help="a dataset in the competition layout with eval_truth.csv beside eval/"
    )
    ap.add_argument("--out", default="outputs/bench_baseline_vs_preset")
    ap.add_argument("--presets", default="scratch,cpu", help="comma-separated presets, run in this order")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-preset", action="store_true")
    a = ap.parse_args()
    data, out = resolve_path(a.data), resolve_path(a.out)
    rows = {}
    if not a.skip_baseline:
        b = official_baseline(data, out)
        rows["official baseline (resnet18, Adam 1e-3, 128x96, image split, 3 epochs)"] = dict(
            eval_macro_f1=round(score(b["eval_submission"], data / "eval_truth.csv")["all"], 4),
            **attribute_accuracy(b["eval_submission"], data / "eval_truth.csv"),
            wall_seconds=b["wall_seconds"],
            validation_macro_f1=b["image_split_val_macro_f1"],
        )
    for preset in [] if a.skip_preset else [x.strip() for x in a.presets.split(",") if x.strip()]:
        from mask_pstage.pipeline import run_pipeline
        from mask_pstage.runs import PipelineRun

        t0, run = time.time(), out / f"preset_{preset}"
        cache = run / "cache"  # empty at the start: detection, crops and weights conversion are timed too
        summary = run_pipeline(
            data, run, preset=preset, train=dict(cache_dir=str(cache), face_boxes=str(cache / "boxes.csv"))
        )
        sub = PipelineRun(run).ensemble_file("submission")
        truth = data / "eval_truth.csv"
        rows[f"mask_pstage preset {preset}"] = dict(
            eval_macro_f1=round(score(sub, truth)["all"], 4),
            **attribute_accuracy(sub, truth),
            wall_seconds=round(time.time() - t0, 1),
            validation_macro_f1=summary.get("cv_macro_f1"),
        )
    table = pd.DataFrame(rows).T
    print(table.to_string())
    (out / "baseline_vs_preset.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
