"""Administering the banks of known images over HTTP (:mod:`.routes`): ``/v1/banks``."""
