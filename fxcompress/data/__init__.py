"""Data: CIFAR-10 from its JPEG archive, image folders, scikit-learn's digits; all as ArrayLoaders."""
from .cifar10 import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, cifar10, find_archive
from .digits import digits
from .image_folder import image_folder
from .loader import ArrayLoader, random_crop_flip, unpack_batch

__all__ = ["ArrayLoader", "random_crop_flip", "unpack_batch", "cifar10", "find_archive", "digits", "image_folder",
           "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD"]
