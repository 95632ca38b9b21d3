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
from multiprocessing import process, spawn

MAIN_ENV = "PIXWORD_FORKSERVER_MAIN"


def script_env() -> str | None:
    """What the server needs to run the started script (None: there is none to run)."""
    path = spawn.get_preparation_data("pixword").get("init_main_from_path")
    return json.dumps({"path": path, "argv": sys.argv}) if path else None


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
