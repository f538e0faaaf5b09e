"""Kubeforge: a Kubernetes control plane for the language-model lifecycle."""

__version__ = "0.1.0"
