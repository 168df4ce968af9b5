"""The cluster: who each process is (torchrun, SLURM or alone), SLURM as this tool asks it, and preemption."""
