"""Environments on the host: gymnasium's vector env and the running normalisation of what it returns."""
