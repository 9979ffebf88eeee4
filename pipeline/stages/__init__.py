"""Pipeline stages: each maps input artifact directories and its config section to output files."""
