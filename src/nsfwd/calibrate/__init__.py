"""`nsfwd calibrate`: choose a policy's threshold from the user's own labelled images.

* :mod:`~nsfwd.calibrate.dataset`: the folder layouts and each policy's truth
* :mod:`~nsfwd.calibrate.metrics`: operating points, precision/recall, ROC AUC, the choice
* :mod:`~nsfwd.calibrate.calibration`: classify once (the `nsfwd classify` pipeline), calibrate
  every policy, the ``--json`` document
* :mod:`~nsfwd.calibrate.summary`: the printed summary
* :mod:`~nsfwd.calibrate.plots` and :mod:`~nsfwd.calibrate.report`: the HTML report
  (matplotlib, imported only when a report is asked for)
* :mod:`~nsfwd.calibrate.command`: the command itself
"""

from nsfwd.calibrate.calibration import Calibration, PolicyCalibration, calibrate, score_images
from nsfwd.calibrate.dataset import EXPECTED_LAYOUT, LabelledSet, LayoutError, find_labelled
from nsfwd.calibrate.metrics import Counts, OperatingPoint, Target, choose, operating_points

__all__ = [
    "EXPECTED_LAYOUT",
    "Calibration",
    "Counts",
    "LabelledSet",
    "LayoutError",
    "OperatingPoint",
    "PolicyCalibration",
    "Target",
    "calibrate",
    "choose",
    "find_labelled",
    "operating_points",
    "score_images",
]
