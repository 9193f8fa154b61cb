"""conformance: checks numerically that every backend matches mhc_spec.

``python -m conformance`` runs the golden vectors through each backend (torch eager, torch
compiled on a subset, JAX loop, JAX scan) and prints a matrix of worst errors against the
tolerances in :mod:`conformance.tolerances`.
"""
