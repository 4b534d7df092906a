"""The noise predictor eps_theta(x_t, t) of DDPM: a small U-Net, written out by hand.

    python unet.py              # walk the default ("cpu") U-Net, stage by stage: every stage's
                                # output shape and parameters
    python unet.py --preset gpu # the same for the larger preset

Ho et al. (2020) train one network to predict the noise eps that was mixed into x_t (Eq. 14). Its
input and output have the shape of an image, so an image-to-image network fits: a U-Net
(Ronneberger et al. 2015), the architecture of PixelCNN++ and of Appendix B of the DDPM paper.
Ours has the same parts as the networks behind state-of-the-art image models, only fewer and
thinner:

    x_t (B, C, S, S)                                                 eps_hat (B, C, S, S)
      |                                                                    ^
    stem 3x3 conv                                              GroupNorm, SiLU, 3x3 conv (zero init)
      |                                                                    |
    level 0 (S x S):     ResBlock x n  ------- skip (concat) -------> ResBlock x n
      | downsample                                                         ^ upsample
    level 1 (S/2):       ResBlock x n  ------- skip (concat) -------> ResBlock x n
      | downsample                                                         ^ upsample
    level 2 (S/4):       ResBlock x n [+ attention] -- skip ------> ResBlock x n [+ attention]
      |                                                                    |
      +------------> middle: ResBlock, [self-attention,] ResBlock --------+

    t --> sinusoidal embedding --> MLP --> emb (B, 4 * base_channels) --> added in every ResBlock
    y --> label embedding (num_classes + 1 rows; the last is "no label") --> added to emb

Each level halves the image side, so S must be divisible by 2 ** (levels - 1): with three levels
28 -> 14 -> 7 (MNIST) and 32 -> 16 -> 8 (CIFAR-10). The channel count of level i is
base_channels * channel_mults[i]. `attention` lists the levels (0 = full resolution) whose
ResBlocks are followed by self-attention; the middle block has attention when the lowest level is
listed.

The last convolution starts at zero, so the untrained net predicts eps_hat = 0. The "cpu" preset
(base 16 channels, multipliers 1, 2, 4; `python unet.py` counts its parameters) was chosen by
measurement, training in turns on MNIST against CPU time on one thread: 32 channels and batch 128
fell behind, 24 channels trailed 16; scale-and-shift time injection, a zero-initialised second
convolution and dropping attention ended within noise of the plain form, so the plain form stayed
(all measured on MNIST against CPU time).

Next: part2_diffusion.py
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from outputs import arg_parser, run_main

# Two configurations; override image_size, in_channels and num_classes for other data, e.g.
# UNet(**dict(PRESETS["cpu"], image_size=32, in_channels=3, num_classes=10)).
# `python unet.py --preset NAME` counts the parameters of each.
PRESETS = {
    # MNIST on a 2-core laptop CPU, chosen by measurement (see the docstring).
    "cpu": dict(image_size=28, in_channels=1, base_channels=16, channel_mults=[1, 2, 4],
                num_res_blocks=1, attention=[2], dropout=0.0, num_classes=None, norm_groups=8),
    # A GPU, or CIFAR-10: after the DDPM paper's CIFAR-10 model (128 channels, 2 ResBlocks per
    # level, attention at 16x16, dropout 0.1), with 3 levels instead of 4 so that 28x28 divides too.
    "gpu": dict(image_size=32, in_channels=3, base_channels=128, channel_mults=[1, 2, 2],
                num_res_blocks=2, attention=[1, 2], dropout=0.1, num_classes=None, norm_groups=32),
}


def check(ok, message):
    """Raise ValueError(message) unless ok: how unet.py turns a bad argument into a message naming
    the rule."""
    if not ok:
        raise ValueError(message)


def check_config(image_size, in_channels, base_channels, channel_mults, num_res_blocks, attention,
                 dropout, num_classes, norm_groups, context_dim):
    """UNet's arguments, checked before any layer is built: ValueError naming the broken rule."""
    levels = len(channel_mults)
    chans = [base_channels * m for m in channel_mults]
    check(isinstance(image_size, int) and image_size >= 1,
          f"image_size must be a positive int, got {image_size!r}")
    check(in_channels >= 1, f"in_channels must be >= 1, got {in_channels}")
    check(levels >= 1 and all(isinstance(m, int) and m >= 1 for m in channel_mults),
          f"channel_mults must be a non-empty list of positive ints, got {channel_mults}")
    check(image_size % 2 ** (levels - 1) == 0,
          f"image_size={image_size} must be divisible by 2**(len(channel_mults)-1) = "
          f"{2 ** (levels - 1)}, since each of the {levels - 1} downsamplings halves it; "
          f"use fewer channel_mults or another size")
    check(norm_groups >= 1 and all(c % norm_groups == 0 for c in chans),
          f"GroupNorm needs every channel count divisible by norm_groups={norm_groups}, but "
          f"base_channels * channel_mults = {chans}; change base_channels or norm_groups")
    check(num_res_blocks >= 1, f"num_res_blocks must be >= 1, got {num_res_blocks}")
    check(all(0 <= a < levels for a in attention),
          f"attention lists level indices 0..{levels - 1} (0 = full resolution), got {attention}")
    check(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}")
    check(num_classes is None or (isinstance(num_classes, int) and num_classes >= 1),
          f"num_classes must be None (unconditional) or a positive int, got {num_classes!r}")
    check(context_dim is None or (isinstance(context_dim, int) and context_dim >= 1 and attention),
          f"context_dim must be None or a positive int, with at least one attention level for the "
          f"cross-attention; got context_dim={context_dim!r}, attention={attention}")


def timestep_embedding(t, dim):
    """Sinusoidal embedding of the timesteps (Vaswani et al. 2017, as in DDPM's Appendix B).

    t: (B,) integer or float timesteps. Returns (B, dim): [sin(t w_k), cos(t w_k)] for
    k = 0..dim/2 - 1, the sines then the cosines side by side on dim 1, with frequencies
    w_k = 10000^(-2k / dim) spaced geometrically from 1 down towards 1/10000, so that both nearby
    and distant t can be told apart.
    """
    # BEGIN EXERCISE 8: the sinusoidal timestep embedding
    # HINT: w_k = 10000 ** (-k / half), k < half = dim // 2; angles t w_k (B, half); cat [sin, cos]
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000.0) * k / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    # END EXERCISE


class ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, + time, GroupNorm, SiLU, dropout, 3x3 conv; plus the input
    (residual).

    x: (B, in_ch, H, W), emb: (B, emb_dim) -> (B, out_ch, H, W).
    The time embedding is projected to one number per channel and ADDED to the feature map between
    the two convolutions, as in DDPM: the same block can then behave differently at each noise
    level. The alternative, improved-diffusion's scale-and-shift of the normalised features, made
    no measurable difference on MNIST here (measured against CPU time), so we
    keep the simpler form.
    A 1x1 conv on the residual path matches the channels when in_ch != out_ch.
    """

    def __init__(self, in_ch, out_ch, emb_dim, dropout, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):
        # BEGIN EXERCISE 9: the residual block
        # HINT: docstring's order, __init__'s layers; + time = self.time(F.silu(emb)) per channel
        h = self.conv1(F.silu(self.norm1(x)))
        # (B, out_ch, 1, 1): the same shift at every pixel
        h = h + self.time(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h
        # END EXERCISE


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection.

    x: (B, ch, H, W) -> (B, ch, H, W). Every position attends to every other, which a 3x3 conv
    cannot do in one layer; at 7x7 that is only 49 positions, so it is cheap where it is used.
    """

    def __init__(self, ch, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W)
        q, k, v = qkv.transpose(2, 3).unbind(1)         # each (B, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)     # softmax(q k^T / sqrt(C)) v, (B, HW, C)
        return x + self.proj(h.transpose(1, 2).reshape(B, C, H, W))


class CrossAttention(nn.Module):
    """The image reads the prompt: queries from the image features, keys and values from the text
    encoder's token vectors (Rombach et al. 2022, Section 3.3; Stable Diffusion's way in for the
    text).

    x: (B, ch, H, W), context: (B, L, context_dim), mask: (B, L) bool, True for real tokens ->
    (B, ch, H, W): x plus, at each position, a mix of the tokens' values weighted by how well their
    keys match that position's query. Each of the H*W positions has a query q (self.q of the
    normalised x), each token a key k and a value v (self.k, self.v of its vector); the weights
    are the softmax over the L tokens of q . k / sqrt(ch) (Vaswani et al. 2017, Eq. 1), and the
    mix of values goes through self.proj before it is added to x. Padded tokens get weight
    exactly 0 (a score of -inf). One head, written out by hand.
    """

    def __init__(self, ch, context_dim, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.q = nn.Linear(ch, ch)
        self.k = nn.Linear(context_dim, ch)
        self.v = nn.Linear(context_dim, ch)
        self.proj = nn.Linear(ch, ch)

    def forward(self, x, context, mask):
        B, C, H, W = x.shape
        # BEGIN EXERCISE 11: cross-attention, the image reads the prompt
        # HINT: q (B, HW, C) from self.norm(x), k and v from context; softmax over L, padding -inf
        q = self.q(self.norm(x).reshape(B, C, H * W).transpose(1, 2))     # (B, HW, C)
        k, v = self.k(context), self.v(context)                            # (B, L, C) each
        scores = q @ k.transpose(1, 2) / math.sqrt(C)                      # (B, HW, L)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))      # exp(-inf) = 0: padding
        weights = scores.softmax(dim=-1)                                   # over the L tokens
        h = self.proj(weights @ v)                                         # (B, HW, C)
        return x + h.transpose(1, 2).reshape(B, C, H, W)
        # END EXERCISE


class Level(nn.Module):
    """One rung of the U: `n` ResBlocks, each followed by attention or nothing (and, on a
    text-conditioned net, cross-attention to the prompt), then a resampling layer."""

    def __init__(self, channels_in, ch, n, emb_dim, dropout, groups, attention, resample,
                 context_dim=None):
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(channels_in if i == 0 else ch, ch, emb_dim, dropout, groups) for i in range(n))
        self.attn = nn.ModuleList(
            Attention(ch, groups) if attention else nn.Identity() for _ in range(n))
        self.cross = nn.ModuleList(CrossAttention(ch, context_dim, groups) for _ in range(n)) \
            if attention and context_dim else None
        self.resample = resample

    def forward(self, h, emb, context=None, mask=None):
        for i, (res, attn) in enumerate(zip(self.res, self.attn)):
            h = attn(res(h, emb))
            if self.cross is not None:
                h = self.cross[i](h, context, mask)
        return h


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 conv: (B, in_ch, H, W) -> (B, out_ch, 2H, 2W)."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """eps_theta(x_t, t[, y]): predicts the noise in x_t.

    Built from keyword arguments only, all plain JSON values, so a checkpoint can store them and
    `UNet(**config)` rebuilds the same network. `model.config` holds them. The defaults are the
    "cpu" preset.

    forward(x, t, y=None): x (B, in_channels, image_size, image_size) float, t (B,) timesteps
    0..T-1, y (B,) labels 0..num_classes-1, or num_classes = "no label" (also what y=None means on
    a conditional model; classifier-free guidance mixes the two predictions). Returns eps_hat, the
    same shape as x.
    With context_dim (Part 3), forward(x, t, context=tokens, mask=mask) also reads a prompt: the
    text encoder's tokens (B, L, context_dim) and mask (B, L), through cross-attention at the
    `attention` levels. Without it the network, its weights and its checkpoints are those of
    Part 2.
    """

    def __init__(self, *, image_size=28, in_channels=1, base_channels=16, channel_mults=(1, 2, 4),
                 num_res_blocks=1, attention=(2,), dropout=0.0, num_classes=None, norm_groups=8,
                 context_dim=None):
        super().__init__()
        channel_mults, attention = list(channel_mults), sorted(set(attention))
        check_config(image_size, in_channels, base_channels, channel_mults, num_res_blocks,
                     attention, dropout, num_classes, norm_groups, context_dim)
        self.config = dict(image_size=image_size, in_channels=in_channels,
                           base_channels=base_channels, channel_mults=channel_mults,
                           num_res_blocks=num_res_blocks, attention=attention, dropout=dropout,
                           num_classes=num_classes, norm_groups=norm_groups)
        if context_dim:  # only then, so that Part 2's configurations stay as they were
            self.config["context_dim"] = context_dim
        levels = len(channel_mults)
        chans = [base_channels * m for m in channel_mults]
        emb_dim = 4 * base_channels
        args = dict(n=num_res_blocks, emb_dim=emb_dim, dropout=dropout, groups=norm_groups,
                    context_dim=context_dim)

        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        # One row per class plus the null label (index num_classes), learned like any other row.
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.stem = nn.Conv2d(in_channels, chans[0], 3, padding=1)

        # Encoder: level i works at image_size / 2**i with chans[i] channels; a stride-2 conv
        # halves the side.
        self.down = nn.ModuleList()
        for i, ch in enumerate(chans):
            resample = (nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i < levels - 1
                        else nn.Identity())
            self.down.append(Level(chans[max(i - 1, 0)], ch, attention=i in attention,
                                   resample=resample, **args))
        mid = chans[-1]
        self.mid1 = ResBlock(mid, mid, emb_dim, dropout, norm_groups)
        self.mid_attn = Attention(mid, norm_groups) if levels - 1 in attention else nn.Identity()
        self.mid_cross = CrossAttention(mid, context_dim, norm_groups) \
            if context_dim and levels - 1 in attention else None
        self.mid2 = ResBlock(mid, mid, emb_dim, dropout, norm_groups)
        # Decoder, stored in the same order as the encoder (up[i] mirrors down[i]) but run from the
        # bottom. Its first ResBlock takes the concatenation [h, skip from down[i]]; upsampling
        # leads to level i-1.
        self.up = nn.ModuleList()
        for i, ch in enumerate(chans):
            resample = Upsample(ch, chans[i - 1]) if i > 0 else nn.Identity()
            self.up.append(Level(2 * ch, ch, attention=i in attention, resample=resample, **args))
        self.out = nn.Sequential(nn.GroupNorm(norm_groups, chans[0]), nn.SiLU(),
                                 nn.Conv2d(chans[0], in_channels, 3, padding=1))
        # Zero init, as in the DDPM code: the untrained net predicts eps_hat = 0, the mean of the
        # noise and so the best constant guess; the first loss is E[eps^2] = 1.
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x, t, y=None, context=None, mask=None):
        """x (B, C, S, S), t (B,), y (B,) or None -> eps_hat (B, C, S, S). Shapes per stage:
        `python unet.py`. context (B, L, context_dim) and mask (B, L): the prompt, for a net built
        with context_dim."""
        self._check_inputs(x, t, y, context, mask)
        text = dict(context=context, mask=mask)
        emb = self.embed(t, y)                          # (B, 4 * base_channels)

        h = self.stem(x)                                # (B, chans[0], S, S)
        skips = []
        for level in self.down:                         # S -> S/2 -> ... ; channels grow
            h = level(h, emb, **text)
            skips.append(h)
            h = level.resample(h)
        h = self.middle(h, emb, **text)                 # lowest resolution
        for level in reversed(self.up):                 # back up: concat the skip of the same size
            h = level(torch.cat([h, skips.pop()], dim=1), emb, **text)
            h = level.resample(h)
        return self.out(h)                              # eps_hat (B, C, S, S)

    def embed(self, t, y):
        """The diagram's t and y rows: emb (B, 4 * base_channels), which every ResBlock reads."""
        emb = self.time_mlp(timestep_embedding(t, self.config["base_channels"]))
        if self.label_emb is not None:
            if y is None:
                y = torch.full_like(t, self.config["num_classes"], dtype=torch.long)  # null labels
            emb = emb + self.label_emb(y)
        return emb

    def middle(self, h, emb, context=None, mask=None):
        """The bottom of the U: ResBlock, [self-attention, cross-attention,] ResBlock."""
        h = self.mid_attn(self.mid1(h, emb))
        if self.mid_cross is not None:
            h = self.mid_cross(h, context, mask)
        return self.mid2(h, emb)

    def _check_inputs(self, x, t, y, context, mask):
        c = self.config
        expected = (c["in_channels"], c["image_size"], c["image_size"])
        check(x.dim() == 4 and tuple(x.shape[1:]) == expected,
              f"x must have shape (B, {expected[0]}, {expected[1]}, {expected[2]}), "
              f"got {tuple(x.shape)}")
        check(t.shape == (x.shape[0],),
              f"t must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        if y is not None:
            check(c["num_classes"] is not None,
                  "this model is unconditional (num_classes=None); call it with y=None")
            check(y.shape == (x.shape[0],) and not y.is_floating_point(),
                  f"y must be an integer tensor of shape ({x.shape[0]},), "
                  f"got {y.dtype} {tuple(y.shape)}")
            check(bool(((y >= 0) & (y <= c["num_classes"])).all()),
                  f"labels must lie in [0, num_classes] = [0, {c['num_classes']}] "
                  f"({c['num_classes']} = no label), "
                  f"got values from {int(y.min())} to {int(y.max())}")
        check((context is None) == ("context_dim" not in c) and (context is None) == (mask is None),
              "give context and mask exactly when the net was built with context_dim")


def main(argv=None):
    p = arg_parser(description="Walk a U-Net preset: print every stage's output shape and "
                               "parameter count, in the order the forward pass runs them.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="which configuration to build")
    args = p.parse_args(argv)
    cfg = PRESETS[args.preset]
    torch.manual_seed(0)
    model = UNet(**cfg).eval()
    size = cfg["image_size"]

    # A forward hook fires after each stage runs, so the rows come out in the order of the U.
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Identity):  # a level without attention or resampling
            continue
        if isinstance(module, (ResBlock, Attention)) or name.endswith(".resample") or \
                name in ("time_mlp", "label_emb", "stem", "out"):
            n = sum(q.numel() for q in module.parameters())
            module.register_forward_hook(
                lambda m, i, out, name=name, n=n: rows.append((name, tuple(out.shape), n)))
    x = torch.randn(1, cfg["in_channels"], size, size)
    with torch.no_grad():
        model(x, torch.tensor([500]))

    print(f"UNet(**PRESETS[{args.preset!r}]) = UNet(**{cfg})")
    print(f"input x: {tuple(x.shape)}, t: (1,)   "
          "(indentation = how many times the image was halved)\n")
    print(f"{'stage':32s} {'output shape':>18s} {'parameters':>11s}")
    for name, shape, n in rows:
        depth = round(math.log2(size / shape[-1])) if len(shape) == 4 else 0
        print(f"{'    ' * depth + name:32s} {str(shape):>18s} {n:11,d}")
    total = sum(q.numel() for q in model.parameters())
    assert total == sum(n for _, _, n in rows), "a stage was left out of the walk"
    print(f"\ntotal parameters: {total:,d}")


if __name__ == "__main__":
    run_main(main)
