"""Eachlabs' prediction API."""
