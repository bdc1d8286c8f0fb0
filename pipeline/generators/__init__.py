"""Generators: the interface (``base``), the registry and the choice of one (``registry``), and
one module or subpackage per generator: ``passthrough``, ``baseline`` (with ``mouth``),
``wav2lip/``. ``blend`` holds the patch compositing they share."""
