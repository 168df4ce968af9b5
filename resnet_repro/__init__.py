"""resnet-repro: reproduce ResNet-50 on ImageNet-1K with Hydra, DALI and DDP."""

__version__ = "0.1.0"
