"""Phones: the stock provisioning profiles of the major vendors (profiles, templates/), the time zone in
each vendor's form (timezones) and the record of the phones that fetched their files (seen)."""
