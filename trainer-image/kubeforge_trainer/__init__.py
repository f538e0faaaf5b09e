"""Stages that run inside Kubeforge training/evaluation pods (and locally under `kubeforge run`)."""

__version__ = "0.1.0"
