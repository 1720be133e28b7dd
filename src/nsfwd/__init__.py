"""nsfwd: self-hosted NSFW image moderation."""

__version__ = "0.1.0"
