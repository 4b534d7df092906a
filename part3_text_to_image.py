"""Part 3: Stable Diffusion in miniature. Type a prompt, get a digit.

    python part3_text_to_image.py                 # train 12 minutes, then draw prompts.png
    python part3_text_to_image.py --sample-from runs/part3 --prompt "a thick seven" --n 16
    python part3_text_to_image.py --sample-from runs/part3 --prompt ""    # no prompt at all
    python part3_text_to_image.py --resume runs/part3 --minutes 10        # 10 minutes more

Part 2's DDPM learned to draw digits (and, with --conditional, the digit of a label). Stable
Diffusion (Rombach et al. 2022) is the same DDPM, with Algorithm 1 and the same samplers, plus
three things, each of which has a file of its own here:

1. A latent space (autoencoder.py). The diffusion model never sees a pixel. An autoencoder,
   trained once and then frozen, turns each digit into a latent z of 3 x 8 x 8 numbers
   (`encode_digits`, once, before training), the U-Net learns to denoise those latents, and the
   decoder turns a sampled latent back into a digit (`generate`). Four times fewer numbers per
   image, on an 8 x 8 grid instead of 28 x 28: every training and sampling step is cheaper.
2. A text encoder and cross-attention (captions.py, unet.py). Each training digit gets a caption
   made from its label and its measured stroke width and slant ("a thick seven slanted right"),
   drawn afresh for every batch (`draw_batch`). captions.TextEncoder, a small transformer, turns
   the tokens into one vector per word, and the U-Net's CrossAttention layers let every position
   of the latent look the words up (exercise 11). Stable Diffusion uses a pretrained, frozen text
   encoder (CLIP's); ours learns from scratch, together with the U-Net (`TextToImage`: one
   network, one optimiser, Part 2's training_loss).
3. Classifier-free guidance (schedule.py, exercise 12). In training the caption is replaced by
   the empty prompt P_UNCOND of the time (10%), so the same network also learns to predict the
   noise without a prompt. Each sampling step then moves from the unconditional prediction past
   the prompted one, by --guidance (`generate`, through schedule.classifier_free_guidance with
   the empty prompt's tokens as "no condition"). `python experiments.py guidance` measures what
   that buys, and what it costs.

The network (UNET and TEXT below): a U-Net of two levels, 8 x 8 and 4 x 4 with 16 and 32
channels, self- and cross-attention at both levels and in the middle, and a text encoder of two
transformer layers of width 64, chosen by timing candidates (twice the channels trained half as
many steps in the same 12 minutes). Sampling is DDIM (Song et al. 2021), 50 steps, without the
clamping of x0_hat to [-1, 1] that suits pixels but not latents (unit variance, not a range).

A run writes to runs/part3/ (then part3-2, ...): prompts.png (8 digits for each of 16 prompts),
loss.png, checkpoint.pt (the network and the autoencoder whose latents it learned), config.json
and summary.json; with --prompt also samples.png and samples.npy. --sample-from writes to a
folder under samples/ in the run, named after the flags that change the samples.

Next: experiments.py, `guidance_experiment`: guidance's trade-off, measured.
"""
import copy
import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import autoencoder
import captions
import data
import ddp
import flags
import metrics
import part2_diffusion
import plots
import runs
from outputs import HelpFormatter, Progress, UserError, arg_parser, atomic_write, finite_float, \
    pick_threads, run_main, save_json
from part2_diffusion import train, training_loss
from schedule import Schedule, classifier_free_guidance
from unet import UNet

LATENT = (autoencoder.LATENT_CHANNELS, 8, 8)
UNET = dict(image_size=8, in_channels=LATENT[0], base_channels=16, channel_mults=[1, 2],
            num_res_blocks=1, attention=[0, 1], dropout=0.0, num_classes=None, norm_groups=8)
TEXT = dict(dim=64, layers=2, heads=4)  # captions.TextEncoder; its width is the U-Net's context_dim
SCHEDULE, T = part2_diffusion.SCHEDULE, part2_diffusion.T
BATCH_SIZE = 64
LR = part2_diffusion.LR  # measured against 1e-3 in short runs: no worse
EMA_DECAY = 0.999
P_UNCOND = 0.1        # how often a caption is replaced by the empty prompt in training
STEPS = 100_000       # on a CPU, --minutes stops training first
MINUTES = 12.0        # training only: the cached autoencoder, prompts.png and figures fit in 15
GUIDANCE = 2.0       # the best FID, with 97% of digits as prompted (measured)
SAMPLING_STEPS = 50
N_SAMPLES = 64
EMPTY = ""            # the empty prompt: the "no condition" of classifier-free guidance
GRID_COLUMNS = 8
GRID_PROMPTS = [*captions.DIGITS, "thin two", "thick two", "a thin seven slanted left",
                "a thick seven slanted right", "a four slanted left", "a four slanted right"]
META_KEYS = {"dataset", "model_config", "text_config", "schedule", "batch_size", "lr",
             "ema_decay", "p_uncond", "seed"}


def get_args(argv=None):
    p = arg_parser(description="Train a small text-to-image latent diffusion model on captioned "
                               "MNIST digits, or draw digits from a prompt.",
                   formatter_class=HelpFormatter)
    p.add_argument("--data-dir", default="data",
                   help="MNIST, and the autoencoder cached by autoencoder.py")
    g = flags.training_group(p, STEPS, MINUTES, BATCH_SIZE, LR, EMA_DECAY, what="latents")
    g.add_argument("--p-uncond", type=finite_float, default=None,
                   help=f"how often a caption is replaced by the empty prompt (default {P_UNCOND})")
    g = p.add_argument_group("sampling")
    g.add_argument("--sample-from", metavar="RUN_DIR",
                   help="skip training: draw from RUN_DIR's checkpoint")
    g.add_argument("--prompt", default=None,
                   help='also draw --n digits of this prompt ("" is the empty prompt: the '
                        "unconditional model); --sample-from then draws only these, without it "
                        "prompts.png")
    g.add_argument("--n", type=int, default=N_SAMPLES, help="how many digits of --prompt to draw")
    g.add_argument("--guidance", type=finite_float, default=GUIDANCE,
                   help="classifier-free guidance scale: 0 ignores the prompt, 1 is the plain "
                        "conditional model, more follows the prompt more closely")
    g.add_argument("--sampling-steps", type=int, default=SAMPLING_STEPS, help="DDIM steps")
    flags.run_group(p, "part3", seed_help="seed for weights, batches and samples")
    return p.parse_args(argv)


def check_args(args):
    """Refuse bad flags, and a prompt with a word outside the vocabulary, before any work."""
    flags.check_training(args)
    if args.sampling_steps > T:
        raise UserError(f"--sampling-steps {args.sampling_steps} exceeds T = {T}")
    if args.prompt is not None:
        captions.tokenize([args.prompt])  # an unknown word: one line that lists the vocabulary


def settle_flags(args, meta, where):
    """The flags that define a run: the defaults for a new one (meta None); for --resume and
    --sample-from (`where`) the run's own, refusing a flag given that contradicts them."""
    stored = meta and dict(batch_size=meta["batch_size"], lr=meta["lr"], ema=meta["ema_decay"],
                           p_uncond=meta["p_uncond"])
    flags.settle(args, dict(batch_size=BATCH_SIZE, lr=LR, ema=EMA_DECAY, p_uncond=P_UNCOND),
                 stored, where)


# --- the network: text encoder and U-Net as one -----------------------------------------------

class TextToImage(nn.Module):
    """eps_theta(z_t, t, prompt): the text encoder and the U-Net, trained together as one network.

    forward(z_t, t, ids): noisy latents z_t (B, 3, 8, 8), timesteps t (B,) and prompt tokens ids
    (B, L) from captions.tokenize -> eps_hat (B, 3, 8, 8). It has the form model(x_t, t, y) of
    Part 2's conditional U-Net, with the prompt as y, so that Part 2's training_loss and
    schedule.py's classifier_free_guidance use it as they are.
    """

    def __init__(self, unet_config, text_config):
        super().__init__()
        self.text = captions.TextEncoder(**text_config)
        self.unet = UNet(**unet_config)

    def forward(self, z_t, t, ids):
        context, mask = self.text(ids)                  # one vector per token, and real tokens
        return self.unet(z_t, t, context=context, mask=mask)


def new_network():
    return TextToImage(dict(UNET, context_dim=TEXT["dim"]), TEXT)


def stored(make, state, path, what):
    """make() with the weights `state` of the checkpoint at path, or one line saying why not."""
    try:
        model = make()
        model.load_state_dict(state)
    except Exception as e:  # a hand-edited configuration can fail in any way: input, not our bug
        raise UserError(f"the {what} stored in {path} does not load ({type(e).__name__})") \
            from None
    return model


def build(meta, state, path):
    return stored(lambda: TextToImage(meta["model_config"], meta["text_config"]), state, path,
                  "network")


def stored_autoencoder(state, path):
    return stored(autoencoder.Autoencoder, state, path, "autoencoder").eval().requires_grad_(False)


def load_run(run_dir):
    """A Part 3 checkpoint, checked before any work. Returns (ckpt, EMA network, autoencoder)."""
    ckpt = runs.read_checkpoint(run_dir, runs.CHECKPOINT_KEYS | {"autoencoder"}, META_KEYS,
                                "part3_text_to_image.py")
    path = Path(run_dir) / "checkpoint.pt"
    runs.check_schedule(ckpt["meta"], path)
    ema = build(ckpt["meta"], ckpt["ema"], path).eval()
    return ckpt, ema, stored_autoencoder(ckpt["autoencoder"], path)


# --- training (Algorithm 1, in the latent space, with captions) ----------------------------------

def setup(args, ckpt):
    """The training digits, the autoencoder, the network and the run's metadata: new (the
    autoencoder cached in --data-dir, trained first if missing), or as a checkpoint stores them."""
    images, labels, used = data.load("mnist", args.data_dir, train=True)  # one line if missing
    if ckpt is not None:
        path = Path(args.resume) / "checkpoint.pt"
        meta = ckpt["meta"]
        return (images, labels, stored_autoencoder(ckpt["autoencoder"], path),
                build(meta, ckpt["model"], path), meta)
    ae = autoencoder.load_or_train(args.data_dir)
    torch.manual_seed(args.seed)  # after the autoencoder: the same start, cached or not
    model = new_network()
    meta = dict(dataset=used, model_config=model.unet.config, text_config=TEXT,
                schedule=dict(name=SCHEDULE, T=T), batch_size=args.batch_size, lr=args.lr,
                ema_decay=args.ema, p_uncond=args.p_uncond, seed=args.seed)
    return images, labels, ae, model, meta


@torch.no_grad()
def encode_digits(ae, images, labels, device):
    """What training needs of the digits, computed once: their latents z0 (N, 3, 8, 8) on
    `device`, and, for the captions, their labels, stroke widths and slants (captions.measure)."""
    chunks = images.split(1000)  # in chunks: measure's temporaries then fit in the CPU's cache
    latents = torch.cat([ae.encode(x) for x in chunks])
    width, slant = torch.cat([torch.stack(captions.measure(x)) for x in chunks], dim=1)
    return dict(latents=latents.to(device), labels=labels.tolist(), width=width.tolist(),
                slant=slant.tolist())


def draw_batch(digits, meta, step):
    """z0 ~ q(z0): a batch of latents (B, 3, 8, 8), drawn with replacement, and the tokens (B, L)
    of a caption for each. Every caption is drawn afresh (which words it keeps, the digit as a word
    or a numeral: captions.caption), and is the empty prompt a fraction p_uncond of the time
    (classifier-free guidance). The captions' random numbers come from the seed and the step, so
    that --resume draws the same captions as one long run would."""
    latents = digits["latents"]
    idx = torch.randint(0, len(latents), (meta["batch_size"],), device=latents.device)
    rng = random.Random(meta["seed"] * 1_000_003 + step)
    prompts = [EMPTY if rng.random() < meta["p_uncond"] else
               captions.caption(digits["labels"][i], digits["width"][i], digits["slant"][i], rng)
               for i in idx.tolist()]
    return latents[idx], captions.tokenize(prompts).to(latents.device)


def fit(args, out, device, ckpt, overwrite):
    """Algorithm 1 with Part 2's train, on latents and captions:

        repeat
            (z0, caption) ~ data;  the caption is the empty prompt 10% of the time
            t ~ Uniform({1, ..., T});  eps ~ N(0, I);  z_t = sqrt(alpha_bar_t) z0 + ...
            gradient step on ||eps - eps_theta(z_t, t, caption)||^2, for U-Net and text encoder
        until --steps, --minutes, Ctrl-C or SIGTERM

    Returns (the runs.Run, which holds the step, history and EMA, the schedule, the autoencoder)."""
    images, labels, ae, model, meta = setup(args, ckpt)
    digits = encode_digits(ae, images, labels, device)
    sched = Schedule(meta["schedule"]["name"], meta["schedule"]["T"])
    model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=meta["lr"], weight_decay=0.0)
    if overwrite:
        runs.clear_old_run(out)
    count = lambda m: sum(p.numel() for p in m.parameters())
    save_json(out / "config.json", dict(
        meta, steps=args.steps, minutes=args.minutes, warmup=part2_diffusion.WARMUP,
        lr_decay=part2_diffusion.LR_DECAY, grad_clip=part2_diffusion.GRAD_CLIP,
        unet_parameters=count(model.unet), text_encoder_parameters=count(model.text)))
    rng = random.Random(0)  # the divergence probe's captions: the run's random numbers stay put
    prompts = [captions.caption(digits["labels"][i], digits["width"][i], digits["slant"][i], rng)
               for i in range(16)]
    works = runs.divergence_probe(digits["latents"], captions.tokenize(prompts), sched, device)
    nets = dict(model=model, ema=ema, optimizer=opt)
    with runs.Run(out, args, meta, nets, ckpt, works, dict(autoencoder=ae.state_dict())) as run:
        train(model, sched, lambda step: draw_batch(digits, meta, step), run, training_loss)
    return run, sched, ae


# --- sampling: DDIM in the latent space, guided by the prompt, then decoded ---------------------

@torch.no_grad()
def generate(model, ae, sched, prompts, guidance, steps, seed, device):
    """One digit for each of `prompts` (B strings). DDIM from z_T ~ N(0, I), each step guided
    towards the prompt by classifier-free guidance (the empty prompt is the unconditional
    prediction; one batched network call per step), then the decoder. model and ae live on
    `device`. Returns (images (B, 1, 28, 28) in [-1, 1], seconds)."""
    ids = captions.tokenize(prompts).to(device)
    empty = captions.tokenize([EMPTY]).to(device)
    gen = torch.Generator(device).manual_seed(seed)
    chunk = 1000 if device.type == "cuda" else 256  # a GPU is idle on small batches; a CPU is not
    meter = Progress(math.ceil(len(prompts) / chunk) * steps,
                     f"sampling {len(prompts)} digits, DDIM-{steps}, guidance {guidance:g}")
    images = []
    for i in range(0, len(prompts), chunk):
        y = ids[i:i + chunk]
        guided = classifier_free_guidance(model, y, guidance, null_label=empty.expand_as(y))
        eps_theta = runs.watched(guided, meter, guidance)  # finite, and counted
        latents, _ = sched.ddim_sample_loop(eps_theta, (len(y), *LATENT), steps=steps,
                                            generator=gen, device=device, clip_x0=False)
        images.append(ae.decode(latents).clamp(-1, 1).cpu())
    meter.close()
    return torch.cat(images), meter.seconds()


def prompted_digit(prompt):
    """The digit a prompt names, as a word or a numeral ("seven", "7"), or None."""
    for word in prompt.lower().split():
        if word in captions.DIGITS:
            return captions.DIGITS.index(word)
        if word.isdigit():
            return int(word)
    return None


def digit_accuracy(classifier, images, prompts):
    """The fraction of the images that metrics.py's classifier reads as the digit their prompt
    names (prompts that name none are left out)."""
    digits = [prompted_digit(p) for p in prompts]
    keep = [i for i, d in enumerate(digits) if d is not None]
    if not keep:  # no prompt names a digit
        return None
    read = metrics.predict(classifier, images[keep]).argmax(1)
    return float((read == np.array([digits[i] for i in keep])).mean())


def draw_grid(args, out, model, ae, sched, device, title):
    """GRID_COLUMNS digits for each of GRID_PROMPTS -> out/prompts.png. Returns summary entries."""
    prompts = [p for p in GRID_PROMPTS for _ in range(GRID_COLUMNS)]
    images, seconds = generate(model, ae, sched, prompts, args.guidance, args.sampling_steps,
                               args.seed, device)
    cells = [[images[r * GRID_COLUMNS:(r + 1) * GRID_COLUMNS]] for r in range(len(GRID_PROMPTS))]
    plots.image_table(cells, [f'"{p}"' for p in GRID_PROMPTS], [""], out / "prompts.png", title)
    classifier = metrics.cached_classifier(args.data_dir)
    return dict(grid_prompts=GRID_PROMPTS, grid_seconds=round(seconds, 1),
                grid_digit_accuracy=classifier and digit_accuracy(classifier, images, prompts))


def draw_prompt(args, out, model, ae, sched, device, title):
    """--n digits of --prompt -> out/samples.png and samples.npy. Returns summary entries."""
    prompts = [args.prompt] * args.n
    images, seconds = generate(model, ae, sched, prompts, args.guidance, args.sampling_steps,
                               args.seed, device)
    atomic_write(out / "samples.npy", lambda tmp: np.save(tmp, images.numpy().astype(np.float32)))
    plots.sample_grid(images, out / "samples.png", f'"{args.prompt}": {title}')
    width, slant = captions.measure(images)
    classifier = metrics.cached_classifier(args.data_dir)
    return dict(prompt=args.prompt, n=args.n, sampling_seconds=round(seconds, 1),
                digit_accuracy=classifier and digit_accuracy(classifier, images, prompts),
                mean_stroke_width=round(float(width.mean()), 3),
                mean_slant=round(float(slant.mean()), 3))


def draw(args, out, model, ae, sched, history, trained, device, grid):
    """prompts.png (if `grid`), --prompt's digits (if given), summary.json; returns the summary."""
    title = (f"guidance {args.guidance:g}, DDIM-{args.sampling_steps}, seed {args.seed} "
             f"(step {trained['steps']})")
    summary = dict(trained, guidance=args.guidance, sampling_steps=args.sampling_steps,
                   seed=args.seed,
                   final_loss=round(float(np.mean(history[-100:])), 4) if history else None)
    if grid:
        summary.update(draw_grid(args, out, model, ae, sched, device, title))
    if args.prompt is not None:
        summary.update(draw_prompt(args, out, model, ae, sched, device, title))
    save_json(out / "summary.json", summary)
    drawn = ["prompts.png"] * grid + [f"{args.n} digits of {args.prompt!r}"] * (
        args.prompt is not None)
    accuracy = summary.get("digit_accuracy", summary.get("grid_digit_accuracy"))
    print(f"drew {' and '.join(drawn)} into {out}" + ("" if accuracy is None else
          f"; the classifier reads the prompted digit in {accuracy:.0%} of them"))
    return summary


def sample_folder_name(args):
    """The folder under samples/ for a --sample-from draw, named after every flag that changes it:
    prompts-guidance3-ddim50-seed0, a-thick-seven-guidance3-ddim50-n16-seed0, empty-prompt-..."""
    what = "prompts" if args.prompt is None else (
        "-".join(args.prompt.lower().split()) or "empty-prompt")
    return flags.folder_name([what, ("guidance", args.guidance), f"ddim{args.sampling_steps}"],
                             None if args.prompt is None else args.n, args.seed)


# --- the command line ---------------------------------------------------------------------------

def run(args):
    """Train then draw, or only draw (--sample-from). Returns the summary (what summary.json
    holds), or None if Ctrl-C or SIGTERM stopped training. experiments.py calls it with
    outputs.settings(get_args, **flags) for args."""
    check_args(args)
    if ddp.size() > 1:
        raise UserError("Part 3 trains in one process: start it with python, not torchrun")
    device = flags.pick_device(args.device)
    if device.type == "cpu":
        pick_threads()  # one per idle core: see outputs.pick_threads
    if args.sample_from:
        return sample_from(args, device)
    return train_then_sample(args, device)


def sample_from(args, device):
    ckpt, model, ae = load_run(args.sample_from)
    settle_flags(args, ckpt["meta"], "--sample-from")
    sched = Schedule(ckpt["meta"]["schedule"]["name"], ckpt["meta"]["schedule"]["T"])
    if args.sampling_steps > sched.T:
        raise UserError(f"--sampling-steps {args.sampling_steps} exceeds the run's T = {sched.T}")
    out = runs.sample_folder(args.sample_from, sample_folder_name(args))
    return draw(args, out, model.to(device), ae.to(device), sched, ckpt["history"],
                dict(steps=ckpt["step"]), device, grid=args.prompt is None)


def train_then_sample(args, device):
    ckpt = load_run(args.resume)[0] if args.resume else None
    if ckpt is not None:
        runs.check_resumable(ckpt, args.resume)
    settle_flags(args, ckpt and ckpt["meta"], "--resume")
    out, (run, sched, ae) = runs.train_in_folder(
        args, "part3", lambda out, overwrite: fit(args, out, device, ckpt, overwrite))
    if run.stopped:
        return None
    return draw(args, out, run.nets["ema"], ae.to(device), sched, run.history, run.trained(),
                device, grid=True)


def main(argv=None):
    return run(get_args(argv))


if __name__ == "__main__":
    run_main(main)
