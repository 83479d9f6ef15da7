"""Configuration: every setting declared once (settings), the binding-list syntax (portspec),
the configuration file (store) and the private files and folders everything writes (private)."""
