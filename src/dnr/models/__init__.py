"""Models: [0,1] images in, logits out; normalization is the first module.

Importing this package registers the built-in architectures (``vgg16``, ``resnet18``).
"""

from dnr.models import resnet as _resnet  # noqa: F401  (registers resnet18)
from dnr.models import vgg as _vgg  # noqa: F401  (registers vgg16)
from dnr.models.batchnorm import refresh_batchnorm_stats
from dnr.models.layers import CIFAR_MEAN, CIFAR_STD, WEIGHT_INITS, Normalize, init_weights
from dnr.models.registry import create_model, list_models, register_model

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "Normalize",
    "WEIGHT_INITS",
    "init_weights",
    "refresh_batchnorm_stats",
    "create_model",
    "list_models",
    "register_model",
]
