"""A command line's `main` run in the test's own process, answering like `subprocess.run(..., capture_output=True,
text=True)`: the same argument parsing, checks and one-line errors, without importing torch again (10 s a process on
2 cores). Tests of what a separate process does (signals, kills, locks held by another process, exit codes) keep
running real processes."""

import contextlib, io, subprocess


def run_main(main, *args) -> subprocess.CompletedProcess:
    "`main([args])`: exit status, stdout and stderr as a process would give them (sys.exit(text): 1, text on stderr)."
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv = [str(a) for a in args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as e:
            if isinstance(e.code, int) or e.code is None:
                code = e.code or 0
            else:
                code = 1
                print(e.code, file=err)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def train_here(*args) -> subprocess.CompletedProcess:
    "`python -m mask_pstage.training ARGS`, in this process."
    from mask_pstage.training import main

    return run_main(main, *args)
