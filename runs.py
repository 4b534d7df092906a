"""Where a run lives: its folder, claimed so that two runs never share one, and its checkpoints.

    folder, made = claim_run_folder(args)     # runs/ddpm, runs/ddpm-2, ... or --name
    save_checkpoint(folder / "checkpoint.pt", state)
    ckpt = load_checkpoint(folder)            # checked before any work: entries, schedule, U-Net

part2_diffusion.py, part3_text_to_image.py and gan_baseline.py keep their runs this way. A student
can skip this file: it is housekeeping (exclusive folder creation, --overwrite, one-line errors for
damaged or hand-edited checkpoints), not diffusion. Every file goes through outputs.atomic_write.
"""
import io
import pickle
import shutil
from pathlib import Path

import torch

from outputs import UserError, atomic_write, check_writable, remove_orphans
from schedule import MAX_T, SCHEDULES
from unet import UNet

# --- run folders ----------------------------------------------------------------------------------

RUN_FILES = ("checkpoint.pt", "samples.png", "samples.npy", "trajectory.png", "forward.png",
             "loss.png", "config.json", "summary.json", "prompts.png")


def claim_run_folder(args, prefix="ddpm"):
    """A new folder under --runs, created here by an exclusive mkdir: of two runs started at once
    with one --name, the second finds it taken and stops. Returns the folder and the folders this
    made (itself, and --runs if it was missing), removed if the run fails before writing (unclaim).

    With --overwrite an existing run's folder is taken instead; its files are removed only when the
    new run is ready to write its first one (clear_old_run), so a folder never mixes two runs."""
    made = [] if Path(args.runs).exists() else [Path(args.runs)]
    runs = check_writable(args.runs, "--runs")
    name, k = args.name or prefix, 1
    while True:
        folder = runs / name
        try:
            folder.mkdir(parents=True)
            return folder, [folder] + made
        except FileExistsError:
            pass
        if args.name is None:  # a default name: try the next one
            k += 1
            name = f"{prefix}-{k}"
            continue
        if not folder.is_dir():
            raise UserError(f"{folder} is a file, not a run folder; choose another --name")
        if not args.overwrite:
            raise UserError(f"{folder} already exists; pass --overwrite to replace the run in it, "
                            "or choose another --name")
        holds_a_run = any((folder / f).exists() for f in ("config.json", "checkpoint.pt"))
        if any(folder.iterdir()) and not holds_a_run:
            raise UserError(f"{folder} holds no run (no config.json or checkpoint.pt), so "
                            "--overwrite will not empty it; choose another --name")
        return folder, made


def unclaim(made):
    """After a failure before any work: remove the folders claim_run_folder made, if still empty."""
    for folder in made:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def clear_old_run(folder):
    """--overwrite: remove the earlier run's files, and its samples/ from --sample-from. Other files
    (notes of yours) are left alone."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "samples", ignore_errors=True)
    remove_orphans(folder)


# --- checkpoints ----------------------------------------------------------------------------------

CHECKPOINT_KEYS = {"meta", "model", "ema", "step", "history"}
META_KEYS = {"dataset", "requested", "fallback", "model_config", "schedule", "conditional",
             "p_uncond", "batch_size", "lr", "ema_decay"}


def save_checkpoint(path, state):
    def write(tmp):
        # Serialise in memory, then write the bytes from Python: a full disk then raises
        # OSError(ENOSPC), which atomic_write reports in one line (torch's own writer would raise
        # a RuntimeError).
        buffer = io.BytesIO()
        torch.save(state, buffer)
        Path(tmp).write_bytes(buffer.getbuffer())
    atomic_write(path, write)


def load_checkpoint(run_dir):
    """The checkpoint in run_dir, checked as far as it can be before any work: its entries, and that
    its schedule and its U-Net can be built (a hand-edited file fails here, in one line)."""
    ckpt = read_checkpoint(run_dir)
    path = Path(run_dir) / "checkpoint.pt"
    check_schedule(ckpt["meta"], path)
    build_model(ckpt["meta"]["model_config"], ckpt["ema"], path)
    return ckpt


def load_safely(path):
    """torch.load that never runs code from the file. A checkpoint holds tensors, numbers, strings,
    lists and dicts only; torch's weights_only loader rebuilds those and refuses anything else
    unread, so a file handed over by someone else cannot run a pickled payload here."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # it names a function or class to call: never loaded
            raise UserError(f"refused {path}: it holds Python objects besides tensors, numbers, "
                            "strings, lists and dicts, and loading them could run code; use a "
                            "checkpoint written by this lab") from None
        raise UserError(f"cannot read checkpoint {path} (UnpicklingError); "
                        "it is damaged or not ours") from None
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}); "
                        "it is damaged or not ours") from None


def read_checkpoint(run_dir, keys=CHECKPOINT_KEYS, meta_keys=META_KEYS,
                    script="part2_diffusion.py"):
    """The checkpoint in run_dir, read, with its entries and its meta's entries checked: a missing
    file, a damaged one or one of another script is one line. The model is the caller's to build
    (Part 2: load_checkpoint; Part 3 stores a text encoder and an autoencoder too)."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; give the folder of a run that trained "
                        "at least once")
    ckpt = load_safely(path)
    present = set(ckpt) if isinstance(ckpt, dict) else set()
    missing = sorted(keys - present)
    if not missing:
        meta = ckpt["meta"]
        present = set(meta) if isinstance(meta, dict) else set()
        missing = [f"meta[{k!r}]" for k in sorted(meta_keys - present)]
    if missing:
        raise UserError(f"{path} is not a {script} checkpoint (missing {', '.join(missing)})")
    return ckpt


def check_resumable(ckpt, run_dir):
    if "optimizer" not in ckpt:
        raise UserError(f"{run_dir} holds weights for sampling only (no optimiser state), so it "
                        f"cannot be resumed; sample from it with --sample-from {run_dir}")
    if "rng" not in ckpt:
        raise UserError(f"{run_dir}/checkpoint.pt lacks its random-number state ('rng'), so it "
                        f"cannot be resumed exactly; sample from it with --sample-from {run_dir}")


def for_sampling(ckpt):
    """A checkpoint cut down to what sampling needs: the EMA weights, the configuration, the step
    and the loss history; no optimiser state or RNG state, so it cannot be resumed. Its "model"
    entry is the EMA weights themselves (torch.save stores a shared tensor once), so it is a third
    of the full size."""
    return dict(meta=ckpt["meta"], model=ckpt["ema"], ema=ckpt["ema"], step=ckpt["step"],
                history=ckpt["history"])


def check_schedule(meta, path):
    stored = meta["schedule"] if isinstance(meta["schedule"], dict) else {}
    name, T = stored.get("name"), stored.get("T")
    if name not in SCHEDULES or not isinstance(T, int) or not 1 <= T <= MAX_T:
        raise UserError(f"{path} names a schedule this lab cannot build ({meta['schedule']!r}); "
                        f"it needs a name in {', '.join(SCHEDULES)} and 1 <= T <= {MAX_T}")


def build_model(model_config, state_dict, path):
    try:
        model = UNet(**model_config)
    except Exception as e:  # a hand-edited configuration can fail in any way: input, not our bug
        reason = (str(e).splitlines() or [""])[0]
        raise UserError(f"the model_config in {path} does not build a U-Net "
                        f"({type(e).__name__}: {reason})") from None
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError):
        raise UserError(f"the weights in {path} do not fit the model configuration "
                        "stored with them")
    return model
