"""The `pixword` command: prep | fit | validate | generate | eval | inspect | print-config
(and grid, compare, bench, convert-ckpt, export). Each subcommand has --help.

`parser.py` declares the subcommands and checks their arguments; `commands.py` runs them;
`main` turns the errors of bad input (`errors.PixwordError`) into one line and exit 2.
"""

from __future__ import annotations

import os
import sys

from pixword_lit.cli.parser import build_parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PIXWORD_DEBUG", "") not in ("", "0")
    argv = [x for x in argv if x != "--debug"]
    if argv and argv[0] == "prep":
        from data_prep.cli import main as prep_main

        return prep_main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # overrides may come after --options too
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    from pixword_lit.errors import PixwordError

    try:
        return args.fn(args)
    except PixwordError as e:
        if debug:
            raise
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        name = " ".join(x for x in (args.cmd, getattr(args, "what", None)) if x)  # eval captions
        print(f"pixword {name}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
