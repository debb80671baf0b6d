"""Backups of one tenant, restores into a new one (haku backup / haku restore)."""
