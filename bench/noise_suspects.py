"""How well the label-noise suspects find the injected noise of a synthetic competition, against the best any
image-based detector could do on it.

    python bench/noise_suspects.py --data /tmp/fullsyn --runs outputs/fullsyn/train

`--runs` are fold runs covering every training person (e.g. a pipeline run's train/). Printed: precision and
recall of the top-N suspects (N = persons with injected noise), per noise field, and the ceiling of an oracle
that sees each person's latent traits (persons.csv): it finds every age and mask-swap error (their photos
contradict the label by about 5 standard deviations) and ranks gender errors by the exact likelihood ratio of
the femininity cue and stubble. The synthetic gender cue overlaps on purpose (N(+-0.9, 0.75)), so about one
clean person in nine looks like the other gender, and no detector can reach much past that oracle.
"""

import argparse, json
import numpy as np
import pandas as pd
from scipy.stats import norm
from mask_pstage.analysis import load_oof, noise_suspects, noise_detection
from mask_pstage.core import resolve_path
from mask_pstage.runs import find_runs


def oracle_at_n(data) -> dict:
    "Precision (= recall) at N of a detector that knows every person's latent traits."
    persons = pd.read_csv(data / "persons.csv", dtype={"person_id": str})
    persons = persons[persons.split == "train"].set_index("person_id")
    manifest = pd.read_csv(data / "label_noise.csv", dtype={"person_id": str})
    flipped = set(manifest.person_id[manifest.field == "gender"])
    given = np.where(persons.index.isin(flipped), 1 - persons.gender, persons.gender)
    fem, stubble = persons.femininity.to_numpy(), persons.stubble.to_numpy().astype(bool)

    def likelihood(female):
        p_stubble = np.where(female == 1, 0.0, 0.3)
        return (
            norm.pdf(fem, np.where(female == 1, 0.9, -0.9), 0.75) * np.where(stubble, p_stubble, 1 - p_stubble) + 1e-300
        )

    llr = pd.Series(np.log(likelihood(1 - given)) - np.log(likelihood(given)), index=persons.index)
    truth = set(manifest.person_id)
    sure = truth - flipped  # age and mask-swap errors: found by the oracle
    ranked = list(sure) + [p for p in llr.sort_values(ascending=False).index if p not in sure]
    top = set(ranked[: len(truth)])
    return dict(
        n=len(truth),
        precision_at_n=len(top & truth) / len(truth),
        gender_found=len(top & flipped),
        gender_injected=len(flipped),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a synthetic competition (with persons.csv and label_noise.csv)")
    ap.add_argument("--runs", required=True, help="fold runs that cover every training person")
    a = ap.parse_args()
    data = resolve_path(a.data)
    oof = load_oof(find_runs(a.runs))
    suspects = noise_suspects(oof)
    found = noise_detection(suspects, pd.read_csv(data / "label_noise.csv", dtype={"person_id": str}))
    result = dict(persons=int(oof.person_id.nunique()), suspects=found, oracle=oracle_at_n(data))
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
