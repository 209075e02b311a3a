"""Pure functions: tensors in, tensors out. No Lightning import, no I/O, no global state."""

from lightning_info.functional.diffusion import diffusion_kernel, gaussian_affinity
from lightning_info.functional.dse import (
    cluster_reference,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)
from lightning_info.functional.gd_plan import GradientDescentPlan, plan_gradient_descent
from lightning_info.functional.jacobian import (
    empirical_ntk,
    jacobian_features,
    kernel_from_features,
    model_outputs,
    per_sample_jacobians,
)
from lightning_info.functional.lanczos import stochastic_lanczos_quadrature
from lightning_info.functional.shannon import (
    classic_shannon_entropy,
    classic_shannon_mutual_information,
)
from lightning_info.functional.sui import (
    NotPositiveDefiniteError,
    UniqueInformation,
    loo_weight_decay,
    smooth_unique_information,
    unique_information_from_features,
    unique_information_from_kernels,
    unique_information_with_plan,
)

__all__: list[str] = [
    "GradientDescentPlan",
    "NotPositiveDefiniteError",
    "UniqueInformation",
    "classic_shannon_entropy",
    "classic_shannon_mutual_information",
    "cluster_reference",
    "diffusion_kernel",
    "diffusion_spectral_entropy",
    "diffusion_spectral_mutual_information",
    "empirical_ntk",
    "gaussian_affinity",
    "jacobian_features",
    "kernel_from_features",
    "loo_weight_decay",
    "model_outputs",
    "per_sample_jacobians",
    "plan_gradient_descent",
    "smooth_unique_information",
    "stochastic_lanczos_quadrature",
    "unique_information_from_features",
    "unique_information_from_kernels",
    "unique_information_with_plan",
]
