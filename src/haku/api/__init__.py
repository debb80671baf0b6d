"""CRD models and the hand-written CRD YAML: Haku's API contract."""
