"""Backend: the checked program executed as a vectorised Pyro model."""
