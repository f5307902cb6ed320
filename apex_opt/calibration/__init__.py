"""Calibration to a user's cluster: profiles of engine and hardware constants, and the fit that writes them.

* :mod:`.constants`: the constants a calibration may set, their meaning and physical range;
* :mod:`.profile`: a profile file, and applying it (``--calibration FILE``, ``Specs.calibration``);
* :mod:`.fit`: which constants measurements determine, and a bounded least-squares fit of those;

:mod:`apex_opt.calibrate` (``apex-opt calibrate``) uses them: measured runs in, a profile and its before/after
errors out.
"""

from .constants import CONSTANTS, Constant
from .profile import CalibrationProfile, active, load_profile, serving_constants

__all__ = ["CONSTANTS", "CalibrationProfile", "Constant", "active", "load_profile", "serving_constants"]
