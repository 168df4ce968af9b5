"""One module per `resnet-repro` command (cli.py dispatches to them); hydra_app.py: the Hydra glue
the Hydra-based ones share."""
