"""Independent brute-force leave-one-out reference for smooth unique information.

For every sample i the linearized model is retrained on S without i **from scratch in parameter
space**, written plainly: explicit gradient-descent iterations (finite t) or the explicit
minimizer (t = infinity), using the explicit Jacobians J (N, K, P). No kernel identities, no
block inverses, no eigen-tricks: this is what the fast engine must reproduce.

Conventions (docs/sui.md sections 2-3): mean loss 1/n sum 1/2 ||f - y||^2 + wd/2 ||w - w0||^2, step
``lr``; the run on n samples uses eta = lr / n in the sum form, and the L2 strength is
``lam = N * wd`` for every run ("principal" convention, the authors') or ``n * wd`` ("exact").
"""

from __future__ import annotations

import torch


def _train(jac, resid, lr, n_eff, lam, t):
    """Return w - w0 (P,) after GD on the linearized sum-form loss.

    jac: (n*K, P), resid: (n*K,) residual f0 - y at w0. GD on
    1/2 ||jac d + resid||^2 + lam/2 ||d||^2 with step eta = lr / n_eff, from d = 0.
    """
    p = jac.shape[1]
    eta = lr / n_eff
    if t is None:
        if lam > 0:
            return -torch.linalg.solve(
                jac.T @ jac + lam * torch.eye(p, dtype=jac.dtype), jac.T @ resid
            )
        # GD from 0 converges to the minimum-norm interpolant
        return -torch.linalg.pinv(jac) @ resid
    d = torch.zeros(p, dtype=jac.dtype)
    for _ in range(t):
        d = d - eta * (jac.T @ (jac @ d + resid) + lam * d)
    return d


def brute_force_loo(jac, jac_star, f0, y, *, lr, t, wd, convention="principal"):
    """Leave-one-out by retraining, for every sample.

    Args:
        jac: (N, K, P) train Jacobians; jac_star: (M, K, P) held-out Jacobians or None.
        f0: (N, K) outputs at w0; y: (N, K) targets.
        lr, t, wd: hyper-parameters (t=None: converged).
        convention: "principal" (lam = N wd for every run) or "exact" (lam = n wd).

    Returns:
        dict with w_sq (N,), f_sq (N,) or None, self_change (N, K), and loo_residual (N, K): the
        prediction of the run without sample i at x_i minus y_i.
    """
    n, k, p = jac.shape
    flat = jac.reshape(n * k, p)
    resid = (f0 - y).reshape(n * k)
    d_full = _train(flat, resid, lr, n, n * wd, t)
    w_sq, f_sq, self_change, loo = [], [], [], []
    for i in range(n):
        keep = [j for j in range(n) if j != i]
        rows = [j * k + c for j in keep for c in range(k)]
        lam = n * wd if convention == "principal" else (n - 1) * wd
        d_loo = _train(flat[rows], resid[rows], lr, n - 1, lam, t)
        dw = d_loo - d_full
        w_sq.append(float(dw @ dw))
        self_change.append(jac[i] @ dw)
        loo.append(f0[i] + jac[i] @ d_loo - y[i])
        if jac_star is not None:
            df = jac_star @ dw  # (M, K)
            f_sq.append(float((df**2).sum(1).mean()))
    return {
        "w_sq": torch.tensor(w_sq, dtype=torch.float64),
        "f_sq": torch.tensor(f_sq, dtype=torch.float64) if jac_star is not None else None,
        "self_change": torch.stack(self_change),
        "loo_residual": torch.stack(loo),
    }
