"""OpenAI's moderation API for images (:mod:`.moderations`), its model list (:mod:`.models`) and its
error body and auth (:mod:`.wire`)."""
