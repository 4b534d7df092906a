"""Part 3, the text side: captions for MNIST digits, a tokenizer, and a small text encoder.

    python captions.py        # a figure of digits with their attributes -> runs/captions.png

Stable Diffusion learns from (image, caption) pairs. MNIST has no captions, so we make them, with no
download: the label gives the digit ("seven" or "7") and two attributes measured on the image give
the other words. Both are measured on the ink, x in [0, 1] (the data's [-1, 1] mapped back):

    thickness   the mean stroke width in pixels, w = 2 * ink area / outline length
                (data.stroke_width): a stroke of width w and length L has area w L and an outline
                of about 2 L.
                "thin" when w < THIN (1.6), "thick" when w > THICK (2.3), no word in between.
    slant       how far the ink moves right per pixel up: s = -cov(column, row) / var(row), the
                slope of the least-squares line column = a + b row, weighted by ink, with the sign
                flipped because rows count downwards.
                "slanted left" when s < LEFT (-0.15), "upright" when |s| <= UPRIGHT (0.05),
                "slanted right" when s > RIGHT (0.3), no word otherwise.

The thresholds leave a gap between the words, so that a digit on the border gets no word rather than
a wrong one. On the 60,000 MNIST training digits they give 20% thin and 26% thick, 17% slanted left,
14% upright and 24% slanted right (`python captions.py` prints the shares). MNIST's digits lean
right on average (median s = 0.10), which is why the thresholds are not symmetric. This slant is the
one that MNIST "deskewing" removes; it also sees a digit's shape (a 2's foot, a 7's bar), so it is a
rough word. Size is not used: MNIST scales every digit into a 20 x 20 box, so sizes hardly vary.

A caption is "[a] [thin|thick] DIGIT [slanted left|upright|slanted right]", the digit as a word or a
numeral at random, each optional part dropped at random (P_DROP), so that short prompts ("7",
"a seven") are trained as well as long ones ("a thick seven slanted right"). The tokenizer maps each
word of the small vocabulary to a number, after a start token that every prompt has (so even the
empty prompt, the "no caption" of classifier-free guidance, has one token to attend to, as CLIP's
does), and pads to MAX_TOKENS; an unknown word stops with one line that lists the vocabulary.
`TextEncoder` turns the tokens into one vector per token, which the U-Net reads through
cross-attention (unet.py).

Next: autoencoder.py, the latent space.
"""
import random

import numpy as np
import torch
import torch.nn as nn

import data
from outputs import UserError, arg_parser, check_output_file, run_main, save_figure

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
THIN, THICK = 1.6, 2.3               # stroke width in pixels
LEFT, UPRIGHT, RIGHT = -0.15, 0.05, 0.3  # slant in columns per row
P_DROP = 0.3                         # chance of leaving out each optional part of a caption

PAD, START = "<pad>", "<start>"  # PAD must be index 0: the padding mask is ids != 0
VOCAB = [PAD, START, "a", "thin", "thick", "slanted", "left", "right", "upright", *DIGITS,
         *map(str, range(10))]
MAX_WORDS = 6                   # the longest caption, "a thick seven slanted right", has 5
MAX_TOKENS = 1 + MAX_WORDS      # the start token, then the words


# --- attributes, measured on the image ------------------------------------------------------------

def measure(images):
    """Stroke width and slant of each digit.
    images: (N, 1, H, W) in [-1, 1] -> two (N,) float tensors."""
    x = (images[:, 0].float() + 1) / 2                               # ink in [0, 1]
    width = data.stroke_width(x)
    rows, cols = torch.meshgrid(torch.arange(x.shape[1]), torch.arange(x.shape[2]), indexing="ij")
    mass = x.sum((1, 2)).clamp(min=1e-6)
    mean = lambda f: (x * f).sum((1, 2)) / mass                      # ink-weighted mean over pixels
    r, c = mean(rows), mean(cols)
    cov = mean(rows * cols) - r * c
    var = (mean(rows ** 2) - r ** 2).clamp(min=1e-6)
    return width, -cov / var


def thickness_word(width):
    return "thin" if width < THIN else "thick" if width > THICK else None


def slant_words(slant):
    if slant < LEFT:
        return "slanted left"
    if slant > RIGHT:
        return "slanted right"
    return "upright" if abs(slant) <= UPRIGHT else None


def caption(label, width, slant, rng):
    """One caption for a digit with this label, stroke width and slant; `rng` is a random.Random."""
    keep = lambda word: word if word and rng.random() >= P_DROP else None
    digit = DIGITS[label] if rng.random() < 0.5 else str(label)
    words = [keep("a"), keep(thickness_word(width)), digit, keep(slant_words(slant))]
    return " ".join(w for w in words if w)


def captions(images, labels, seed=0):
    """A caption for each digit.
    images: (N, 1, H, W) in [-1, 1], labels: (N,) -> list of N strings."""
    rng = random.Random(seed)
    width, slant = measure(images)
    return [caption(int(y), float(w), float(s), rng) for y, w, s in zip(labels, width, slant)]


# --- the tokenizer --------------------------------------------------------------------------------

def tokenize(prompts):
    """The start token, then word indices, padded with 0.
    prompts: B strings -> (B, MAX_TOKENS) int64.

    Words are split on spaces and lower-cased; an unknown word or a prompt that is too long is a
    UserError."""
    ids = torch.zeros(len(prompts), MAX_TOKENS, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        words = prompt.lower().split()
        unknown = [w for w in words if w not in VOCAB[2:]]
        if unknown:
            raise UserError(f"unknown word {unknown[0]!r} in the prompt {prompt!r}; "
                            f"the vocabulary is: {' '.join(VOCAB[2:])}")
        if len(words) > MAX_WORDS:
            raise UserError(f"the prompt {prompt!r} has {len(words)} words; "
                            f"at most {MAX_WORDS} fit")
        ids[i, :1 + len(words)] = torch.tensor([VOCAB.index(w) for w in [START, *words]])
    return ids


def detokenize(ids):
    """The inverse of tokenize: (B, MAX_TOKENS) -> list of B strings."""
    return [" ".join(VOCAB[i] for i in row if i > 1) for row in ids.tolist()]


# --- the text encoder -----------------------------------------------------------------------------

class TextEncoder(nn.Module):
    """Token ids (B, L) -> (one vector per token (B, L, dim),
                            padding mask (B, L), True for real tokens).

    A small version of the text encoders of text-to-image models (CLIP's, in Stable Diffusion),
    trained from scratch with the diffusion model: token and position embeddings, then transformer
    encoder layers (Vaswani et al. 2017) in which each word attends to the others, so that "seven"
    can carry "thick". Padded positions are masked out of that attention, and the U-Net's
    cross-attention ignores them too.
    """

    def __init__(self, dim=64, layers=2, heads=4):
        super().__init__()
        self.tokens = nn.Embedding(len(VOCAB), dim)
        self.positions = nn.Embedding(MAX_TOKENS, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids):
        mask = ids != 0                                                   # (B, L)
        h = self.tokens(ids) + self.positions.weight[:ids.shape[1]]       # (B, L, dim)
        h = self.layers(h, src_key_padding_mask=~mask)
        return self.norm(h), mask


# --- the figure -----------------------------------------------------------------------------------

def main(argv=None):
    p = arg_parser(description="Show MNIST digits with the captions made for them.")
    p.add_argument("--data-dir", default="data", help="where MNIST is (see data.py; default data)")
    p.add_argument("--out", default="runs/captions.png",
                   help="the PNG to write (default %(default)s)")
    args = p.parse_args(argv)
    check_output_file(args.out)  # before the work, not after
    images, labels, used = data.load("mnist", args.data_dir, train=True)
    width, slant = measure(images)
    n = len(images)
    print(f"{n} {used} training digits: "
          f"thin {(width < THIN).float().mean():.0%}, thick {(width > THICK).float().mean():.0%}; "
          f"slanted left {(slant < LEFT).float().mean():.0%}, "
          f"upright {(slant.abs() <= UPRIGHT).float().mean():.0%}, "
          f"slanted right {(slant > RIGHT).float().mean():.0%}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = [("thin", width < THIN), ("thick", width > THICK), ("slanted left", slant < LEFT),
             ("upright", slant.abs() <= UPRIGHT), ("slanted right", slant > RIGHT)]
    fig, axes = plt.subplots(len(kinds), 8, figsize=(8, 1.25 * len(kinds) + 0.6))
    for (name, mask), row in zip(kinds, axes):
        for ax, i in zip(row, np.flatnonzero(mask.numpy())[:8]):
            ax.imshow((images[i, 0] + 1) / 2, cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"w {width[i]:.1f}, s {slant[i]:+.2f}", fontsize=6)
        for ax in row:
            ax.set_xticks([]), ax.set_yticks([])
        row[0].set_ylabel(name, fontsize=8)
    fig.suptitle("Caption words from the image: "
                 "stroke width w (pixels) and slant s (columns per row)")
    save_figure(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
