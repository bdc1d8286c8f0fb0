"""A job's life above the run loop: the service the UI, API and CLI call, settings, work
folders, example media, recording in the history with scores, and the executors that run
generation (threads or worker processes) behind one interface."""
