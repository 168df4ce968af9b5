"""hydra/launcher=slurm and hydra/launcher=local: hydra-submitit-launcher's launchers, with each
sweep point's result read on its own (resnet_repro/commands/sweep_launcher.py says why)."""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from resnet_repro.commands.sweep_launcher import EachPointOnItsOwn


class SlurmSweepLauncher(EachPointOnItsOwn, SlurmLauncher):
    """submitit's SLURM launcher; a point whose job ends without a result does not end the sweep."""


class LocalSweepLauncher(EachPointOnItsOwn, LocalLauncher):
    """submitit's local launcher; a point whose job ends without a result does not end the sweep."""
