"""The first module the DataLoader workers' fork server imports (data/workers.py): it runs the
started script there once, under the name multiprocessing gives it in a child (`__mp_main__`),
so that every worker forked from the server finds it loaded and does not run it again
(multiprocessing.spawn._fixup_main_from_path compares the paths). This is what
`set_forkserver_preload(["__main__"])` is documented to do; Python 3.11's fork server never
receives the script's path (it asks for `main_path`, the preparation data names it
`init_main_from_path`), so the path comes through the environment instead, with the script's
command line (a worker gets it before it would run the script: spawn.prepare).

A script that fails to import here is left to multiprocessing as before (each worker runs it).
`python -m pixword_lit.cli` and the `pixword` command have nothing to run (multiprocessing
skips `__main__` modules of packages; the console script only defines its entry point).
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from multiprocessing import process, spawn

MAIN_ENV = "PIXWORD_FORKSERVER_MAIN"


@contextmanager
def script_for_server(starting: bool):
    """In the training process, around starting the server (`starting`: it is not running
    yet): the started script's path and command line in the environment the server inherits,
    removed again after."""
    path = spawn.get_preparation_data("pixword").get("init_main_from_path") if starting else None
    if path:
        os.environ[MAIN_ENV] = json.dumps({"path": path, "argv": sys.argv})
    try:
        yield
    finally:
        os.environ.pop(MAIN_ENV, None)


def _import_main(env: str) -> None:
    script = json.loads(env)
    sys.argv = script["argv"]
    process.current_process()._inheriting = True  # as multiprocessing's own preload does
    try:
        spawn.import_main_path(script["path"])
    except (Exception, SystemExit):  # the workers run it, as they would have
        pass
    finally:
        del process.current_process()._inheriting


_env = os.environ.pop(MAIN_ENV, None)
if _env:
    _import_main(_env)
