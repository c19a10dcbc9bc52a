"""The archive pipeline: compress, encrypt (OpenPGP), split; and back."""
