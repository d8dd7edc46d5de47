"""Images/s of three paths, printed in one run:
(a) the official baseline's data path: PIL open + Resize + ToTensor + Normalize on every access;
(b) our cached loader: memory-mapped uint8 cache + the default ('base') augmentation + batch normalisation;
(c) the training step alone (forward, backward, optimizer step) on ready tensors,
for mobilenetv3_small_100 and resnet18 at 128x96 (H x W).

    .venv/bin/python bench/loader_speed.py [--data DIR] [--images N] [--threads T]

Without --data a synthetic set is generated into a temporary folder first. Each figure is the median of 3 runs. Run it
alone: another torch job on a 2-core machine halves every number.
"""

import argparse, tempfile, time
from pathlib import Path
import numpy as np
import torch

from mask_pstage.core import read_train
from mask_pstage.preprocess import build_augment, build_cache, CachedImages, collate_uint8
from mask_pstage.models import create_model, to_input

SIZE = (128, 96)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def baseline(paths):
    "The official baseline: every access opens, decodes and resizes the JPEG again."
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(SIZE, Image.BILINEAR), T.ToTensor(), T.Normalize(MEAN, STD)])
    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            tf(im.convert("RGB"))
    return len(paths) / (time.perf_counter() - t0)


def cached(images, epochs=3, batch=64):
    ds = CachedImages(images, augment=build_augment("base", seed=0))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0, collate_fn=collate_uint8)
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            to_input(x, MEAN, STD, "cpu", True)
            n += len(x)
    return n / (time.perf_counter() - t0)


def train_step(name, steps=12, batch=64):
    model = create_model(name, pretrained=False).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, *SIZE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 18, (batch,))
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()  # 3 warm-up steps
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="dataset in the competition layout (default: generate 60 synthetic persons)")
    ap.add_argument("--images", type=int, default=400, help="images for the baseline and the cache")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    data = args.data
    if not data:
        from mask_pstage.synth import generate

        data = generate(tmp / "data", persons=60, eval_persons=1, seed=0, progress=False)
    paths = list(read_train(data).path[: args.images])
    t0 = time.perf_counter()
    images = np.asarray(build_cache(paths, SIZE, tmp / "cache"))  # in memory, as during training after the first epoch
    build = len(paths) / (time.perf_counter() - t0)
    median = lambda f, *a: float(np.median([f(*a) for _ in range(3)]))  # the machine is noisy: median of 3
    a, b = median(baseline, paths), median(cached, images)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(paths)} images of {data}, input "
        f"{SIZE[0]}x{SIZE[1]}"
    )
    print(f"{'path':58s} {'images/s':>9s}")
    print(f"{'(a) baseline: PIL open + Resize + ToTensor per access':58s} {a:9.0f}")
    print(f"{'    cache build (one-off: draft decode + resize + write)':58s} {build:9.0f}")
    print(f"{'(b) cached loader + base augmentation + normalise':58s} {b:9.0f}   {b / a:5.1f}x (a)")
    for name in ("mobilenetv3_small_100", "resnet18"):
        c = median(train_step, name)
        print(f"{'(c) train step alone, ' + name:58s} {c:9.0f}   (b) is {b / c:5.1f}x (c)")


if __name__ == "__main__":
    main()
