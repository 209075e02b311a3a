"""Pure functions: tensors in, tensors out. No Lightning import, no I/O, no global state."""

from lightning_info.functional.jacobian import (
    empirical_ntk,
    jacobian_features,
    model_outputs,
    per_sample_jacobians,
)
from lightning_info.functional.sui import (
    UniqueInformation,
    smooth_unique_information,
    unique_information_from_features,
    unique_information_from_kernels,
)

__all__: list[str] = [
    "UniqueInformation",
    "empirical_ntk",
    "jacobian_features",
    "model_outputs",
    "per_sample_jacobians",
    "smooth_unique_information",
    "unique_information_from_features",
    "unique_information_from_kernels",
]
