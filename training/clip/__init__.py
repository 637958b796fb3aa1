"""Training of the synthetic-world CLIP (issue 4, section 1): object views and dense masks
from rendered frames (:mod:`training.clip.dataset`), the trainer (:mod:`training.clip.train`).
"""
