"""Faces: the types (``types``: Face, Mouth, the FaceTracker interface), the detector backends
(``backends``: InsightFace, dlib; ``make_tracker``) and tracking over a video (``tracking``)."""
