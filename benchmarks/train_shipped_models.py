"""Reproduce every model shipped in ``msynth/models/weights/`` (FLAIR and DVR synthesis) from scratch.

Usage::

    .venv/bin/python benchmarks/train_shipped_models.py --scratch /tmp/msynth-shipped [--stage STAGE ...]

Stages (default: all, in this order):

``phantom``
    Generates the training phantom cohort (``generate_cohort``: 2 controls, 16 patients, ``--voxel-size 2``,
    seed 2026) and runs the participant level on session 01 (``msynth … participant --session-label 01
    --lesion-masks <bids>/derivatives/lesions``). DWI, PET and MTR are filtered out with ``--bids-filter-file``:
    the FLAIR models do not use them, and they would double the run time on this 2-core machine.
``real``
    Builds a BIDS view (symlinks, never copies) of every real scan of ``../shared/data/open_ms_data`` (Lesjak et
    al. 2018 and 2016, CC-BY; :func:`build_real_view`): the skull-stripped 1 mm MNI patients 07 and 19 as
    ``sub-P07``/``sub-P19`` with their consensus lesion masks as a ``--lesion-masks`` derivative, and the raw
    longitudinal patients 01, 03 and 04 (with skull, thick slices, one session per visit) as ``sub-L01``/``L03``/
    ``L04``, which get the automatic lesion masks; then runs the whole participant level on it.
``dvr-phantom``
    The DVR models' training cohort: the group benchmark's phantom cohort and participant level
    (``benchmarks/group_phantom.py --stage phantom participant``: 10 controls, 18 patients, two sessions, 2 mm,
    seed 2027; about an hour of both cores). ``--dvr-derivatives DIR`` uses an existing run of it instead.
``train``
    Runs ``msynth-train flair`` with the arguments of :data:`PHANTOM_MODELS` and :data:`REAL_TRAINING`, and
    ``msynth-train dvr`` with those of :data:`DVR_MODELS` (recorded in each model card), and writes
    ``msynth/models/weights/<name>/``.
``evaluate``
    Scores each shipped phantom model on a fresh patient (seed 9001, as ``tests/test_shipped_models.py``): inputs on
    the model's grid through the phantom's true transforms, N4 inside the true brain mask; SSIM and MSE inside the
    brain of the prediction de-normalised with the acquired FLAIR's brain mean and SD (as the cross-validation),
    Ratio 1 of that prediction and of the ``synthesize`` file (cohort statistics), and the acquired Ratio 1.
    ``--evaluate-also MODEL_DIR …`` scores other model folders beside them (trial trainings of ``msynth-train``).
``evaluate-dvr``
    Scores each shipped DVR model on a fresh phantom cohort (:data:`DVR_FRESH`: seed 9102, which no model saw) with
    the product itself: the participant level (as the group benchmark's, then once per model with ``--model``,
    sharing one work folder so only the synthesis reruns), then the group level on each model's outputs. Prints the
    per-region DVR metrics of the participant level (``desc-synthDVR_metrics.tsv``: absolute discrepancy and
    Bland-Altman bias against the acquired Logan DVR) averaged over sessions, and the group level's median
    demyelinated-voxel Dice between synthetic and acquired PET (``group/agreement.tsv``).

Why 2 mm, 16 patients, 32 features, Adam and at most 30 epochs (90 for the 5-input model): this machine has 2 CPU
cores. At 4 mm the phantom's lesions are a few voxels each and no model learned their contrast (the earlier 4 mm
models: synthetic Ratio 1 about 1.0); at 2 mm a patient has about 8 times as many lesion voxels. 16 patients (the
earlier models had 8) and random flips give the small network more varied training data. On the former 4 mm 2-D
FLAIR phantom neither width, depth nor longer training raised the SSIM of a fresh session (``flair_ceiling.md``);
on the 2 mm 3-D FLAIR phantom every fold of the 5-input model still improved at epoch 30, so that model trains up
to 90 (``msynth-train`` resumes from the fold and final checkpoints of a 30-epoch run when only ``--epochs`` grows,
with the same weights as one uninterrupted run). FCN-32 costs about a quarter of FCN-64 (paper 001) per voxel
(benchmarks/results/flair_methods.md compares the widths). The shipped phantom models were trained when msynth's FCN
had 2 hidden layers by default; ``--stage train`` now gives them paper 001's 3 (``flair-fcn-real-t1t2`` has 3). The
real-data model also trains at ``--voxel-size 2`` (the participant level still runs at the data's 1 mm).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from msynth.phantom.aligned import AlignedSession

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WEIGHTS = ROOT / "msynth" / "models" / "weights"
OPEN_MS = ROOT.parent / "shared" / "data" / "open_ms_data"

#: seed of the fresh phantom patient the phantom models are scored on (``tests/test_shipped_models.py``)
FRESH_SEED = 9001
PHANTOM = {"n_controls": 2, "n_patients": 16, "voxel_size": 2.0, "seed": 2026}
PHANTOM_SOURCE = ("msynth-phantom synthetic MS cohort: generate_cohort(n_controls=2, n_patients=16, voxel_size=2, "
                  "seed=2026), session 01, participant level of msynth")
REAL_SOURCE = ("open_ms_data (muschellij2/open_ms_data): cross_sectional/MNI patient07 and patient19 (skull-stripped, "
               "bias-corrected, 1 mm MNI space) and longitudinal/raw patient01, patient03, patient04 (native space, "
               "every visit with a T1w); participant level of msynth")
REAL_LICENSE = "CC-BY (Creative Commons Attribution)"
REAL_CITATIONS = (
    "Lesjak Z, Galimzianova A, Koren A, Lukin M, Pernus F, Likar B, Spiclin Z. A Novel Public MR Image Dataset of "
    "Multiple Sclerosis Patients With Lesion Segmentations Based on Multi-rater Consensus. Neuroinformatics "
    "16:51-63 (2018), doi:10.1007/s12021-017-9348-7",
    "Lesjak Z, Pernus F, Likar B, Spiclin Z. Validation of white-matter lesion change detection methods on a novel "
    "publicly available MRI image database. Neuroinformatics 14(4):403-420 (2016)")

#: shared training arguments of the phantom models: a 2 mm grid (the phantom's T1w grid is 2 x 2 x 2.2 mm, so the
#: card says 2 mm and the synthesis node resamples to it); 32^3 patches, 8 per session and epoch, mirrored at random
#: (16 patients are few); Adam 1e-3 instead of paper 001's plain SGD 5e-4, which needs far more steps than fit here.
PHANTOM_TRAINING = ["--features", "32", "--optimizer", "adam", "--lr", "1e-3", "--patch-size", "32",
                    "--patches-per-session", "8", "--random-flips", "--voxel-size", "2", "--seed", "42",
                    "--device", "cpu", "--nprocs", "2"]
#: the 5-input model is cross-validated (5 folds over subjects); the subset models are not (time), --folds 0 stops
#: early on an inner subject split
PHANTOM_FOLDS = {"flair-fcn-phantom": "5"}
#: at most this many epochs (default 30): the 5-input model's folds still improved at 30
PHANTOM_EPOCHS = {"flair-fcn-phantom": "90"}
#: (name, inputs) of the phantom models: all five inputs, then the subsets of paper 001 Table 4c
PHANTOM_MODELS = [
    ("flair-fcn-phantom", ["T1w", "T2w", "PDw", "T1SE", "DIR"]),
    ("flair-fcn-phantom-t1w-dir", ["T1w", "DIR"]),
    ("flair-fcn-phantom-t2w-dir", ["T2w", "DIR"]),
    ("flair-fcn-phantom-t1w-t2w", ["T1w", "T2w"]),
    ("flair-fcn-phantom-t1w-t2w-dir", ["T1w", "T2w", "DIR"]),
    ("flair-fcn-phantom-t1w-t2w-pdw", ["T1w", "T2w", "PDw"]),
]
#: the real-data model: paper 001's FCN (3 hidden layers) at Table 1's thinner width (32 filters: a quarter of the
#: cost of 64, which paper 001 suggests "if less computational cost is needed"), leave-one-patient-out over the 5
#: real patients (a fold trains on 4: 3 fit, 1 validates for early stopping), at most 90 epochs (the shipped model
#: was trained to 40, then resumed to 90 with the same work folder: the same weights as one 90-epoch run)
REAL_TRAINING = ["--features", "32", "--depth", "3", "--optimizer", "adam", "--lr", "1e-3", "--folds", "5",
                 "--epochs", "90", "--patch-size", "32", "--patches-per-session", "8", "--random-flips",
                 "--voxel-size", "2", "--seed", "42", "--device", "cpu", "--nprocs", "2"]

#: DVR models (thesis 003 methods, ``msynth-train dvr --method``): the Refiner cGAN (ch. 3), with the thesis's
#: settings (Adam 1e-4 / 5e-5, one Refiner, the losses and adversarial steps of ``msynth.models.training.methods``)
#: but sized for this 2-core machine without GPU: trained at 4 mm (the phantom's 2.44 mm PET voxel at
#: ``--voxel-size 2``, doubled, as the issue allows), U-Nets of 16 maps instead of 32, 32^3 patches, 10 epochs per
#: stage (a generator-plus-discriminator step on a 32^3 patch takes 1-2.5 s on one core). No cross-validation
#: (``--folds 0``, early stopping on an inner subject split): ``benchmarks/dvr_methods.py`` cross-validates the
#: methods. The Refiner CF-SAGAN is not shipped: at 8 maps, 2 epochs per stage (the most that fit: it trains on every
#: patch of a 50 %-overlap grid, 396 per epoch here) it scored worse than this model on a fresh cohort
#: (benchmarks/results/shipped_models.md); ``--method refiner-cf-sagan`` trains it.
DVR_MODELS = {"dvr-refiner-cgan-phantom": ["--method", "refiner-cgan", "--features", "16", "--epochs", "10"]}
DVR_TRAINING = ["--folds", "0", "--voxel-size", "4", "--patch-size", "32", "--patches-per-session", "4",
                "--seed", "42", "--device", "cpu"]
DVR_SOURCE = ("msynth-phantom synthetic MS cohort: generate_cohort(n_controls=10, n_patients=18, voxel_size=2, "
              "seed=2027) (benchmarks/group_phantom.py), baseline sessions, participant level of msynth with the "
              "phantom's lesion masks")
#: the fresh cohort the DVR models are scored on (a seed no model saw)
DVR_FRESH = {"n_controls": 2, "n_patients": 4, "voxel_size": 2.0, "seed": 9102}

_NO_DWI_PET_MTR = {"DWI": {"acquisition": "excluded"}, "PET": {"tracer": "excluded"},
                   "MTR": {"acquisition": "excluded"}}


def _run(argv: list[str], log: Path) -> float:
    """Run a command, its output appended to ``log``; return the wall time (s)."""
    print("$", shlex.join(argv), flush=True)
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write("$ " + shlex.join(argv) + "\n")
        handle.flush()
        subprocess.run(argv, check=True, stdout=handle, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    print(f"  done in {elapsed:.0f} s", flush=True)
    return elapsed


def participant_command(bids: Path, out: Path, work: Path, *, lesions: Path, filters: Path | None,
                        sessions: list[str] | None) -> list[str]:
    """The participant-level command line."""
    argv = [str(BIN / "msynth"), str(bids), str(out), "participant", "-w", str(work), "--nprocs", "2",
            "--lesion-masks", str(lesions)]
    if sessions:
        argv += ["--session-label", *sessions]
    if filters is not None:
        argv += ["--bids-filter-file", str(filters)]
    return argv


def stage_phantom(scratch: Path, log: Path) -> None:
    """Phantom cohort and its participant level."""
    from msynth.phantom.cohort import generate_cohort

    folder = scratch / "phantom"
    folder.mkdir(parents=True, exist_ok=True)
    bids = folder / "bids"
    if not (bids / "participants.tsv").is_file():
        start = time.perf_counter()
        generate_cohort(bids, **PHANTOM, overwrite=True, n_procs=2)
        print(f"phantom cohort generated in {time.perf_counter() - start:.0f} s", flush=True)
    filters = folder / "filter.json"
    filters.write_text(json.dumps(_NO_DWI_PET_MTR, indent=2))
    # Only the patients: the phantom's lesion derivative has empty masks for the controls, which the participant
    # level rejects with --lesion-masks. Two processes (half the patients each, own work folder) keep both cores
    # busy: the participant level runs one subject at a time.
    patients = [f"MS{k + 1:02d}" for k in range(PHANTOM["n_patients"])]
    halves = [patients[: len(patients) // 2], patients[len(patients) // 2:]]
    running = []
    for k, labels in enumerate(halves):
        argv = participant_command(bids, folder / "derivatives", folder / ("work" if k == 0 else f"work{k}"),
                                   lesions=bids / "derivatives" / "lesions", filters=filters, sessions=["01"])
        argv += ["--participant-label", *labels]
        print("$", shlex.join(argv), flush=True)
        running.append(subprocess.Popen(argv, stdout=(scratch / f"participant-{k}.log").open("a"),
                                        stderr=subprocess.STDOUT))
    if any(p.wait() for p in running):
        raise RuntimeError(f"the phantom participant level failed; see {scratch}/participant-*.log")


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


#: the real patients of open_ms_data: BIDS label → (folder, {session label: scan prefix → file}); the MNI patients
#: are skull-stripped, the raw longitudinal patients have their skull and thick slices (README of open_ms_data)
REAL_SCANS = {
    "P07": ("cross_sectional/MNI/patient07", {"1": "mni"}),
    "P19": ("cross_sectional/MNI/patient19", {"1": "mni"}),
    "L01": ("longitudinal/raw/patient01", {"1": "study1", "2": "study2"}),
    "L03": ("longitudinal/raw/patient03", {"1": "study1", "2": "study2"}),
    "L04": ("longitudinal/raw/patient04", {"1": "study1"}),
}
#: age and sex of each patient (open_ms_data's patient_info.csv files)
REAL_DEMOGRAPHICS = {"P07": (53, "F"), "P19": (47, "F"), "L01": (20, "F"), "L03": (19, "M"), "L04": (33, "F")}
_MNI_STEM = "{}_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"


def build_real_view(folder: Path, source: Path = OPEN_MS) -> tuple[Path, Path]:
    """A BIDS view (symlinks, never copies) of every real scan of open_ms_data, and a lesion-mask derivative.

    The two MNI-space patients (skull-stripped: ``SkullStripped: true`` in the T1w sidecar) come with their
    consensus lesion masks; the raw longitudinal patients have none (their ``gt.nii.gz`` marks lesion change), so
    the participant level draws their automatic lesion masks. A scan missing from the redistribution (patient03's
    ``study1_T1W``, patient04's second visit) is left out: that session then has no T1w and the participant level
    skips it with its reason. Returns (bids, lesions).
    """
    bids, lesions = folder / "bids", folder / "lesions"
    for root in (bids, lesions):
        root.mkdir(parents=True, exist_ok=True)
    (bids / "dataset_description.json").write_text(json.dumps({
        "Name": "open_ms_data, every real scan (view)", "BIDSVersion": "1.10.0", "DatasetType": "raw",
        "License": REAL_LICENSE, "Authors": ["Lesjak Z", "Galimzianova A", "Koren A", "Lukin M", "Pernus F",
                                             "Likar B", "Spiclin Z"],
        "ReferencesAndLinks": [*REAL_CITATIONS, "https://github.com/muschellij2/open_ms_data"]}, indent=2))
    (bids / "README").write_text("Symlinked BIDS view of open_ms_data: cross_sectional/MNI patient07 and patient19 "
                                 "(skull-stripped, bias-corrected, 1 mm MNI space) as sub-P07/sub-P19, and "
                                 "longitudinal/raw patient01, patient03, patient04 (native space, with skull) as "
                                 "sub-L01/L03/L04, one session per visit. CC-BY; cite "
                                 + " and ".join(REAL_CITATIONS) + ".\n")
    (bids / "participants.tsv").write_text("participant_id\tage\tsex\tgroup\n" + "".join(
        f"sub-{label}\t{age}\t{sex}\tMS\n" for label, (age, sex) in REAL_DEMOGRAPHICS.items()))
    (lesions / "dataset_description.json").write_text(json.dumps({
        "Name": "open_ms_data consensus lesion masks (view)", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "Lesjak et al. 2018 multi-rater consensus"}]}, indent=2))
    for label, (patient, sessions) in REAL_SCANS.items():
        for session, prefix in sessions.items():
            anat = bids / f"sub-{label}" / f"ses-{session}" / "anat"
            stem = f"sub-{label}_ses-{session}"
            for key, mni_name, raw_name in (("T1w", "T1", "T1W"), ("T2w", "T2", "T2W"), ("FLAIR", "FLAIR", "FLAIR")):
                scan = source / patient / (_MNI_STEM.format(mni_name) if prefix == "mni" else
                                           f"{prefix}_{raw_name}.nii.gz")
                if not scan.is_file():
                    continue
                _link(scan, anat / f"{stem}_{key}.nii.gz")
                sidecar = {"SkullStripped": True} if key == "T1w" and prefix == "mni" else {}
                (anat / f"{stem}_{key}.json").write_text(json.dumps(sidecar))
            if prefix == "mni":
                mask = (lesions / f"sub-{label}" / f"ses-{session}" / "anat"
                        / f"{stem}_space-FLAIR_label-lesion_mask.nii.gz")
                _link(source / patient / "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz", mask)
                mask.with_name(mask.name.replace(".nii.gz", ".json")).write_text(json.dumps({
                    "Description": "multi-rater consensus lesion mask (Lesjak et al. 2018)", "Type": "Lesion",
                    "SpatialReference": f"bids:raw:sub-{label}/ses-{session}/anat/{stem}_FLAIR.nii.gz"}))
    return bids, lesions


def stage_real(scratch: Path, log: Path) -> None:
    """BIDS view of every real scan and its participant level."""
    folder = scratch / "real"
    bids, lesions = build_real_view(folder)
    _run(participant_command(bids, folder / "derivatives", folder / "work", lesions=lesions, filters=None,
                             sessions=None), log)


def stage_dvr_phantom(scratch: Path, log: Path) -> None:
    """The DVR models' training cohort: the group benchmark's cohort and participant level."""
    _run([sys.executable, str(ROOT / "benchmarks" / "group_phantom.py"), "--scratch", str(scratch / "dvr-cohort"),
          "--stage", "phantom", "participant"], log)


def train_commands(scratch: Path, models: list[str] | None = None,
                   dvr_derivatives: Path | None = None) -> list[tuple[str, list[str]]]:
    """(name, msynth-train argv) of every shipped model."""
    commands = []
    for name, inputs in PHANTOM_MODELS:
        commands.append((name, [
            str(BIN / "msynth-train"), "flair", "--derivatives", str(scratch / "phantom" / "derivatives"),
            "--inputs", *inputs, "--name", name, "--out", str(scratch / "models" / name),
            "-w", str(scratch / "train-work" / name), *PHANTOM_TRAINING, "--epochs", PHANTOM_EPOCHS.get(name, "30"),
            "--folds", PHANTOM_FOLDS.get(name, "0"),
            "--data-source", PHANTOM_SOURCE, "--data-license", "CC0 (synthetic)",
            "--data-citation", "msynth phantom (docs/phantom.md)"]))
    commands.append(("flair-fcn-real-t1t2", [
        str(BIN / "msynth-train"), "flair", "--derivatives", str(scratch / "real" / "derivatives"),
        "--inputs", "T1w", "T2w", "--name", "flair-fcn-real-t1t2",
        "--out", str(scratch / "models" / "flair-fcn-real-t1t2"),
        "-w", str(scratch / "train-work" / "flair-fcn-real-t1t2"), *REAL_TRAINING,
        "--data-source", REAL_SOURCE, "--data-license", REAL_LICENSE, "--data-citation", "; ".join(REAL_CITATIONS)]))
    derivatives = dvr_derivatives or scratch / "dvr-cohort" / "derivatives"
    for name, method in DVR_MODELS.items():
        commands.append((name, [
            str(BIN / "msynth-train"), "dvr", "--derivatives", str(derivatives), *method, "--name", name,
            "--out", str(scratch / "models" / name), "-w", str(scratch / "train-work" / name), *DVR_TRAINING,
            "--data-source", DVR_SOURCE, "--data-license", "CC0 (synthetic)",
            "--data-citation", "msynth phantom (docs/phantom.md)"]))
    return [(n, c) for n, c in commands if models is None or n in models]


def stage_train(scratch: Path, log: Path, models: list[str] | None, dvr_derivatives: Path | None) -> None:
    """Train the models and copy card and weights (``model.pt``, or one file per stage) into the package."""
    import shutil

    for name, argv in train_commands(scratch, models, dvr_derivatives):
        _run(argv, log)
        target = WEIGHTS / name
        target.mkdir(parents=True, exist_ok=True)
        for file in ("model_card.json", *(p.name for p in (scratch / "models" / name).glob("*.pt"))):
            shutil.copy2(scratch / "models" / name / file, target / file)


def score_on_session(model_dir: Path, session: AlignedSession, newpath: Path) -> dict:
    """One model on one aligned fresh session (``tests/test_shipped_models.py``'s measures), as a table row.

    SSIM and MSE inside the true brain of the prediction de-normalised with the acquired FLAIR's brain mean and SD
    (as the cross-validation); Ratio 1 of that prediction, of the ``synthesize`` file (cohort statistics) and of the
    acquired FLAIR, in the true lesions against the true NAWM.
    """
    import nibabel as nib
    import numpy as np

    from msynth.analysis.metrics import mse, ratio1, ssim
    from msynth.models.card import channels_of
    from msynth.models.inference import load_model, synthesize
    from msynth.models.training import predict_session

    card, model = load_model(model_dir)
    brain, lesion, nawm = session.truth_regions()
    acquired = session.acquired("FLAIR", brain)
    predicted = predict_session(model, session.volume(), inputs=channels_of(card.inputs), output="FLAIR",
                                normalisation=card.normalisation, window=96, scope=card.intensity_normalisation)
    synthetic = np.asarray(nib.load(synthesize(model_dir, {k: session.images[k] for k in card.inputs},
                                               session.brain_mask, newpath=newpath, device="cpu")).dataobj,
                           dtype=np.float64)
    return {"model": model_dir.name, "inputs": " ".join(card.inputs),  # the folder names the row (trials share names)
            "ssim": round(ssim(predicted, acquired, brain), 3), "mse": round(mse(predicted, acquired, brain)),
            "ratio1_prediction": round(ratio1(predicted, lesion, nawm), 3),
            "ratio1_file": round(ratio1(synthetic, lesion, nawm), 3),
            "ratio1_acquired": round(ratio1(acquired, lesion, nawm), 3), "lesion_voxels": int(lesion.sum())}


def stage_evaluate(scratch: Path, extra: list[Path] | None = None) -> None:
    """Score every shipped phantom model, and the model folders ``extra``, on the fresh session of
    ``tests/test_shipped_models.py`` (a table)."""
    import pandas as pd

    from msynth.models.card import read_card
    from msynth.phantom.aligned import align_session
    from msynth.phantom.cohort import generate_cohort

    folder = scratch / "fresh"
    keys = ["T1w", "T2w", "PDw", "T1SE", "DIR", "FLAIR"]
    sessions = {}
    rows = []
    folders = [WEIGHTS / name for name, _ in PHANTOM_MODELS] + list(extra or [])
    for model_dir in folders:
        voxel = read_card(model_dir).voxel_size_mm
        if voxel not in sessions:
            cohort = generate_cohort(folder / f"{voxel}mm" / "bids", n_controls=0, n_patients=1, voxel_size=voxel,
                                     seed=FRESH_SEED, overwrite=True)
            sessions[voxel] = align_session(cohort, "MS01", "01", keys, newpath=folder / f"{voxel}mm" / "aligned",
                                            voxel_size=voxel)
        rows.append(score_on_session(model_dir, sessions[voxel], folder / "synth" / model_dir.name))
        print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


def stage_evaluate_dvr(scratch: Path, log: Path) -> None:
    """Score each shipped DVR model on a fresh phantom cohort with the participant and group levels."""
    import pandas as pd

    from msynth.phantom.cohort import generate_cohort

    folder = scratch / "dvr-fresh"
    bids = folder / "bids"
    if not (bids / "participants.tsv").is_file():
        generate_cohort(bids, **DVR_FRESH, overwrite=True, n_procs=1)
    filters = folder / "filter.json"
    filters.write_text(json.dumps({key: {"acquisition": "excluded"} for key in ("T2w", "PDw", "T1SE", "DIR")}))
    rows, agreement = [], []
    for name in DVR_MODELS:
        out = folder / f"derivatives-{name}"
        _run([str(BIN / "msynth"), str(bids), str(out), "participant", "-w", str(folder / "work"), "--nprocs", "1",
              "--omp-nthreads", "1", "--lesion-masks", str(bids / "derivatives" / "lesions"),
              "--bids-filter-file", str(filters), "--model", name], log)
        _run([str(BIN / "msynth"), str(bids), str(out), "group", "-w", str(folder / f"work-group-{name}")], log)
        for tsv in sorted(out.glob("sub-*/ses-*/pet/*_desc-synthDVR_metrics.tsv")):
            session = tsv.name.split("_trc-")[0]
            rows += [{"model": name, "session": session, **row}
                     for row in pd.read_csv(tsv, sep="\t").to_dict("records")]
        table = pd.read_csv(out / "group" / "agreement.tsv", sep="\t")
        agreement.append(table.assign(model=name))
    metrics = pd.DataFrame(rows)
    print(metrics.groupby(["model", "roi"])[["abs_discrepancy", "bias", "mae", "psnr"]].agg(["mean", "max"])
          .round(3).to_string())
    print(pd.concat(agreement).groupby("model")[["dice_t0", "dice_t1", "dice_dynamic_demyelination",
                                                 "dice_dynamic_remyelination"]].median().round(3).to_string())
    metrics.to_csv(folder / "dvr_metrics.tsv", sep="\t", index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, required=True, help="scratch folder (data views, outputs, work)")
    stages = ("phantom", "real", "dvr-phantom", "train", "evaluate", "evaluate-dvr")
    parser.add_argument("--stage", nargs="+", choices=stages, default=list(stages))
    parser.add_argument("--dvr-derivatives", type=Path, default=None, metavar="OUTPUT_DIR",
                        help="train the DVR models on this participant-level run of the group benchmark's cohort "
                             "instead of the dvr-phantom stage's")
    parser.add_argument("--models", nargs="+", default=None, help="train only these models")
    parser.add_argument("--evaluate-also", nargs="+", type=Path, default=None, metavar="MODEL_DIR",
                        help="evaluate stage: score these model folders too (e.g. trial trainings)")
    args = parser.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    log = args.scratch / "train_shipped_models.log"
    if "phantom" in args.stage:
        stage_phantom(args.scratch, log)
    if "real" in args.stage:
        stage_real(args.scratch, log)
    if "dvr-phantom" in args.stage and args.dvr_derivatives is None:
        stage_dvr_phantom(args.scratch, log)
    if "train" in args.stage:
        stage_train(args.scratch, log, args.models, args.dvr_derivatives)
    if "evaluate" in args.stage:
        stage_evaluate(args.scratch, args.evaluate_also)
    if "evaluate-dvr" in args.stage:
        stage_evaluate_dvr(args.scratch, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
