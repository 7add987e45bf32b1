"""The study: what DNR gives a user, against faithful alternatives (see README.md here)."""
