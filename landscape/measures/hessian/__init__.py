"""Curvature of an objective: operators (``operator``) and one estimator per paper.

- :mod:`.operator`: the :class:`LinearOperator` protocol, :class:`DenseOperator` (the reference),
  :class:`HessianOperator` (exact HVPs of an objective), :class:`Counted`;
- :mod:`.lanczos1950`: extreme eigenvalues by Lanczos with full reorthogonalisation;
- :mod:`.mises1929power`: the same by deflated power iteration, correct for indefinite spectra;
- :mod:`.hutchinson1989`, :mod:`.meyer2021hutchpp`, :mod:`.epperly2024xtrace`: the trace (Hutchinson,
  Hutch++, XTrace), each with its standard error;
- :mod:`.ghorbani2019slq`: the spectral density by stochastic Lanczos quadrature;
- :mod:`.basis`: the bounded store (memory or disk) of the weight-sized vectors they keep.

Every estimator takes any operator and reports the products it spent itself.
"""

from landscape.measures.hessian.basis import Basis, BasisPolicy
from landscape.measures.hessian.epperly2024xtrace import xtrace
from landscape.measures.hessian.ghorbani2019slq import spectral_density
from landscape.measures.hessian.hutchinson1989 import Trace, hutchinson_trace
from landscape.measures.hessian.lanczos1950 import Spectrum, lanczos
from landscape.measures.hessian.meyer2021hutchpp import hutchpp_trace
from landscape.measures.hessian.mises1929power import power_iteration
from landscape.measures.hessian.operator import (Counted, DenseOperator, HessianOperator, LinearOperator,
                                                 math_attention)

TRACE_METHODS = {"hutchinson": hutchinson_trace, "hutchpp": hutchpp_trace, "xtrace": xtrace}

__all__ = ["Basis", "BasisPolicy", "TRACE_METHODS", "hutchpp_trace", "xtrace", "Counted", "DenseOperator", "HessianOperator", "LinearOperator", "Spectrum", "Trace",
           "hutchinson_trace", "lanczos", "math_attention", "power_iteration", "spectral_density"]
