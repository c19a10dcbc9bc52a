"""cryophile: encrypted off-site backups of streams into cold object storage."""

__version__ = "0.1.0"
