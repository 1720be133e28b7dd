"""Intake: bytes in, the pictures a viewer may see out, or a typed error saying why not.

Read in the order an upload meets them: :mod:`.limits` and :mod:`.errors` (what is refused),
:mod:`.sniff` (the format, by content), :mod:`.headers` and :mod:`.jpeg_structure` (sizes and
structure before any decoder runs), :mod:`.decode` (Pillow, every frame), :mod:`.frames`
(which frames are judged), :mod:`.colour` and :mod:`.views` (what a viewer sees: sRGB, over
white and black), :mod:`.checked` (an upload's pictures kept between its check and its
judgement) and :mod:`.files` (files and folders). No torch: the HTTP side imports it.
"""

from nsfwd.intake.decode import (
    ImageHeader,
    exif_orientation,
    load_image,
    load_prepared,
    load_views,
    read_header,
)
from nsfwd.intake.errors import (
    CorruptImageError,
    ImageComplexityError,
    ImageDimensionsError,
    ImageError,
    ImageTooLargeError,
    UnscorableImageError,
    UnsupportedFormatError,
)
from nsfwd.intake.files import find_images, load_image_file, read_image_file
from nsfwd.intake.limits import ImageLimits
from nsfwd.intake.sniff import SUPPORTED_FORMATS, sniff_format
from nsfwd.intake.views import View, Views

__all__ = [
    "SUPPORTED_FORMATS",
    "CorruptImageError",
    "ImageComplexityError",
    "ImageDimensionsError",
    "ImageError",
    "ImageHeader",
    "ImageLimits",
    "ImageTooLargeError",
    "UnscorableImageError",
    "UnsupportedFormatError",
    "View",
    "Views",
    "exif_orientation",
    "find_images",
    "load_image",
    "load_image_file",
    "load_prepared",
    "load_views",
    "read_header",
    "read_image_file",
    "sniff_format",
]
