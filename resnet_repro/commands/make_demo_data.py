"""`resnet-repro make-demo-data`: the embedded demo dataset written to a folder."""

from __future__ import annotations

from resnet_repro.commands.hydra_app import PROG, fail
from resnet_repro.config import CONF_DIR, register_configs


def make_demo_data_command(args: list[str]) -> None:
    import argparse

    from resnet_repro.data.demo import build_demo_dataset

    p = argparse.ArgumentParser(
        prog=f"{PROG} make-demo-data",
        description="Write the embedded demo dataset (digits; train/ and val/ class folders). "
        "`resnet-repro train` writes it itself when missing.",
        epilog=f"example:\n  {PROG} make-demo-data --out /tmp/demo-digits",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=None, help="output folder (default: data.root of data=demo)")
    ns = p.parse_args(args)
    out = ns.out
    if out is None:
        from hydra import compose, initialize_config_dir

        register_configs()
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            out = compose(config_name="config").data.root
    from resnet_repro.checkpoint import folder_problem

    problem = folder_problem(out, "--out" if ns.out is not None else "data.root")
    if problem is not None:
        fail(problem)
    try:
        print(build_demo_dataset(out))
    except OSError as e:  # a folder the checks above cannot foresee (/proc, a full disk)
        fail(f"the demo data cannot be written to {out}: {e.strerror or e} ({e.filename or out})")
