"""One session of one subject: acquire every modality from the native tissue state and write raw, truth, masks.

Each acquisition samples the native anatomy through the head pose of that sequence onto its own grid, averaging
over the voxel footprint (partial volume), then applies the scanner's bias field, noise and gain.  Truth is sampled
the same way onto the T1w grid, without bias, noise or motion.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import dwi, mri, pet
from .bids_writer import name, write_json, write_nifti, write_tsv
from .geometry import resample, write_itk_affine
from .lesions import smooth_noise
from .placement import Placement
from .tissue import TissueState

LOGGER = logging.getLogger("msynth.phantom")
#: Modality keys of the true transforms and the datatype folder each goes in.
TRANSFORM_DATATYPE = {"T2w": "anat", "PDw": "anat", "FLAIR": "anat", "T1SE": "anat", "DIR": "anat", "MTR": "anat",
                      "DWI": "dwi", "PET": "pet"}
_GAIN_SD = 0.25
_INTENSITY = 1000.0


@dataclass(frozen=True)
class SessionPaths:
    """Where one session's files go: raw dataset, truth folder, lesion-mask derivatives."""

    raw: Path
    truth: Path
    lesions: Path
    subject: str
    session: str

    def _file(self, root: Path, datatype: str, suffix: str, extension: str) -> Path:
        """``root/sub-<L>/ses-<S>/<datatype>/<name>``."""
        return (root / f"sub-{self.subject}" / f"ses-{self.session}" / datatype
                / name(self.subject, self.session, suffix, extension))

    def raw_file(self, datatype: str, suffix: str, extension: str = ".nii.gz") -> Path:
        """A file of the raw BIDS dataset."""
        return self._file(self.raw, datatype, suffix, extension)

    def truth_file(self, datatype: str, suffix: str, extension: str = ".nii.gz") -> Path:
        """A file of the truth folder."""
        return self._file(self.truth, datatype, suffix, extension)

    def lesion_file(self, suffix: str, extension: str = ".nii.gz") -> Path:
        """A file of the lesion-mask derivative dataset."""
        return self._file(self.lesions, "anat", suffix, extension)


@dataclass(frozen=True)
class PETSession:
    """Tracer administration and scanner of one PET session."""

    injected_mbq: float
    plasma: pet.PlasmaInput
    v0: float
    k1_scale: float
    psf_fwhm_mm: float


def _gain(rng: np.random.Generator, reference: float) -> float:
    """Scanner gain that puts the reference tissue near 1000, with a log-normal spread."""
    return float(_INTENSITY / reference * np.exp(rng.normal(0.0, _GAIN_SD)))


def _sample(state: TissueState, volume: np.ndarray, placement: Placement, key: str, **kw: float) -> np.ndarray:
    """Native volume as measured on the grid of sequence ``key`` (through its head pose)."""
    return resample(volume, state.anatomy.grid, placement.grids[key], placement.to_anatomy(key), **kw)


def write_mr(paths: SessionPaths, state: TissueState, placement: Placement, rng: np.random.Generator) -> None:
    """T1w, T2w, PDw, FLAIR, T1SE, DIR: signal equation -> grid -> bias -> Rician noise -> gain -> int16."""
    for key, protocol in mri.PROTOCOLS.items():
        grid = placement.grids[key]
        clean = _sample(state, mri.native_signal(state, protocol.signal), placement, key)
        reference = protocol.reference_signal()
        image = mri.rician(clean * mri.bias_field(grid, rng, protocol.bias), reference / protocol.snr, rng)
        write_nifti(paths.raw_file("anat", protocol.name), mri.to_int16(image * _gain(rng, reference)), grid.affine)
        write_json(paths.raw_file("anat", protocol.name, ".json"),
                   {**protocol.sidecar, "SliceThickness": float(grid.zooms[2])})


def write_mtr(paths: SessionPaths, state: TissueState, placement: Placement, rng: np.random.Generator) -> None:
    """MTR map (percent) from an MT-off / MT-on pair sharing one bias field (it cancels), independent Rician noise."""
    protocol = mri.MT_PROTOCOL
    grid = placement.grids["MTR"]
    bias = mri.bias_field(grid, rng, protocol.bias)
    reference = protocol.reference_signal()
    m0, msat = (
        mri.rician(_sample(state, mri.native_signal(state, protocol.signal, mt_weighted=w), placement, "MTR") * bias,
                   reference / protocol.snr, rng)
        for w in (False, True)
    )
    valid = m0 > 0.1 * reference
    mtr = np.where(valid, 100.0 * (m0 - msat) / np.where(valid, m0, 1.0), 0.0).astype(np.float32)
    write_nifti(paths.raw_file("anat", protocol.name), mtr, grid.affine)
    write_json(paths.raw_file("anat", protocol.name, ".json"),
               {**protocol.sidecar, "SliceThickness": float(grid.zooms[2])})


def write_dwi(
    paths: SessionPaths, state: TissueState, placement: Placement, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Diffusion series (b0 + 30 directions) and the noise-free tensor metrics of every native voxel.

    Gradient directions are fixed to the scanner, so the head's pose rotates them relative to the anatomy: the
    native signal uses the directions in the anatomical frame.

    Returns
    -------
    dict
        Native volumes ``FA, MD, AD, RD`` (zero outside the brain) from a log-linear fit of the noise-free signal.
    """
    grid = placement.grids["DWI"]
    bvals, dirs = dwi.scheme()
    to_anat = placement.to_anatomy("DWI")[:3, :3]
    anat_dirs = dirs @ to_anat.T
    brain = state.anatomy.brain.reshape(-1)[state.index] > 0.05
    fit = np.linalg.pinv(dwi.design_matrix(bvals, anat_dirs))
    coef = np.zeros((7, int(brain.sum())))
    bias = mri.bias_field(grid, rng, dwi.BIAS)
    reference = dwi.reference_signal()
    gain = _gain(rng, reference)
    series = np.empty((*grid.shape, bvals.size), dtype=np.int16)
    signal = dwi.NativeDWI(state)
    isotropic: dict[float, np.ndarray] = {}  # resampling is linear: the direction-free part is sampled once
    for j, (b, g) in enumerate(zip(bvals, anat_dirs)):
        iso, white = signal.parts(b, g)
        coef += np.outer(fit[:, j], np.log(np.maximum((iso + white)[brain], 1e-8)))
        if b not in isotropic:
            isotropic[b] = _sample(state, state.volume(iso), placement, "DWI")
        clean = isotropic[b] + _sample(state, state.volume(white), placement, "DWI")
        series[..., j] = mri.to_int16(mri.rician(clean * bias, reference / dwi.SNR, rng) * gain)
    write_nifti(paths.raw_file("dwi", "dwi"), series, grid.affine)
    np.savetxt(paths.raw_file("dwi", "dwi", ".bval"), bvals[None, :], fmt="%d")
    np.savetxt(paths.raw_file("dwi", "dwi", ".bvec"), dwi.bvecs_for_grid(dirs, grid), fmt="%.6f")
    write_json(paths.raw_file("dwi", "dwi", ".json"), {
        **mri.SCANNER, "RepetitionTime": dwi.TR_MS / 1000.0, "EchoTime": dwi.TE_MS / 1000.0, "FlipAngle": 90.0,
        "MRAcquisitionType": "2D", "PulseSequenceType": "Single-shot spin-echo EPI, monopolar diffusion encoding",
        "PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05, "SliceThickness": float(grid.zooms[2]),
    })
    metrics = dwi.tensor_metrics(coef)
    inside = state.index[brain]
    out = {}
    for key, values in metrics.items():
        vol = np.zeros(state.anatomy.grid.shape, np.float32)
        vol.reshape(-1)[inside] = values
        out[key] = vol
    return out


def pet_sidecar(session: PETSession) -> dict:
    """BIDS-PET sidecar with every required field (and the recommended ones that are known)."""
    mass_ug = 2.5
    return {
        "Manufacturer": "msynth-phantom", "ManufacturersModelName": "simulated HRRT", "Units": "Bq/mL",
        "BodyPart": "Brain", "TracerName": "PIB", "TracerRadionuclide": "C11",
        "TracerMolecularWeight": 256.3, "TracerMolecularWeightUnits": "g/mol",
        "InjectedRadioactivity": round(session.injected_mbq, 1), "InjectedRadioactivityUnits": "MBq",
        "InjectedMass": mass_ug, "InjectedMassUnits": "ug",
        "SpecificRadioactivity": round(session.injected_mbq / mass_ug, 2), "SpecificRadioactivityUnits": "MBq/ug",
        "ModeOfAdministration": "bolus", "TimeZero": "10:00:00", "ScanStart": 0, "InjectionStart": 0,
        "InjectionEnd": 60, "FrameTimesStart": list(pet.FRAME_STARTS_S), "FrameDuration": list(pet.FRAME_DURATIONS_S),
        "AcquisitionMode": "list mode", "ImageDecayCorrected": True, "ImageDecayCorrectionTime": 0,
        "ReconMethodName": "3D ordinary Poisson OSEM", "ReconMethodParameterLabels": ["subsets", "iterations"],
        "ReconMethodParameterUnits": ["none", "none"], "ReconMethodParameterValues": [16, 10],
        "ReconFilterType": "none", "AttenuationCorrection": "transmission scan (137Cs point source)",
        "DecayCorrectionFactor": [round(float(f), 6) for f in pet.decay_factors()],
    }


def write_pet(
    paths: SessionPaths, state: TissueState, placement: Placement, session: PETSession, rng: np.random.Generator
) -> None:
    """Dynamic PET: temporal-component maps -> PSF and voxel blur -> frames -> noise; sidecar and plasma truth."""
    grid = placement.grids["PET"]
    basis = pet.temporal_basis(session.plasma)
    coef = pet.coefficients(state, basis, session.v0, session.k1_scale)
    sampled = np.stack([_sample(state, state.volume(c), placement, "PET", extra_fwhm_mm=session.psf_fwhm_mm)
                        for c in coef], axis=-1)
    frames = (sampled.reshape(-1, coef.shape[0]) @ basis.components.astype(np.float32)).reshape(*grid.shape, -1)
    frames = pet.add_noise(frames, rng, float(np.prod(grid.zooms)) / 1000.0)
    frames *= 1000.0  # kBq/mL -> Bq/mL
    write_nifti(paths.raw_file("pet", "trc-PIB_pet"), frames, grid.affine, dtype=np.int16)
    write_json(paths.raw_file("pet", "trc-PIB_pet", ".json"), pet_sidecar(session))
    t_s = np.arange(0.0, 5400.0 + 1.0, 5.0)
    write_tsv(paths.truth_file("pet", "trc-PIB_desc-plasma_input", ".tsv"), pd.DataFrame(
        {"time": t_s, "plasma_radioactivity": 1000.0 * session.plasma(t_s / 60.0)}))


def write_truth(
    paths: SessionPaths,
    state: TissueState,
    placement: Placement,
    dvr: np.ndarray,
    demyelinated: np.ndarray,
    dti: dict[str, np.ndarray],
) -> None:
    """Truth on the T1w grid (masks, tissue probabilities, DVR, DTI maps, reference region), true transforms, and
    brain masks on the FLAIR and PET grids (to check a transform against, and to trace lesions / PET regions on)."""
    grid = placement.grids["T1w"]
    fr = state.anatomy.fractions

    def t1w(volume: np.ndarray) -> np.ndarray:
        """Native volume averaged over each T1w voxel."""
        return _sample(state, volume, placement, "T1w")

    def mask(volume: np.ndarray) -> np.ndarray:
        """Native fraction averaged over each T1w voxel, at least one half."""
        return (t1w(volume.astype(np.float32)) >= 0.5).astype(np.uint8)

    write_nifti(paths.truth_file("anat", "space-T1w_desc-brain_mask"), mask(state.anatomy.brain), grid.affine)
    for key, datatype, suffix in (("FLAIR", "anat", "space-FLAIR_desc-brain_mask"),
                                  ("PET", "pet", "trc-PIB_space-PET_desc-brain_mask")):
        own = (_sample(state, state.anatomy.brain, placement, key) >= 0.5).astype(np.uint8)
        write_nifti(paths.truth_file(datatype, suffix), own, placement.grids[key].affine)
    lesion = mask(state.volume(state.by_name("LES").fraction))
    write_nifti(paths.truth_file("anat", "space-T1w_label-lesion_mask"), lesion, grid.affine)
    write_nifti(paths.truth_file("anat", "space-T1w_desc-demyelinated_mask"), mask(demyelinated) & lesion,
                grid.affine)
    for label in ("GM", "WM", "CSF"):
        write_nifti(paths.truth_file("anat", f"space-T1w_label-{label}_probseg"),
                    np.clip(t1w(fr[label]), 0.0, 1.0), grid.affine)
    write_nifti(paths.truth_file("pet", "trc-PIB_space-T1w_meas-DVR_mimap"), t1w(dvr), grid.affine)
    write_nifti(paths.truth_file("pet", "trc-PIB_space-T1w_desc-reference_mask"),
                mask(state.anatomy.cerebellum * fr["GM"]), grid.affine)
    for key, volume in dti.items():
        write_nifti(paths.truth_file("dwi", f"space-T1w_model-DTI_param-{key}_dwimap"), t1w(volume), grid.affine)
    for key, datatype in TRANSFORM_DATATYPE.items():
        write_itk_affine(paths.truth_file(datatype, f"from-{key}_to-T1w_mode-image_xfm", ".mat"),
                         placement.t1w_to(key))


def write_expert_mask(paths: SessionPaths, state: TissueState, placement: Placement, rng: np.random.Generator) -> None:
    """Expert-like lesion mask traced on the FLAIR: true lesion occupancy with a rater's threshold and wobble."""
    grid = placement.grids["FLAIR"]
    occupancy = _sample(state, state.volume(state.by_name("LES").fraction), placement, "FLAIR")
    wobble = 0.15 * smooth_noise(rng, grid.shape, 2.0 / np.maximum(grid.zooms / 0.9, 1.0))
    traced = ((occupancy + wobble > rng.uniform(0.3, 0.5)) & (occupancy > 0.05)).astype(np.uint8)
    flair = paths.raw_file("anat", "FLAIR").relative_to(paths.raw).as_posix()
    write_nifti(paths.lesion_file("space-FLAIR_label-lesion_mask"), traced, grid.affine)
    write_json(paths.lesion_file("space-FLAIR_label-lesion_mask", ".json"), {
        "Description": "Lesion mask traced on the FLAIR (simulated rater: true lesion occupancy, a per-session "
                       "threshold between 0.3 and 0.5, and a smooth boundary wobble)",
        "Sources": [f"bids:raw:{flair}"], "SpatialReference": f"bids:raw:{flair}", "Type": "Lesion",
    })


def simulate_session(
    paths: SessionPaths,
    state: TissueState,
    placement: Placement,
    pet_session: PETSession,
    rng: np.random.Generator,
    *,
    dvr: np.ndarray,
    demyelinated: np.ndarray,
) -> None:
    """Write every raw image, the truth and the expert lesion mask of one session.

    Parameters
    ----------
    paths
        Output locations.
    state
        Native tissue state at this session.
    placement
        Head pose, motion and grids of this session.
    pet_session
        Tracer administration and scanner resolution.
    rng
        The session's acquisition random stream (noise, bias, gain, rater).
    dvr, demyelinated
        Native noise-free DVR and demyelinated-voxel mask (truth, computed by the cohort).
    """
    write_mr(paths, state, placement, rng)
    write_mtr(paths, state, placement, rng)
    dti = write_dwi(paths, state, placement, rng)
    write_pet(paths, state, placement, pet_session, rng)
    write_truth(paths, state, placement, dvr, demyelinated, dti)
    write_expert_mask(paths, state, placement, rng)
    LOGGER.info("sub-%s ses-%s written", paths.subject, paths.session)
