"""Bayesian flow networks (GeoBFN): the flow, its objective and its any-step sampler."""

from edm_zoo.methods.bfn.objective import BayesianFlow

__all__ = ['BayesianFlow']
