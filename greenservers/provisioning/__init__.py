"""Phone provisioning: the files and templates phones fetch over TFTP and /prov/ (files), the
uploads they write (uploads) and the stock profiles, time zones and record of phones (phones)."""
