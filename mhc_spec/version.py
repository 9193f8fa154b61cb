"""The spec's version: bumped whenever a definition changes the golden vectors' numbers."""

SPEC_VERSION = "1.0.0"
