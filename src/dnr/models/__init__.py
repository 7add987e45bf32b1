"""Models: [0,1] images in, logits out; normalization is the first module.

Importing this package registers the built-in architectures (``vgg16``, ``resnet18``,
``wrn28_10``, ``wrn34_10``); ``model.name`` may also name a foreign model
(``package.module:callable`` or ``timm:<name>``, see ``foreign.py``).
"""

from dnr.models import resnet as _resnet  # noqa: F401  (registers resnet18)
from dnr.models import vgg as _vgg  # noqa: F401  (registers vgg16)
from dnr.models import wide_resnet as _wide_resnet  # noqa: F401  (registers wrn28_10, wrn34_10)
from dnr.models.batchnorm import refresh_batchnorm_stats
from dnr.models.channels import channel_groups, derive_channel_groups
from dnr.models.foreign import ForeignModel
from dnr.models.layers import CIFAR_MEAN, CIFAR_STD, WEIGHT_INITS, Normalize, init_weights
from dnr.models.registry import create_model, list_models, register_model

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "ForeignModel",
    "Normalize",
    "WEIGHT_INITS",
    "init_weights",
    "refresh_batchnorm_stats",
    "channel_groups",
    "create_model",
    "derive_channel_groups",
    "list_models",
    "register_model",
]
