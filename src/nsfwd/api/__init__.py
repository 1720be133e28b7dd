"""The HTTP app: one module per wire protocol, plus auth, errors and health."""

from nsfwd.api.app import create_app

__all__ = ["create_app"]
