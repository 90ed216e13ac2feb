"""Scene mode: per-object masks and crops, and the similarity that places each object in the camera frame."""
