"""The FOLK teacher (paper section 3.1): projection of 3D instances into RGB-D frames,
multi-view selection (Eq. 1), density-guided mask completion (Eq. 2-5) and mask pooling
of CLIP dense features (Eq. 6). Configuration in :mod:`training.teacher.config`.
"""
