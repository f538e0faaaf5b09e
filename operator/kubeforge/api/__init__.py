"""Kubeforge API packages (one per version)."""
