"""dynlm: a dynamical language model with three levels of memory."""
__version__ = "0.1.0"
