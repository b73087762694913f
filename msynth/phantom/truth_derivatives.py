"""The phantom's truth laid out as participant-level derivatives, for measuring the group level alone.

The group level reads the participant level's maps by their DESIGN.md names. :func:`write_truth_derivatives` writes
the same names from the phantom's truth folder (brain, tissue and lesion masks on each session's T1w grid, the
noise-free DVR as the ``model-Logan`` DVR), with the distance to CSF computed by the participant level's own
function. The group level run on them measures its own error apart from the participant level's. The inputs of the
DVR models are there too (the acquired MTR map moved onto the T1w grid by the true transform, the noise-free DTI
maps), so that ``msynth-train dvr`` can train on them without running the participant level.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from msynth.preprocessing._io import write_like
from msynth.preprocessing.registration import apply_transform
from msynth.segmentation.regions import distance_to_csf
from msynth.utils.derivatives import write_dataset_description


def _session_folders(truth_dir: Path) -> list[tuple[str, str, Path]]:
    """(participant label, session label, truth session folder) of every truth session."""
    return [(folder.parent.name[4:], folder.name[4:], folder)
            for folder in sorted(truth_dir.glob("sub-*/ses-*")) if folder.is_dir()]


def write_truth_derivatives(bids_dir: Path, truth_dir: Path, output_dir: Path) -> Path:
    """Write ``output_dir`` as the participant level would have, with the truth as every map.

    Per session: the raw T1w as ``desc-preproc_T1w``, the truth brain mask, GM/WM/CSF probsegs and lesion mask, NAWM
    (WM probability ≥ 0.5 outside the lesions), the distance to CSF (``distance_to_csf`` of the CSF probseg) and the
    noise-free DVR as ``model-Logan_meas-DVR_mimap``; for a session with an MTR map, the acquired map resampled onto
    the T1w grid through the true ``from-MTR_to-T1w`` transform (linear) as ``desc-preproc_MTRmap``; the noise-free
    FA, RD, AD and MD maps as ``model-DTI_param-<map>_dwimap``. Sidecars say the maps are the phantom's truth.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(output_dir, bids_dir)
    for label, session, truth in _session_folders(truth_dir):
        prefix = f"sub-{label}_ses-{session}"
        session_dir = output_dir / f"sub-{label}" / f"ses-{session}"
        anat, dwi, pet = (session_dir / datatype for datatype in ("anat", "dwi", "pet"))
        for folder in (anat, dwi, pet):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bids_dir / f"sub-{label}" / f"ses-{session}" / "anat" / f"{prefix}_T1w.nii.gz",
                        anat / f"{prefix}_space-T1w_desc-preproc_T1w.nii.gz")
        for name in ("desc-brain_mask", "label-GM_probseg", "label-WM_probseg", "label-CSF_probseg",
                     "label-lesion_mask"):
            shutil.copyfile(truth / "anat" / f"{prefix}_space-T1w_{name}.nii.gz",
                            anat / f"{prefix}_space-T1w_{name}.nii.gz")
        brain_image = nib.load(anat / f"{prefix}_space-T1w_desc-brain_mask.nii.gz")
        brain = np.asanyarray(brain_image.dataobj) > 0
        csf = nib.load(anat / f"{prefix}_space-T1w_label-CSF_probseg.nii.gz").get_fdata()
        wm = nib.load(anat / f"{prefix}_space-T1w_label-WM_probseg.nii.gz").get_fdata()
        lesion = np.asanyarray(nib.load(anat / f"{prefix}_space-T1w_label-lesion_mask.nii.gz").dataobj) > 0
        write_like(distance_to_csf(csf, brain, brain_image.header.get_zooms()[:3]), brain_image,
                   anat / f"{prefix}_space-T1w_desc-CSFdistance_map.nii.gz")
        write_like(((wm >= 0.5) & brain & ~lesion).astype(np.uint8), brain_image,
                   anat / f"{prefix}_space-T1w_label-NAWM_mask.nii.gz")
        dvr = pet / f"{prefix}_trc-PIB_space-T1w_model-Logan_meas-DVR_mimap.nii.gz"
        shutil.copyfile(truth / "pet" / f"{prefix}_trc-PIB_space-T1w_meas-DVR_mimap.nii.gz", dvr)
        _write_dvr_inputs(bids_dir / f"sub-{label}" / f"ses-{session}", truth, prefix, anat, dwi)
        raw_t1w = f"bids:raw:sub-{label}/ses-{session}/anat/{prefix}_T1w.nii.gz"
        for path in [*anat.glob("*.nii.gz"), *dwi.glob("*.nii.gz"), dvr]:
            sidecar = {"Description": "msynth-phantom truth laid out as a participant-level output",
                       "SpatialReference": raw_t1w, "Sources": [raw_t1w]}
            if "_desc-preproc_" in path.name:  # the raw T1w and the MTR map keep their skull
                sidecar["SkullStripped"] = False
            path.with_name(path.name.removesuffix(".nii.gz") + ".json").write_text(json.dumps(sidecar) + "\n")
    return output_dir


def _write_dvr_inputs(raw_session: Path, truth: Path, prefix: str, anat: Path, dwi: Path) -> None:
    """The inputs of the DVR models: the acquired MTR map on the T1w grid (true transform) and the true DTI maps."""
    mtr = raw_session / "anat" / f"{prefix}_MTRmap.nii.gz"
    if mtr.is_file():
        moved = apply_transform(mtr, anat / f"{prefix}_space-T1w_desc-brain_mask.nii.gz",
                                truth / "anat" / f"{prefix}_from-MTR_to-T1w_mode-image_xfm.mat", newpath=anat)
        moved.replace(anat / f"{prefix}_space-T1w_desc-preproc_MTRmap.nii.gz")
    for tensor_map in sorted(truth.glob(f"dwi/{prefix}_space-T1w_model-DTI_param-*_dwimap.nii.gz")):
        shutil.copyfile(tensor_map, dwi / tensor_map.name)
