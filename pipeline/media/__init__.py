"""Media in and out: ``probe``, ``decode`` (the ffmpeg pipe and the in-process ``libav`` path),
``encode``, ``audio``, ``yuv`` (I420 frames), ``ffmpeg`` (the binary and its safe options) and
``background`` (the threads that keep decoder and encoder busy)."""
