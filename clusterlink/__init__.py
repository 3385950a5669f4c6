"""Cluster-link gateways: east-west TCP between clusters over mutual TLS."""
