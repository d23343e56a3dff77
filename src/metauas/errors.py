"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""


class MetaUASError(Exception):
    """Base class for every error a user can cause (bad file, bad option, bad checkpoint)."""


class InputError(MetaUASError):
    """An input image, folder or option is unusable."""


class CheckpointError(MetaUASError):
    """A checkpoint file cannot be read or does not fit the model."""


class UnsupportedImageError(InputError):
    """A file that is not one of the accepted image formats (see metauas.inference.images)."""


class ImageTooLargeError(InputError):
    """An image whose header declares more pixels than allowed (decompression bombs)."""
