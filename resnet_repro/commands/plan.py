"""`resnet-repro plan`: steps, images and expected wall time of a run or a `-m` sweep, before it is
queued."""

from __future__ import annotations

import json

from resnet_repro.commands.hydra_app import PROG, compose_jobs, fail, naming_the_point, refuse_unknown_options
from resnet_repro.config import UserError, validate

HELP = f"""usage: {PROG} plan [-m] [overrides]

What a run (or, with -m, a sweep) will cost before you queue it: images per epoch, steps per epoch,
total steps and images processed, each epoch's training crop (progressive resizing included), and the
expected training and evaluation time from a per-GPU img/s that is given or measured on this machine
at each training crop. Nothing is trained or launched.

Also the weight decay shrink x = ln(w0/wT): weight decay alone shrinks a decayed weight by exp(-x)
over the run (SGD: sum of LR x wd / (1 - momentum), 10x the plain sum at momentum 0.9; AdamW:
-sum of ln(1 - LR x wd); Adam: none, its L2 term is rescaled per parameter; docs/recipes.md).

key overrides:
  any training override (experiment=, data.root=, trainer.*, ...), and
  plan.img_per_s_per_gpu=N      training img/s of ONE GPU to assume (default: measure a few steps on
                                this machine's GPU; without one, trainer.device=cpu measures its CPU)
  plan.img_per_s_size=PX        the training crop that number holds at (default 224)
  plan.eval_img_per_s_per_gpu=N evaluation img/s of one GPU (default: 3 x the training rate)
  plan.scaling_efficiency=F     fraction of linear scaling over the processes (default 1.0)
  plan.train_images=N           training images per epoch when data.root is not readable here
  plan.world_size=N             processes the run will use
  plan.measure_steps=N          timed steps of the short measurement

example:
  {PROG} plan experiment=fast_16 plan.train_images=1281167 plan.img_per_s_per_gpu=2470
  {PROG} plan -m experiment=imagenet_paper data.root=/data/imagenet optim.weight_decay=1e-4,5e-5
"""


def plan_command(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        print(HELP)
        return
    from resnet_repro.planning.plan import format_table, plan

    refuse_unknown_options(args, "plan", own=("-m", "--multirun"), hydra_flags=False)
    try:
        # an unset data.root is left empty: plan.train_images may stand in for the data (plan says so if not)
        jobs = [(job, cfg) for job, cfg, _ in compose_jobs(args)]
        for number, (_, cfg) in enumerate(jobs, start=1):
            with naming_the_point([job for job, _ in jobs], number):
                validate(cfg)
        record = plan(jobs)
    except UserError as e:
        fail(str(e))
    print(format_table(record))
    print(json.dumps(record))
