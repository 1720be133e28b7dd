"""A model made slower from outside: for tests that must catch a real ``nsfwd`` process in the
middle of a prediction without paying for a full-size model."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path


def slowed_predictions(folder: Path, seconds: float) -> dict[str, str]:
    """The environment that makes every ``Classifier.predict`` of a Python process started
    with it take ``seconds`` longer: a ``sitecustomize`` in ``folder``, first on its path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import time

            from nsfwd.models.classifier import Classifier

            _predict = Classifier.predict


            def predict(self, batch):
                time.sleep({seconds!r})
                return _predict(self, batch)


            Classifier.predict = predict
            """
        )
    )
    path = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path)}
