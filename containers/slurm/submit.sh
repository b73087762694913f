#!/usr/bin/env bash
# Submit an msynth cohort to SLURM: one array task per participant (msynth-array.sbatch), then the group level
# (msynth-group.sbatch) with --dependency=afterok on the array. Prints the two job ids, as `array_job=<id>` and
# `group_job=<id>` lines on stdout (what was done goes to stderr).
#
#   submit.sh [options] BIDS_DIR OUTPUT_DIR WORK_DIR [-- msynth participant options ...]
#
#   --labels FILE        participants to process, one label per line (with or without sub-); default: the
#                        participant_id column of BIDS_DIR/participants.tsv
#   --max-running N      at most N array tasks run at once (--array=1-COUNT%N); default 20
#   --resubmit-failed    submit only the participants (of --labels or participants.tsv) that have not finished in
#                        OUTPUT_DIR — failed, cancelled, out of time — and a new group job after them; reuses
#                        WORK_DIR, so what they had computed is not computed again
#   --no-group           submit no group job
#   --log-dir DIR        SLURM logs and the labels file of each submission (default WORK_DIR/slurm)
#   --sbatch "OPTS"      more sbatch options for the array tasks ("--partition=short --time=3:00:00 --mem=12G")
#   --group-sbatch "OPTS" more sbatch options for the group job
#   --group-args "OPTS"  more msynth options for the group level
#   --container SIF      run msynth in this Apptainer image (exported as MSYNTH_CONTAINER; binds: see
#                        msynth-array.sbatch); default: $MSYNTH_CONTAINER when set, else msynth on PATH
#   --dry-run            print the sbatch commands, submit nothing
#
# A participant has finished when its lock file OUTPUT_DIR/.msynth-staging/sub-<L>.lock says its outputs were
# published (docs/design.md, run bookkeeping); msynth writes that only at the end of a successful run.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
say() { echo "submit: $*" >&2; }
die() { echo "submit: error: $*" >&2; exit 2; }
usage() { sed -n '/^#   submit.sh/,/^#   --dry-run/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

labels_from="" max_running=20 resubmit=0 group=1 log_dir="" dry_run=0
sbatch_opts="" group_sbatch_opts="" group_args=""
positional=()
while [ $# -gt 0 ]; do
    case $1 in
        --labels) labels_from=${2:?--labels needs a file}; shift 2 ;;
        --max-running) max_running=${2:?--max-running needs a number}; shift 2 ;;
        --resubmit-failed) resubmit=1; shift ;;
        --no-group) group=0; shift ;;
        --log-dir) log_dir=${2:?--log-dir needs a folder}; shift 2 ;;
        --sbatch) sbatch_opts=${2?}; shift 2 ;;
        --group-sbatch) group_sbatch_opts=${2?}; shift 2 ;;
        --group-args) group_args=${2?}; shift 2 ;;
        --container) export MSYNTH_CONTAINER=${2:?--container needs an image}; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) die "unknown option $1 (msynth options go after --)" ;;
        *) positional+=("$1"); shift ;;
    esac
done
[ ${#positional[@]} -eq 3 ] || usage
case $max_running in ''|*[!0-9]*|0) die "--max-running must be a positive integer, got '$max_running'" ;; esac
absolute() { (cd "$1" && pwd); }
[ -f "${positional[0]}/dataset_description.json" ] ||
    die "${positional[0]} is not a BIDS dataset (no dataset_description.json)"
bids_dir=$(absolute "${positional[0]}")
mkdir -p "${positional[1]}" "${positional[2]}"
output_dir=$(absolute "${positional[1]}") work_dir=$(absolute "${positional[2]}")
log_dir=${log_dir:-$work_dir/slurm}
mkdir -p "$log_dir"
log_dir=$(absolute "$log_dir")
if [ -n "${MSYNTH_CONTAINER:-}" ]; then
    [ -f "$MSYNTH_CONTAINER" ] || die "container image $MSYNTH_CONTAINER not found"
    MSYNTH_CONTAINER=$(cd "$(dirname "$MSYNTH_CONTAINER")" && pwd)/$(basename "$MSYNTH_CONTAINER")
    export MSYNTH_CONTAINER
fi

# Every requested label, without sub-, in order.
read_labels() {
    if [ -n "$labels_from" ]; then
        [ -f "$labels_from" ] || die "labels file $labels_from not found"
        tr -d '\r' < "$labels_from" | awk 'NF { sub(/^sub-/, "", $1); print $1 }'
    else
        [ -f "$bids_dir/participants.tsv" ] ||
            die "$bids_dir/participants.tsv not found: list the participants in a file and pass --labels"
        tr -d '\r' < "$bids_dir/participants.tsv" | awk -F '\t' '
            NR == 1 { for (i = 1; i <= NF; i++) if ($i == "participant_id") column = i
                      if (!column) { print "no participant_id column" > "/dev/stderr"; exit 1 }; next }
            $column != "" { sub(/^sub-/, "", $column); print $column }'
    fi
}

finished() { grep -qs '"state": "published"' "$output_dir/.msynth-staging/sub-$1.lock"; }

mapfile -t labels < <(read_labels)
[ ${#labels[@]} -gt 0 ] || die "no participant to process"
if [ $resubmit = 1 ]; then
    queued=$(squeue --me --noheader --name=msynth-participant,msynth-group --format=%i 2>/dev/null | paste -sd ' ' - ||
             true)
    [ -z "$queued" ] || say "warning: msynth jobs still queued or running ($queued); a participant they are" \
        "processing is counted as unfinished and its new task will be refused by msynth's lock — wait for them first"
    todo=()
    for label in "${labels[@]}"; do finished "$label" || todo+=("$label"); done
    say "${#todo[@]} of ${#labels[@]} participants have not finished in $output_dir${todo:+: ${todo[*]}}"
    labels=("${todo[@]}")
fi

submit() {  # sbatch --parsable, or print the command in a dry run
    if [ $dry_run = 1 ]; then
        printf '%q ' sbatch "$@" >&2; echo >&2
        echo "DRYRUN"
    else
        sbatch --parsable "$@" | cut -d ';' -f 1
    fi
}

dependency=()
if [ ${#labels[@]} -gt 0 ]; then
    labels_file=$log_dir/labels-$(date +%Y%m%dT%H%M%S)-$$.txt  # one per submission: pending tasks keep reading it
    printf '%s\n' "${labels[@]}" > "$labels_file"
    count=${#labels[@]}
    # shellcheck disable=SC2086  # user sbatch options are words by design
    array_job=$(submit --array="1-$count%$max_running" --output="$log_dir/%x-%A_%a.log" $sbatch_opts \
        "$here/msynth-array.sbatch" "$labels_file" "$bids_dir" "$output_dir" "$work_dir" "$@")
    say "participant level: array job $array_job, $count tasks, at most $max_running at once (labels in $labels_file," \
        "logs in $log_dir)"
    echo "array_job=$array_job"
    dependency=(--dependency="afterok:$array_job" --kill-on-invalid-dep=yes)
else
    say "every participant has finished: no array job"
fi

if [ $group = 1 ]; then
    # shellcheck disable=SC2086
    group_job=$(submit "${dependency[@]}" --output="$log_dir/%x-%j.log" $group_sbatch_opts \
        "$here/msynth-group.sbatch" "$bids_dir" "$output_dir" "$work_dir" $group_args)
    say "group level: job $group_job${dependency:+, after every task of array job $array_job exits 0}"
    echo "group_job=$group_job"
fi
