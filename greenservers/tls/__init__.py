"""TLS for HTTPS and LDAPS: the certificate files and contexts (certificates) and the ACME
client that keeps a trusted certificate issued (acme)."""
