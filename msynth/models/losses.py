"""Losses of the DVR synthesis networks (thesis 003 ch. 3 §3.2.2 and ch. 4 §4.2.3, §4.3.1).

Tensor layout: ``N C D H W`` for images; region-of-interest labels are integer tensors broadcastable to the
image's shape (``N 1 D H W`` for one label map per sample), with the codes :data:`OTHER`, :data:`NAWM` and
:data:`LESION`. A batch element is a "subject" of the thesis's equations (a whole volume, or a training patch).

* :func:`l1_loss` — the Sketcher's L1 (eq. 3.4).
* :func:`weighted_l1_loss` — the Refiner's ROI-weighted L1, WL1 (eq. 3.5).
* :func:`normalized_weighted_l1_loss` — the CF-SAGAN Refiner's normalised weighted L1, NWL1 (eq. 4.4).
* :func:`adversarial_loss` — the cGAN cross-entropy (eqs. 3.1–3.3), per patch, with the label smoothing of §4.3.1.

torch is imported at module level: import this module only inside the nodes that train or evaluate networks.
"""

from __future__ import annotations

import torch
from torch.nn import functional

__all__ = ["LESION", "NAWM", "OTHER", "ROI_CODES", "adversarial_loss", "l1_loss", "normalized_weighted_l1_loss",
           "weighted_l1_loss"]

#: ROI label of every voxel that is neither lesion nor NAWM (grey matter, CSF, background)
OTHER = 0
#: ROI label of normal-appearing white matter: the white matter outside visible lesions
NAWM = 1
#: ROI label of (T2-hyperintense) lesions
LESION = 2
#: all ROI codes, in label order
ROI_CODES = (OTHER, NAWM, LESION)


def _check_pair(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target must have the same shape, got {tuple(prediction.shape)} and "
                         f"{tuple(target.shape)}")


def l1_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error, the Sketcher's L1 term (thesis 003 eq. 3.4), optionally inside a mask.

    Parameters
    ----------
    prediction, target : torch.Tensor
        Images of the same shape (``N C D H W``).
    mask : torch.Tensor, optional
        Boolean tensor broadcastable to ``prediction``'s shape; only its voxels count. Default: all voxels.

    Returns
    -------
    torch.Tensor
        Scalar: ``mean |target − prediction|`` over all (or the masked) voxels, channels and samples.

    Raises
    ------
    ValueError
        If the shapes differ, or the mask is not boolean or selects no voxel.

    Examples
    --------
    >>> l1_loss(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.5, 2.0, 3.0]))
    tensor(0.5000)
    """
    _check_pair(prediction, target)
    error = (prediction - target).abs()
    if mask is None:
        return error.mean()
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a boolean tensor, got dtype {mask.dtype}")
    selected = error[mask.expand_as(error)]
    if selected.numel() == 0:
        raise ValueError("mask selects no voxel")
    return selected.mean()


def _roi_error_sums(prediction: torch.Tensor, target: torch.Tensor,
                    roi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-sample sums of ``|target − prediction|`` and voxel counts in each ROI.

    Returns ``(sums, counts, voxels)``: ``sums`` and ``counts`` are ``N × 3`` (columns in :data:`ROI_CODES` order)
    and ``voxels`` is the number of values per sample (voxels × channels).
    """
    _check_pair(prediction, target)
    if roi.dtype.is_floating_point or roi.dtype == torch.bool or roi.is_complex():
        raise ValueError(f"roi must be an integer label tensor (codes {ROI_CODES}), got dtype {roi.dtype}")
    try:
        labels = roi.expand_as(prediction)
    except RuntimeError:
        raise ValueError(f"roi of shape {tuple(roi.shape)} does not broadcast to the prediction's shape "
                         f"{tuple(prediction.shape)}") from None
    labels = labels.reshape(prediction.shape[0], -1).long()
    if labels.numel() and (labels.min() < min(ROI_CODES) or labels.max() > max(ROI_CODES)):
        raise ValueError(f"roi labels must be {OTHER} (other), {NAWM} (NAWM) or {LESION} (lesion); got values "
                         f"{sorted(torch.unique(labels).tolist())}")
    error = (prediction - target).abs().reshape(prediction.shape[0], -1)
    sums = error.new_zeros(error.shape[0], len(ROI_CODES)).scatter_add_(1, labels, error)
    counts = error.new_zeros(error.shape[0], len(ROI_CODES)).scatter_add_(1, labels, torch.ones_like(error))
    return sums, counts, error.shape[1]


def weighted_l1_loss(prediction: torch.Tensor, target: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """ROI-weighted L1 (WL1) of the ch. 3 Refiner (thesis 003 eq. 3.5).

    For each sample, the mean absolute error within each ROI (lesion, NAWM, other) present in it, averaged over
    those ROIs; then the mean over the batch:

        WL1 = 1/N Σ_i 1/|K_i| Σ_{k ∈ K_i} 1/N_k,i Σ_{j ∈ R_k,i} |I_P^{i,j} − Î_P^{i,j}|

    with ``K_i`` the ROIs that have voxels in sample ``i`` and ``N_k,i`` their voxel counts. Each ROI weighs the same
    whatever its size, so the few lesion voxels count as much as all NAWM voxels: this is what turns the Refiner's
    attention to the lesions (§3.2.2).

    Eq. 3.5 sums the three ROI means and divides by the voxel count M of a PET image as well; M is a constant factor
    (absorbed into the weight λ_R of eq. 3.6) that would make the loss depend on the volume or patch size. We
    average over the ROIs present instead of summing: the loss is then on the scale of a plain L1 (equal to it when
    every ROI has the same error), and a control or a patch without lesion is not rewarded for the missing ROI
    (a sum would count it as zero error).

    Parameters
    ----------
    prediction, target : torch.Tensor
        Images of the same shape (``N C D H W``).
    roi : torch.Tensor
        Integer labels (:data:`OTHER`, :data:`NAWM`, :data:`LESION`) broadcastable to ``prediction`` with the same
        batch size, e.g. ``N 1 D H W``.

    Returns
    -------
    torch.Tensor
        Scalar loss, differentiable with respect to ``prediction``.

    Raises
    ------
    ValueError
        If the shapes differ or do not broadcast, or ``roi`` holds another value or is not an integer tensor.

    Examples
    --------
    Lesion error 1 on one voxel, NAWM error 0 on three voxels: WL1 = (1 + 0) / 2, whereas L1 = 1/4.

    >>> weighted_l1_loss(torch.tensor([[1.0, 0, 0, 0]]), torch.zeros(1, 4), torch.tensor([[LESION, NAWM, NAWM, NAWM]]))
    tensor(0.5000)
    """
    sums, counts, _ = _roi_error_sums(prediction, target, roi)
    present = counts > 0
    roi_means = torch.where(present, sums / counts.clamp(min=1), torch.zeros_like(sums))
    return (roi_means.sum(dim=1) / present.sum(dim=1)).mean()


def normalized_weighted_l1_loss(prediction: torch.Tensor, target: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """Normalised weighted L1 (NWL1, "adaptive attention regularization") of the CF-SAGAN Refiner (eq. 4.4).

        NWL1 = 1/(2 n m) Σ_i Σ_j ω_j |I^{i,j} − Î^{i,j}|,   ω_j = 1 − m_k / m   for voxel j in ROI k

    with ``n`` the samples, ``m`` the voxels of a sample and ``m_k`` the voxels of ROI ``k`` (lesion, NAWM or
    other) in that sample: a voxel weighs more the smaller the share of its ROI, in proportion ("can alleviate the
    influence from MS lesion size variety across patients and penalize proportionally", §4.2.3). The factor 2 is
    Σ_k ω_k = 3 − 1 when the three ROIs split the image; we keep it as the thesis writes it, also for samples with
    fewer ROIs. A sample that is a single ROI has ω = 0 everywhere and contributes 0. Counts are per sample (a
    per-cohort count would make ω negative). With several channels, ``m`` and ``m_k`` count voxels × channels.

    Parameters
    ----------
    prediction, target : torch.Tensor
        Images of the same shape (``N C D H W``).
    roi : torch.Tensor
        Integer labels (:data:`OTHER`, :data:`NAWM`, :data:`LESION`) broadcastable to ``prediction`` with the same
        batch size.

    Returns
    -------
    torch.Tensor
        Scalar loss, differentiable with respect to ``prediction``.

    Raises
    ------
    ValueError
        As :func:`weighted_l1_loss`.

    Examples
    --------
    One lesion voxel with error 1 among four (ω = 3/4), NAWM error 0: NWL1 = (3/4 · 1) / (2 · 4) = 0.09375.

    >>> normalized_weighted_l1_loss(torch.tensor([[1.0, 0, 0, 0]]), torch.zeros(1, 4),
    ...                             torch.tensor([[LESION, NAWM, NAWM, NAWM]]))
    tensor(0.0938)
    """
    sums, counts, voxels = _roi_error_sums(prediction, target, roi)
    weights = 1 - counts / voxels
    return ((weights * sums).sum(dim=1) / (2 * voxels)).mean()


def adversarial_loss(logits: torch.Tensor, real: bool, *, generator: torch.Generator | None = None,
                     smoothing: bool = False) -> torch.Tensor:
    """Binary cross-entropy of patch-discriminator logits against "real" or "generated" labels (eqs. 3.1–3.3).

    Each logit judges one non-overlapping patch (:class:`~msynth.models.networks.PatchDiscriminator3D`). As §3.2.4
    states, "the final loss of the 3D patch discriminator is the sum of the cross-entropy losses from all the local
    patches": the cross-entropies are summed over the patches of each sample, so that every patch weighs as much as
    a whole image would for a global discriminator; they are then averaged over the samples, so that the loss does
    not grow with the batch size (the L1 terms it is added to, eq. 3.6, are means over subjects as well).

    With ``smoothing`` the labels are drawn, one per patch, from U(0.9, 1) for real and from U(0, 0.1) for
    generated patches (§4.3.1, after Salimans et al., 2016; the thesis smooths both sides), which keeps the
    discriminator from becoming over-confident. Use it for the discriminator's updates; the generator's
    adversarial term (``real=True`` on generated images) takes the plain labels.

    Parameters
    ----------
    logits : torch.Tensor
        Discriminator output, ``N 1 nD nH nW`` (any shape whose first axis is the batch).
    real : bool
        Whether the judged images are the acquired ones (label 1) or generated (label 0).
    generator : torch.Generator, optional
        Source of the smoothed labels (for reproducible training); default torch's global generator. Labels are
        drawn on the generator's device and moved to the logits'.
    smoothing : bool, optional
        Draw noisy labels as above instead of exact 1 / 0.

    Returns
    -------
    torch.Tensor
        Scalar loss.

    Raises
    ------
    ValueError
        If ``real`` or ``smoothing`` is not a bool, or ``logits`` has no batch axis.

    Examples
    --------
    Two samples of two patches, all logits 0: each patch costs log 2, each sample 2 log 2.

    >>> adversarial_loss(torch.zeros(2, 1, 2, 1, 1), real=True)
    tensor(1.3863)
    """
    if not isinstance(real, bool):
        raise ValueError(f"real must be True or False, got {real!r}")
    if not isinstance(smoothing, bool):
        raise ValueError(f"smoothing must be True or False, got {smoothing!r}")
    if logits.ndim < 1:
        raise ValueError("logits must have a batch axis, got a 0-d tensor")
    if smoothing:
        device = generator.device if generator is not None else logits.device
        labels = torch.rand(logits.shape, generator=generator, device=device, dtype=logits.dtype).to(logits.device)
        labels = 0.9 + 0.1 * labels if real else 0.1 * labels
    else:
        labels = torch.full_like(logits, 1.0 if real else 0.0)
    per_patch = functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return per_patch.reshape(logits.shape[0], -1).sum(dim=1).mean()
