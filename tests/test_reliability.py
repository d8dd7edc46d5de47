"""The broken-input corpus: broken or unusual copies of a small synthetic set, each through the validator, training and
the submission tools. Every broken one ends in a clean `error:` message that names the file, folder or parameter (exit
status 1 or 2, no traceback); every unusual but usable one is accepted, decoded right, and what was skipped is
counted."""

import json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from inprocess import run_main

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRAIN = dict(
    model="mobilenetv3_small_050",
    pretrained="false",
    img_size="64x48",
    epochs=1,
    batch_size=32,
    n_folds=3,
    fold=0,
    threads=2,
    predict_train="false",
)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from mask_pstage.synth import generate

    return generate(
        tmp_path_factory.mktemp("corpus") / "syn", persons=9, eval_persons=2, seed=11, workers=1, progress=False
    )


def cli(*cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    return r


def person(data, i=0) -> Path:
    return data / "train" / "images" / pd.read_csv(data / "train" / "train.csv", dtype=str).path[i]


def image(data, i=0, stem="mask1") -> Path:
    return next(person(data, i).glob(f"{stem}.*"))


def eval_image(data, i=0) -> Path:
    return data / "eval" / "images" / pd.read_csv(data / "eval" / "info.csv", dtype=str).ImageID[i]


def edit_csv(path, fn):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


def truncate(f: Path):
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return f


def replace_with(f: Path, make):
    f.unlink()
    make(f)
    return f


# (name, how to break a copy -> the path the messages must name)
BROKEN = [
    ("truncated jpeg", lambda d: truncate(image(d))),
    ("not an image", lambda d: (image(d).write_bytes(b"\xff\xd8\xff this is text"), image(d))[1]),
    ("folder named like an image", lambda d: replace_with(image(d), lambda f: f.mkdir())),
    ("dangling symlink", lambda d: replace_with(image(d), lambda f: f.symlink_to(f.parent / "gone.jpg"))),
    ("symlink loop", lambda d: replace_with(image(d), lambda f: f.symlink_to(f))),
    ("empty train image", lambda d: (image(d).write_bytes(b""), image(d))[1]),
    ("missing image", lambda d: (image(d, stem="normal").unlink(), person(d) / "normal")[1]),
    ("two files for one stem", lambda d: (shutil.copy(image(d), person(d) / "mask1.png"), person(d) / "mask1.png")[1]),
    ("empty eval image", lambda d: (eval_image(d).write_bytes(b""), eval_image(d))[1]),
    ("truncated eval image", lambda d: truncate(eval_image(d))),
    ("eval image missing", lambda d: (eval_image(d).unlink(), eval_image(d))[1]),
    ("eval folder missing", lambda d: (shutil.rmtree(d / "eval" / "images"), d / "eval" / "images")[1]),
    (
        "info.csv header only",
        lambda d: (edit_csv(d / "eval" / "info.csv", lambda df: df.iloc[:0]), d / "eval" / "info.csv")[1],
    ),
    (
        "info.csv duplicate id",
        lambda d: (edit_csv(d / "eval" / "info.csv", lambda df: pd.concat([df, df.iloc[:1]])), d / "eval" / "info.csv")[
            1
        ],
    ),
    ("train.csv missing", lambda d: ((d / "train" / "train.csv").unlink(), d / "train" / "train.csv")[1]),
    (
        "train.csv column missing",
        lambda d: (edit_csv(d / "train" / "train.csv", lambda df: df.drop(columns="age")), d / "train" / "train.csv")[
            1
        ],
    ),
    (
        "train.csv duplicate id",
        lambda d: (
            edit_csv(d / "train" / "train.csv", lambda df: df.assign(id=[df.id[0]] * 2 + list(df.id[2:]))),
            d / "train" / "train.csv",
        )[1],
    ),
    (
        "age not a number",
        lambda d: (
            edit_csv(d / "train" / "train.csv", lambda df: df.assign(age=["abc"] + list(df.age[1:]))),
            d / "train" / "train.csv",
        )[1],
    ),
    (
        "gender unknown",
        lambda d: (
            edit_csv(d / "train" / "train.csv", lambda df: df.assign(gender=["x"] + list(df.gender[1:]))),
            d / "train" / "train.csv",
        )[1],
    ),
    (
        "path leaves its folder",
        lambda d: (
            edit_csv(
                d / "train" / "train.csv", lambda df: df.assign(path=["../images/" + df.path[1]] + list(df.path[1:]))
            ),
            d / "train" / "train.csv",
        )[1],
    ),
    (
        "person folder is a link to another",
        lambda d: (shutil.rmtree(person(d)), person(d).symlink_to(person(d, 1)), person(d))[2],
    ),
    ("person folder missing", lambda d: (shutil.rmtree(person(d)), person(d))[1]),
]


@pytest.mark.parametrize("name,breaker", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_input_gets_a_clean_error_naming_it(base, tmp_path, capsys, name, breaker):
    from mask_pstage import training

    data = tmp_path / "data"
    shutil.copytree(base, data, symlinks=True)
    named = str(breaker(data))
    r = cli(BIN / "mask-pstage-validate", data)
    assert r.returncode == 1 and named in r.stdout, r.stdout[-3000:]
    with pytest.raises(
        SystemExit
    ) as e:  # the command line's own code path, in this process (no interpreter start per case)
        training.main(
            [
                f"--{k}={v}"
                for k, v in dict(TRAIN, data_dir=data, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache").items()
            ]
        )
    message = str(e.value.code)
    assert message.startswith("error: ") and named in message, message
    assert not (tmp_path / "run").exists(), "a failed run left its folder behind"


BAD_PARAMETERS = [
    (dict(threads=-1), "threads=-1"),
    (dict(num_workers=-1), "num_workers=-1"),
    (dict(max_images=-5), "max_images=-5"),
    (dict(epochs=0), "epochs=0"),
    (dict(fold=7), "fold=7"),
    (dict(model="resnet_nope"), "unknown model"),
    (dict(img_size="abc"), "img_size"),
    (dict(loss="ce+nope"), "unknown loss term"),
    (dict(data_dir="/nonexistent/data"), "/nonexistent/data"),
]


@pytest.mark.parametrize("params,named", BAD_PARAMETERS, ids=[n for _, n in BAD_PARAMETERS])
def test_bad_parameter_is_named_before_any_work(base, tmp_path, params, named):
    from mask_pstage import training

    args = {**TRAIN, "data_dir": base, "out_dir": tmp_path / "run", "cache_dir": tmp_path / "cache", **params}
    with pytest.raises(SystemExit) as e:
        training.main([f"--{k}={v}" for k, v in args.items()])
    assert str(e.value.code).startswith("error: ") and named in str(e.value.code), e.value.code
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_unwritable_folders_are_named_before_the_data_is_read(base, tmp_path):
    from mask_pstage import training

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for params, named in [
        (dict(out_dir=a_file), "is a file"),
        (dict(cache_dir=a_file), "is a file"),
        (dict(out_dir=a_file / "run"), "is a file, not a folder"),
    ]:
        with pytest.raises(SystemExit) as e:
            args = {**TRAIN, "data_dir": base, "out_dir": tmp_path / "r", "cache_dir": tmp_path / "c", **params}
            training.main([f"--{k}={v}" for k, v in args.items()])
        assert (
            str(e.value.code).startswith("error: ") and str(a_file) in str(e.value.code) and named in str(e.value.code)
        )
    if os.geteuid() != 0:  # root writes through read-only permissions: checked only where the test does not run as root
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(SystemExit) as e:
            training.main(
                [
                    f"--{k}={v}"
                    for k, v in dict(TRAIN, data_dir=base, out_dir=ro / "run", cache_dir=tmp_path / "c").items()
                ]
            )
        assert "read-only" in str(e.value.code)


def test_training_cli_process_exits_with_one_error_line(base, tmp_path):
    "The same as above through a real process: exit status 1, one `error:` line naming the file, no traceback."
    data = tmp_path / "data"
    shutil.copytree(base, data)
    bad = truncate(image(data, 3, "mask4"))
    args = dict(TRAIN, data_dir=data, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    r = cli(sys.executable, "-m", "mask_pstage.training", *[f"--{k}={v}" for k, v in args.items()])
    last = r.stderr.strip().splitlines()[-1]  # after the progress bar of the image cache
    assert r.returncode == 1 and last.startswith("error: cannot read image") and str(bad) in last, r.stderr


def _unusual(data: Path) -> dict:
    "Apply every unusual-but-usable case to `data`; returns what to check."
    imgs = data / "train" / "images"
    rgb = Image.open(image(data, 0)).convert("RGB")
    replace_with(image(data, 0, "mask2"), lambda f: rgb.convert("CMYK").save(f.with_suffix(".jpg")))
    replace_with(image(data, 0, "mask3"), lambda f: rgb.convert("L").save(f.with_suffix(".jpg")))
    replace_with(image(data, 0, "mask4"), lambda f: rgb.convert("RGBA").save(f.with_suffix(".png")))
    replace_with(image(data, 0, "mask5"), lambda f: rgb.convert("P").save(f.with_suffix(".png")))
    deep = np.linspace(0, 65535, 64 * 48).reshape(64, 48).astype(np.uint16)
    replace_with(image(data, 1, "mask1"), lambda f: Image.fromarray(deep).save(f.with_suffix(".png")))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown upright only when the orientation is applied
    turned = image(data, 1, "mask2")
    upright = np.asarray(Image.open(turned).convert("RGB"))
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(turned, exif=exif, quality=95)
    replace_with(image(data, 1, "mask3"), lambda f: Image.new("RGB", (1, 1), (90, 90, 90)).save(f.with_suffix(".jpg")))
    upper = image(data, 1, "mask4")
    upper.rename(upper.with_name("mask4.JPG"))
    (person(data, 2) / "notes.txt").write_text("an extra file")  # ignored, counted
    (person(data, 2) / "._mask1.jpg").write_bytes(b"\x00\x05resource fork")  # hidden: skipped silently
    (imgs / "009999_male_Asian_40").mkdir()  # not in train.csv: ignored, counted
    (data / "eval" / "images" / "stray.jpg").write_bytes(b"x")  # not in info.csv: ignored, counted
    korean = person(data, 3).rename(imgs / "000777_여성_Asian_33")  # non-ASCII folder name
    csv = data / "train" / "train.csv"
    df = pd.read_csv(csv, dtype=str)
    df.loc[3, "path"] = korean.name
    csv.write_bytes(b"\xef\xbb\xbf" + df.to_csv(index=False).replace("\n", "\r\n").encode())  # BOM and CRLF
    return dict(deep=image(data, 1, "mask1"), turned=turned, upright=upright, tiny=image(data, 1, "mask3"))


def test_unusual_but_usable_inputs_are_accepted_decoded_right_and_counted(base, tmp_path, capsys):
    from mask_pstage import training
    from mask_pstage.preprocess import load_image

    data = tmp_path / "data"
    shutil.copytree(base, data)
    check = _unusual(data)
    r = cli(BIN / "mask-pstage-validate", data)
    assert r.returncode == 0 and "0 error(s)" in r.stdout, r.stdout
    for needle in ("only 1x1 pixels", "notes.txt", "009999_male_Asian_40", "stray.jpg"):
        assert needle in r.stdout, needle
    deep = load_image(check["deep"], (64, 48))
    assert deep.min() < 30 and deep.max() > 225, "16-bit grey is scaled, not clipped to white"
    turned = load_image(check["turned"], (64, 48)).astype(float)
    want = np.asarray(Image.fromarray(check["upright"]).resize((48, 64), Image.BILINEAR)).astype(float)
    assert np.abs(turned - want).mean() < 12, "EXIF orientation applied"
    out = tmp_path / "run"
    training.main(
        [f"--{k}={v}" for k, v in dict(TRAIN, data_dir=data, out_dir=out, cache_dir=tmp_path / "cache").items()]
    )
    log = capsys.readouterr().out
    assert (
        "ignored 1 folder(s) in train/images not in train.csv, 1 unexpected file(s) in person folders, 1 file(s) in "
        "eval/images" in log
    )
    info = json.loads((out / "params.json").read_text())
    assert info["ignored"] == dict(train_folders=1, train_files=1, eval_files=1)
    assert info["n_persons"] == 9 and (out / "metrics.json").exists() and len(pd.read_csv(out / "test.csv")) == 14
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir() if p.is_file()}
    assert set(modes.values()) == {oct(0o666 & ~_umask())}, modes  # run folders are readable by other users and tools
    assert not [p for p in out.rglob(".*.tmp")], "no partial file is left"


def _umask():
    old = os.umask(0o022)
    os.umask(old)
    return old


SUBMISSIONS = [
    ("zero bytes", "", "is empty"),
    ("wrong header", "id,label\n", "header must be ImageID,ans"),
    ("ans out of range", "{rows18}", "class 0..17"),
    ("ans not a number", "{rowsx}", "class 0..17"),
    ("short", "{short}", "eval image(s) missing"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00", "submission"),
]


def test_submission_tools_answer_bad_files_with_one_error_line(base, tmp_path):
    from mask_pstage.submission import write_submission

    truth = base / "eval_truth.csv"
    ids = pd.read_csv(truth, dtype=str).ImageID
    fill = dict(
        rows18="ImageID,ans\n" + "".join(f"{i},18\n" for i in ids),
        rowsx="ImageID,ans\n" + "".join(f"{i},x\n" for i in ids),
        short="ImageID,ans\n" + "".join(f"{i},1\n" for i in ids[1:]),
    )
    from mask_pstage import submission, synth

    for name, text, needle in SUBMISSIONS:  # both command lines' own code, in this process
        f = tmp_path / f"{name.replace(' ', '_')}.csv"
        f.write_bytes(text if isinstance(text, bytes) else text.format(**fill).encode())
        for main, argv in (
            (submission.main, [str(f), "--truth", str(truth)]),
            (synth.main, ["--score", str(f), "--truth", str(truth)]),
        ):
            with pytest.raises(SystemExit) as e:
                main(argv)
            message = str(e.value.code)
            assert message.startswith("error: ") and str(f) in message and needle in message, (name, message)
    good = tmp_path / "good.csv"
    pd.DataFrame(dict(ImageID=ids, ans=0)).to_csv(good, index=False)
    no_ans = tmp_path / "truth_no_ans.csv"
    pd.DataFrame(dict(ImageID=ids)).to_csv(no_ans, index=False)
    for t, needle in [(no_ans, "needs the columns ImageID and ans"), (tmp_path / "missing.csv", "does not exist")]:
        with pytest.raises(SystemExit) as e:
            submission.main([str(good), "--truth", str(t)])
        assert str(t) in str(e.value.code) and needle in str(e.value.code), e.value.code
    for tool in (
        ["-m", "mask_pstage.submission", tmp_path / "zero_bytes.csv", "--truth", truth],  # and as real processes
        ["-m", "mask_pstage.synth", "--score", tmp_path / "ans_not_a_number.csv", "--truth", truth],
    ):
        r = cli(sys.executable, *tool)
        assert (
            r.returncode == 1
            and r.stderr.startswith("error: ")
            and str(tool[2 if tool[1].endswith("submission") else 3]) in r.stderr
        )
    probs = pd.DataFrame(np.full((len(ids) - 1, 18), 1 / 18), columns=[f"p{c}" for c in range(18)]).assign(
        ImageID=ids[1:].to_numpy()
    )
    with pytest.raises(ValueError, match="lack 1 eval image"):
        write_submission(probs, base, tmp_path / "sub.csv")
    assert not (tmp_path / "sub.csv").exists()


def test_pipeline_stops_before_any_step_naming_the_broken_file(base, tmp_path):
    from mask_pstage.pipeline import main as pipeline_main

    for name in ("info.csv header only", "truncated jpeg"):
        breaker = dict(BROKEN)[name]
        data = tmp_path / name.replace(" ", "_")
        shutil.copytree(base, data)
        named = str(breaker(data))
        run = tmp_path / f"run_{data.name}"
        r = run_main(pipeline_main, "--data", data, "--run", run, "--folds", "2", "--train", "epochs=1")  # in-process
        last = r.stderr.strip().splitlines()[0]
        assert r.returncode == 1 and last.startswith("error: ") and named in r.stderr, (name, r.stderr)
        assert not (run / "01_eda.ipynb").exists(), "no step ran on broken data"


def test_ensemble_names_runs_without_eval_predictions(base, tmp_path):
    from mask_pstage.training import train
    from mask_pstage.runs import Run
    from mask_pstage.ensemble import model_predictions, repredict

    args = {
        **TRAIN,
        "data_dir": base,
        "out_dir": tmp_path / "run",
        "cache_dir": tmp_path / "cache",
        "predict_eval": False,
    }
    train(**args)
    run = Run(tmp_path / "run")
    with pytest.raises(ValueError, match="trained with predict_eval false"):
        repredict(run, tta=True)
    with pytest.raises(FileNotFoundError, match=f"no eval predictions .*{run.name}.*predict_eval true"):
        model_predictions([run])


def test_fold_split_follows_fold_seed_not_seed(base):
    from mask_pstage.training import make_params
    from mask_pstage.preprocess import prepare_data

    folds = lambda **kw: prepare_data(
        make_params(data_dir=base, n_folds=3, pretrained=False, **kw), cache=False
    ).table.fold.tolist()
    assert folds(seed=1) == folds(seed=2)  # training noise changes, the split stays comparable
    assert folds(fold_seed=1) != folds(fold_seed=2)
