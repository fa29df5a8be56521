"""Seed 000: charging the inhomogeneous Dicke battery — training runs, the paper's tables and figures, studies, deployment."""
