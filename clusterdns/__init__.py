"""clusterdns: in-cluster DNS for Kubernetes Service discovery."""

__version__ = "0.1.0"
