"""resnet-repro's Hydra launchers (Hydra takes launchers from the hydra_plugins package only)."""
