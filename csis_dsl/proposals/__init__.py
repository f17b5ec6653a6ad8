"""Proposal families (one file each) and the generated inference network."""
