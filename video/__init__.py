"""Reading video files: a clip span's middle frame and its re-encoded training copy (PyAV)."""
