from resnet_repro.models.resnet import MODEL_NAMES, build_model

__all__ = ["MODEL_NAMES", "build_model"]
