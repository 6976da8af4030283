"""`sealgate encrypt` / `sealgate decrypt`: the object format on local files, without the proxy.

The package by job: `files` (outputs that appear whole or not at all), `metadata` (the JSON
documents that carry an envelope), `keys` (where the master keys come from), `encrypt`,
`decrypt`, and `commands` (the two click commands).

``encrypt`` turns a file into exactly what sealgate's PutObject stores on the backend: a body
(single layout, one stream, docs/FORMAT.md §6) and the ``x-amz-meta-*`` headers that carry the
envelope. Upload both straight to the backend under the bucket and key given here and the object
reads through sealgate. ``decrypt`` is the reverse: a body and its metadata fetched straight from
the backend (``aws s3api get-object``, boto3) become the plaintext again, for single-layout
objects and, given the sealed manifest, for multipart ones. The data stays recoverable with
nothing but the keyring (or KMS) and this command.

Both stream in 1 MiB reads and never hold a file in memory. Output goes to ``OUT.partial`` and
is renamed to ``OUT`` only when every segment has authenticated, so a failure never leaves
partial or unauthenticated plaintext under the requested name.

Encryption context: a data key is wrapped for ``{"sealgate:bucket": B, "sealgate:key": K}``, so
the bucket and object key are part of the ciphertext. ``encrypt`` needs ``--bucket`` and takes
the object key from ``--object-key``, by default the input file's name (as ``aws s3 cp FILE
s3://B/`` names it). ``decrypt`` needs both: the wrong name does not decrypt.

``encrypt`` seals the plaintext MD5 into the digest slot (``e = "tail"``), as the proxy does for
clients that sign their payload, so sealgate reports the MD5 as the object's ETag; ``decrypt``
checks the plaintext against that MD5 (or the Content-MD5 ETag) as well. Decrypted files are
created mode 0600.

Master keys come from ``--config`` (its [kms] section, via `proxy.wiring.make_keyring`), a
local keyring file (``--keyring``), or AWS KMS with the default credential chain (``--aws-kms``,
for recovery where no sealgate config exists). Key policies (``[[keys]]``) are not consulted:
whoever holds the keyring passphrase or KMS credentials is acting as the operator.

The functions here are synchronous (keyring calls run under `asyncio.run`): call them from
threads or plain code, not from a running event loop.
"""
