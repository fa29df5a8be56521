"""Seed 004: the XY-chain supply chain — its run specs and sweeps."""
