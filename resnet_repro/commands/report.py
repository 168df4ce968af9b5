"""`resnet-repro report`: a sweep's table, heat map, curves and TensorBoard hparams, or one run's
figures."""

from __future__ import annotations

import sys
from pathlib import Path

from resnet_repro.commands.hydra_app import PROG, fail
from resnet_repro.config import UserError


def report_command(args: list[str]) -> None:
    import argparse

    from resnet_repro.reporting import report

    p = argparse.ArgumentParser(
        prog=f"{PROG} report",
        description="Summarize a Hydra multirun directory (table, CSV, heat map, curves, TensorBoard "
        "hparams), or plot one run directory (curves.png, stabilizer.png).",
        epilog=f"example:\n  {PROG} report multiruns/demo/<date>\n  {PROG} report runs/demo/<id>",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", type=Path, metavar="MULTIRUN_DIR|RUN_DIR")
    p.add_argument("--no-hparams", action="store_true", help="do not write TensorBoard hparams")
    p.add_argument(
        "--compare",
        type=Path,
        metavar="OTHER_SWEEP",
        help="another sweep (e.g. the proxy of this one): its clipping statistics per max norm "
        "beside this sweep's in report.md",
    )
    ns = p.parse_args(args)
    try:
        left_out: list[str] = []
        rows = report.collect(ns.dir, left_out)
        for line in left_out:
            print(f"{PROG}: warning: {line}", file=sys.stderr)
        compare = None if ns.compare is None else report.collect(ns.compare)
        if report.is_run_dir(ns.dir):  # one run: its own figures; a table of one row needs no files
            paths = report.write_run_figures(ns.dir)
        else:
            paths = report.write_report(rows, ns.dir, compare, "" if ns.compare is None else ns.compare.name)
            if not ns.no_hparams:
                report.write_hparams(rows)
    except UserError as e:
        fail(str(e))
    print(report.markdown_table(rows))
    if not report.is_run_dir(ns.dir):  # the answer last, where the terminal leaves it in view
        clipping = report.clipping_table(rows, compare, "" if ns.compare is None else ns.compare.name)
        print(
            "\n"
            + (f"Clipping per max norm:\n\n{clipping}\n\n" if clipping else "")
            + report.answer_text(rows)
        )
    print("\n" + "\n".join(f"{kind}: {path}" for kind, path in paths.items()))
