"""The demo page at ``/``: pick or drop an image, see the model's labels, each policy's verdict
under a threshold slider, and the time taken.

Plain HTML, CSS and JavaScript in ``static/``, shipped as package data: no build step, nothing
from a CDN. The page is a client of the public API like any other (``POST /v2/job``,
``GET /v1/models``), with the token its user gives it; :mod:`nsfwd.demo.page` serves the files
and the little the page needs to know beforehand (``/demo/config.json``).
"""

from nsfwd.demo.page import install

__all__ = ["install"]
