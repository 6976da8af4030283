"""sealgate: a TLS-terminating, envelope-encrypting S3 proxy."""

__version__ = "0.1.0"
