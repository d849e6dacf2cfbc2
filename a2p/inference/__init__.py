"""a2p.inference: sampling face and body motion from audio with exported models.

`Pipeline` is the public way in (`Pipeline.from_exports(...).sample(audio, ...)`); `a2p sample`
runs the same class over files and ranks (`job.py`).
"""

from a2p.inference.pipeline import Pipeline

__all__ = ["Pipeline"]
